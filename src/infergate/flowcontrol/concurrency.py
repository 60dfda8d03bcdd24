"""``concurrency-detector``: saturation from the gateway's own in-flight counts (llm-d-router's).

The utilization detector (:mod:`.saturation`) judges each model server by what it reports (its
waiting queue and KV cache, corrected by what the gateway sent since the scrape). This one looks
at nothing the servers report: every endpoint is taken to hold ``max_concurrency`` requests (or
``max_token_concurrency`` prompt tokens) at most, and the pool is as saturated as the share of that
capacity its in-flight work fills:

* ``requests``: ``sum(in flight) / (endpoints x max_concurrency)``;
* ``tokens``: ``sum(in-flight prompt tokens) / (endpoints x max_token_concurrency)``;
* ``hybrid``: per endpoint the larger of its two shares, averaged over the endpoints (an endpoint
  full in either dimension shows even when the aggregates are low).

It reacts to a burst before any scrape could, and it is blind to what the servers do with the
work: an answer longer than usual fills the KV cache without moving these counts. In-flight
prompt tokens are estimated (UTF-8 bytes / 4) and leave the count when the first streamed chunk
arrives (their prefill is done), as everywhere in infergate. As a scheduling filter the same
plugin drops endpoints whose own load reaches ``capacity x (1 + headroom)``
(:class:`infergate.scheduling.plugins.filters.ConcurrencyFilter`).
"""

from __future__ import annotations

from collections.abc import Sequence

from infergate.flowcontrol.saturation import SaturationDetector
from infergate.types import ConcurrencyMode, Endpoint, concurrency_load

__all__ = ["CONCURRENCY_MODES", "ConcurrencyDetector"]

CONCURRENCY_MODES: tuple[ConcurrencyMode, ...] = ("requests", "tokens", "hybrid")


class ConcurrencyDetector(SaturationDetector):
    """A :class:`SaturationDetector` judging by in-flight counts only (see the module docstring)."""

    plugin_type = "concurrency-detector"

    def __init__(
        self,
        *,
        mode: ConcurrencyMode = "requests",
        max_concurrency: int = 100,
        max_token_concurrency: int = 1_000_000,
    ) -> None:
        super().__init__(frontend_wait=None)
        if mode not in CONCURRENCY_MODES:
            raise ValueError(f"mode must be one of {', '.join(CONCURRENCY_MODES)}")
        if max_concurrency < 1 or max_token_concurrency < 1:
            raise ValueError("max_concurrency and max_token_concurrency must be >= 1")
        self.mode: ConcurrencyMode = mode
        self.max_concurrency = max_concurrency
        self.max_token_concurrency = max_token_concurrency

    def is_fresh(self, endpoint: Endpoint, now: float) -> bool:
        """Always: the counts are the gateway's own, never stale."""
        return True

    def endpoint_score(self, endpoint: Endpoint, now: float, *, intake: bool = False) -> float:
        return concurrency_load(endpoint, self.mode, self.max_concurrency, self.max_token_concurrency)

    def saturation(
        self, endpoints: Sequence[Endpoint], now: float, *, whole_pool: bool = True, intake: bool = False
    ) -> float:
        healthy = [e for e in endpoints if e.healthy]
        if not healthy:
            return 1.0
        if self.mode == "hybrid":
            return sum(self.endpoint_score(e, now) for e in healthy) / len(healthy)
        if self.mode == "requests":
            return sum(e.in_flight for e in healthy) / (len(healthy) * self.max_concurrency)
        return sum(e.in_flight_tokens for e in healthy) / (len(healthy) * self.max_token_concurrency)
