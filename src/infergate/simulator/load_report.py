"""vLLM 0.33's two cheap load signals: ``GET /load`` and the ORCA ``endpoint-load-metrics`` header.

* ``/load`` answers ``{"server_load": N}``, N being the generation requests the HTTP server is
  handling right now (counted only with ``--enable-server-load-tracking``; 0 otherwise, as vLLM).
* A non-streaming completion or chat request carrying ``endpoint-load-metrics-format: TEXT`` (or
  ``JSON``) gets an ``endpoint-load-metrics`` response header, ORCA's native HTTP form, with the
  gauges vLLM maps: ``TEXT named_metrics.num_requests_waiting=2.0, named_metrics.kv_cache_usage_perc=0.4``
  or ``JSON {"named_metrics": {...}}``. Another format gets no header (vLLM logs a warning).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from infergate.simulator.engine import EngineStats

FORMAT_HEADER = "endpoint-load-metrics-format"
REPORT_HEADER = "endpoint-load-metrics"

log = logging.getLogger("infergate.simulator")


class ServerLoad:
    """The in-flight generation request count behind ``/load``."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.value = 0

    @contextmanager
    def track(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        self.value += 1
        try:
            yield
        finally:
            self.value -= 1


def orca_header(fmt: str, stats: EngineStats) -> dict[str, str]:
    """The ORCA response header for a request that asked for ``fmt`` (empty: none)."""
    if not fmt:
        return {}
    named = [
        ("num_requests_waiting", float(stats.num_waiting)),
        ("kv_cache_usage_perc", stats.kv_cache_usage),
    ]
    kind = fmt.strip().lower()
    if kind == "text":
        return {REPORT_HEADER: "TEXT " + ", ".join(f"named_metrics.{k}={v}" for k, v in named)}
    if kind == "json":
        return {REPORT_HEADER: "JSON " + json.dumps({"named_metrics": dict(named)})}
    log.warning("%s %r is not supported in the ORCA response header (TEXT or JSON)", FORMAT_HEADER, fmt)
    return {}
