"""Gauges and counters computed when ``/metrics`` is read, not on the request path.

llm-d-router v0.10 exports how full each priority band's queue is against its capacity and how
many endpoints the saturation detector had to treat as saturated because their metrics were
stale. Both are facts about state that already exists (the queues, the endpoints' scrape times),
so instead of updating gauges on every admission the gateway asks for a :class:`FlowControlState`
at scrape time. The KV-block index's counters (:class:`KvIndexState`) are exported the same way.
This module imports nothing from infergate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

__all__ = [
    "BandUtilization",
    "FlowControlState",
    "FlowControlStateCollector",
    "KvIndexCollector",
    "KvIndexState",
]


@dataclass(frozen=True, slots=True)
class BandUtilization:
    """One priority band: its queued share of each capacity it has (None: no such capacity)."""

    priority: int
    requests: float | None
    bytes: float | None


@dataclass(frozen=True, slots=True)
class FlowControlState:
    """What the flow-control gauges show at one moment."""

    pool: str
    detector: str
    stale_endpoints: int
    bands: tuple[BandUtilization, ...]
    global_requests: float | None  # None: no global request capacity (the series is then absent)
    global_bytes: float | None


class FlowControlStateCollector:
    """A registry collector rendering :class:`FlowControlState` with llm-d-router's names and labels."""

    def __init__(self, sample: Callable[[], FlowControlState | None]) -> None:
        self.sample = sample  # replaceable: the gateway's flow control is built after its metrics

    def describe(self) -> list[Metric]:
        return []  # families are known only when sampled; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        state = self.sample()
        if state is None:
            return
        stale = GaugeMetricFamily(
            "llm_d_epp_flow_control_stale_endpoints",
            "Endpoints whose metrics are missing or older than the staleness threshold, which the "
            "saturation detector counts as saturated.",
            labels=("detector",),
        )
        stale.add_metric((state.detector,), state.stale_endpoints)
        yield stale
        for unit, pick in (("requests", _requests), ("bytes", _bytes)):
            band = GaugeMetricFamily(
                f"llm_d_epp_flow_control_capacity_utilization_{unit}",
                f"Share of a priority band's {unit} capacity its queued requests hold (0-1).",
                labels=("priority", "inference_pool"),
            )
            for b in state.bands:
                value = pick(b)
                if value is not None:
                    band.add_metric((str(b.priority), state.pool), value)
            yield band
            overall = state.global_requests if unit == "requests" else state.global_bytes
            if overall is not None:
                total = GaugeMetricFamily(
                    f"llm_d_epp_flow_control_global_capacity_utilization_{unit}",
                    f"Share of the {unit} capacity of all bands together that queued requests hold (0-1).",
                    labels=("inference_pool",),
                )
                total.add_metric((state.pool,), overall)
                yield total


def _requests(band: BandUtilization) -> float | None:
    return band.requests


def _bytes(band: BandUtilization) -> float | None:
    return band.bytes


@dataclass(frozen=True, slots=True)
class KvIndexState:
    """The KV-block index's counters (``precise-prefix-cache-scorer`` with ``enableMetrics``)."""

    admissions: int
    evictions: int
    lookups: int
    lookup_hits: int
    max_pod_hits: int
    latency_bounds: tuple[float, ...]
    latency_counts: tuple[int, ...]  # per bound, not cumulative; one more for +Inf
    latency_sum: float


class KvIndexCollector:
    """llm-d-router's ``llm_d_epp_kv_cache_index_*`` families from a :class:`KvIndexState`."""

    def __init__(self, sample: Callable[[], KvIndexState]) -> None:
        self.sample = sample

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        s = self.sample()
        for name, doc, value in (
            ("admissions", "Blocks admitted to the KV-block index.", s.admissions),
            ("evictions", "Blocks evicted from the KV-block index by its size bound.", s.evictions),
            ("lookup_requests", "Index lookups performed.", s.lookups),
            (
                "lookup_hits",
                "Contiguous prefix blocks matched by the best endpoint, summed over lookups.",
                s.lookup_hits,
            ),
            (
                "max_pod_hit_count",
                "Longest contiguous per-endpoint prefix run, summed over lookups.",
                s.max_pod_hits,
            ),
        ):
            family = CounterMetricFamily(f"llm_d_epp_kv_cache_index_{name}", doc)
            family.add_metric((), value)
            yield family
        cumulative, acc = [], 0
        for bound, count in zip((*(str(b) for b in s.latency_bounds), "+Inf"), s.latency_counts, strict=True):
            acc += count
            cumulative.append((bound, acc))
        latency = HistogramMetricFamily(
            "llm_d_epp_kv_cache_index_lookup_latency_seconds", "Index lookup latency."
        )
        latency.add_metric((), cumulative, s.latency_sum)
        yield latency
