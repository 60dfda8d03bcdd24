"""The ext_proc stream metrics llm-d-router exports when ``--enable-grpc-stream-metrics`` is on.

One ext_proc stream carries one HTTP request through Envoy, from its headers to the last response
chunk, so these say how many requests Envoy holds open on the picker and for how long, and how
their streams ended (``Canceled``: Envoy reset it, a client went away). The reference registers
them only when asked; so does infergate (:meth:`GatewayMetrics.extproc_streams`), so that turning
the flag on or off is visible on ``/metrics``. Status codes are spelled as Go's ``codes.Code``
prints them (``OK``, ``Canceled``, ``ResourceExhausted``), the reference's label values; the gRPC
server spells them so (this package imports no gRPC).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from infergate.telemetry.series import Counter, Gauge, Histogram

__all__ = ["ExtProcStreamMetrics"]

_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600)


class ExtProcStreamMetrics:
    """Open streams, how long each stayed open, and how many ended with each status code; a
    :class:`~infergate.servers.grpc_http2.CallObserver` of the ``Process`` method."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.inflight = Gauge(
            "llm_d_epp_extproc_streams_inflight",
            "Number of ext_proc gRPC streams currently open.",
            registry=registry,
        )
        self.duration = Histogram(
            "llm_d_epp_extproc_stream_duration_seconds",
            "Duration an ext_proc gRPC stream stays open, in seconds.",
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.completed = Counter(
            "llm_d_epp_extproc_streams",
            "Total ext_proc gRPC streams completed, by gRPC status code.",
            ("code",),
            registry=registry,
        )

    def started(self) -> None:
        self.inflight.inc()

    def finished(self, code: str, seconds: float) -> None:
        self.inflight.dec()
        self.duration.observe(seconds)
        self.completed.labels(code=code).inc()
