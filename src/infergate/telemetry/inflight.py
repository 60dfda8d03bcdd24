"""llm-d-router's in-flight load gauges, exported when a config declares ``inflight-load-producer``.

``llm_d_epp_inflight_requests`` and ``llm_d_epp_inflight_tokens`` per endpoint (``endpoint_name``,
``namespace``), producer (``producer_name``: the plugin's name) and flow (``fairness_id``,
``priority``). infergate counts in-flight load itself (every request from its dispatch to its end,
its estimated prompt tokens until its prefill is done); these series show the same counts split by
flow. The reference registers them only with the producer configured; so does infergate
(:meth:`GatewayMetrics.inflight`). ``fairness_id`` is capped as on every other series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from infergate.telemetry.series import Gauge, LabelCap

__all__ = ["InFlightMetrics"]

_LABELS = ("endpoint_name", "namespace", "producer_name", "fairness_id", "priority")
_CACHE = 4096


class InFlightMetrics:
    """The two gauges, and their children kept resolved per (endpoint, producer, flow)."""

    def __init__(self, registry: CollectorRegistry, cap: LabelCap) -> None:
        self._cap = cap
        self.requests = Gauge(
            "llm_d_epp_inflight_requests",
            "Requests in flight on each endpoint (dispatched, not yet completed), by flow.",
            _LABELS,
            registry=registry,
        )
        self.tokens = Gauge(
            "llm_d_epp_inflight_tokens",
            "Prompt tokens in flight on each endpoint (sent, prefill not yet done), by flow; "
            "estimated as UTF-8 bytes / 4.",
            _LABELS,
            registry=registry,
        )
        self._children: dict[tuple[str, str, str, str, int], tuple[Gauge, Gauge]] = {}

    def add(
        self,
        endpoint: str,
        namespace: str,
        producer: str,
        fairness_id: str,
        priority: int,
        requests: int,
        tokens: int,
    ) -> None:
        """Move one flow's counts on one endpoint by ``requests`` and ``tokens``."""
        key = (endpoint, namespace, producer, fairness_id, priority)
        children = self._children.get(key)
        if children is None:
            if len(self._children) >= _CACHE:
                self._children.clear()
            labels = (endpoint, namespace, producer, self._cap(fairness_id), str(priority))
            children = self._children[key] = (self.requests.labels(*labels), self.tokens.labels(*labels))
        if requests:
            children[0].inc(requests)
        if tokens:
            children[1].inc(tokens)
