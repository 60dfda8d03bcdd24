"""One ``/metrics`` for the whole gateway when several worker processes serve requests.

Each worker counts on its own registry and sends its series to the gateway process (every
``PUSH_INTERVAL`` seconds and once more when it drains); the gateway process renders its own
registry plus the workers' series added up: counters and histogram buckets are sums over the
workers, so are gauges (in-flight requests, queue sizes, prefix-index sizes), except ``*_info``
gauges, which are the gateway process's own, and the pool-saturation, stale-endpoint,
queue-capacity and program-aware fairness gauges, which show the highest value any worker computed
(each worker judges the same pool, and each holds its own queues and programs). A worker that exits leaves
its counters and histograms behind (they stay in the sums, so a restarted worker never makes a
counter go backwards); its gauges leave with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.metrics_core import Metric

__all__ = ["PUSH_INTERVAL", "Family", "MergedExposition", "export_families"]

PUSH_INTERVAL = 1.0
"""Seconds between a worker's metric pushes: the gateway's ``/metrics`` lags the workers by this."""

SampleKey = tuple[str, tuple[tuple[str, str], ...]]
Family = tuple[str, str, str, str, tuple[tuple[str, tuple[tuple[str, str], ...], float], ...]]
"""(name, help, type, unit, samples as (sample name, sorted labels, value)): plain tuples pickle
in a fraction of the time prometheus_client's objects take."""

_KEPT_ON_EXIT = frozenset({"counter", "histogram", "summary"})
# Gauges every worker computes for the same pool or its own queues, where the sum means nothing:
# the gateway shows the highest (the worker closest to refusing or holding).
_HIGHEST = ("saturation", "capacity_utilization", "stale_endpoints", "program_aware_")


def export_families(registry: Any) -> list[Family]:
    """Every family of ``registry`` with at least one sample, as plain tuples."""
    out: list[Family] = []
    for fam in registry.collect():
        if not fam.samples:
            continue
        samples = tuple((s.name, tuple(sorted(s.labels.items())), float(s.value)) for s in fam.samples)
        out.append((fam.name, fam.documentation, fam.type, fam.unit, samples))
    return out


class _Acc:
    __slots__ = ("doc", "type", "unit", "values")

    def __init__(self, doc: str, typ: str, unit: str) -> None:
        self.doc, self.type, self.unit = doc, typ, unit
        self.values: dict[SampleKey, float] = {}


class MergedExposition:
    """The gateway process's registry plus its workers' latest series (``collect()`` for
    ``generate_latest``)."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry
        self._live: dict[int, list[Family]] = {}
        self._retired: list[Family] = []

    def update(self, worker: int, families: list[Family]) -> None:
        """Worker ``worker``'s latest series replace its previous ones."""
        self._live[worker] = families

    def sample_total(self, worker: int, sample: str) -> float:
        """Worker ``worker``'s own ``sample`` (a sample name, e.g. ``..._total``) summed over its
        labels, as it last pushed: which worker served how much (``/debug/endpoints``)."""
        return sum(
            value
            for _name, _doc, _typ, _unit, samples in self._live.get(worker, ())
            for name, _labels, value in samples
            if name == sample
        )

    def retire(self, worker: int) -> None:
        """Worker ``worker`` exited: its counters and histograms stay counted, its gauges go."""
        families = self._live.pop(worker, None)
        if families:
            self._retired = self._summed([self._retired, [f for f in families if f[2] in _KEPT_ON_EXIT]])

    @staticmethod
    def _summed(sources: Iterable[list[Family]]) -> list[Family]:
        accs = _accumulate({}, sources)
        return [
            (name, a.doc, a.type, a.unit, tuple((k[0], k[1], v) for k, v in a.values.items()))
            for name, a in accs.items()
        ]

    def collect(self) -> Iterator[Metric]:
        own: dict[str, _Acc] = {}
        for fam in self._registry.collect():
            acc = own[fam.name] = _Acc(fam.documentation, fam.type, fam.unit)
            for s in fam.samples:
                acc.values[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
        accs = _accumulate(own, [self._retired, *self._live.values()])
        for name, acc in accs.items():
            metric = Metric(name, acc.doc, acc.type, acc.unit)
            for (sample, labels), value in acc.values.items():
                metric.add_sample(sample, dict(labels), value)
            yield metric


def _accumulate(accs: dict[str, _Acc], sources: Iterable[list[Family]]) -> dict[str, _Acc]:
    for families in sources:
        for name, doc, typ, unit, samples in families:
            if typ in ("gauge", "info") and name.endswith("_info") and name in accs:
                continue  # build information: the gateway process's own
            acc = accs.get(name)
            if acc is None:
                acc = accs[name] = _Acc(doc, typ, unit)
            values = acc.values
            highest = any(word in name for word in _HIGHEST)
            for sample, labels, value in samples:
                key = (sample, labels)
                old = values.get(key)
                values[key] = value if old is None else max(old, value) if highest else old + value
    return accs
