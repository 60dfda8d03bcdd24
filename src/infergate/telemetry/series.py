"""The metric series the gateway records into: cheap children, label caps, GIE/llm-d pairs.

prometheus_client's children guard every update with a lock, and its histograms scan their buckets
one by one; the gateway records some 25 values per request on one event-loop thread, so its own
children keep plain floats (:class:`Counter`, :class:`Gauge`, :class:`Histogram`, the bucket
found by bisection) and are exposed exactly as the library's. :class:`DualMetric` records one
call into a GIE-named series and its ``llm_d_epp_*`` twin, with client-derived label values
capped (:class:`LabelCap`). This module imports nothing from infergate.
"""

from __future__ import annotations

import contextlib
import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any

import prometheus_client
from prometheus_client import disable_created_metrics
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = ["LABEL_CAP", "OTHER", "Counter", "DualMetric", "Gauge", "Histogram", "LabelCap"]

# The reference exports no ``*_created`` series; without this every counter and histogram would
# add one (a timestamp per label set) that dashboards never read and Prometheus stores anyway.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Distinct client-derived label values kept per cap before new ones become ``OTHER``.
LABEL_CAP = 1000
OTHER = "other"
# DualMetric children kept resolved per metric (label caps bound the series, not the ways to ask).
_CHILD_CACHE = 4096


class LabelCap:
    """A bounded set of label values: the first ``limit`` distinct values pass, later ones fold."""

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int = LABEL_CAP) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(value)
        return value


class Counter(prometheus_client.Counter):
    """A counter whose children keep a plain float.

    prometheus_client guards every value with a lock (and a histogram scans its buckets one by
    one): with ~15 observations and ~10 increments per request that was ~20 % of the built-in
    proxy's CPU (bench/bench_dataplane.py). The gateway records metrics on its event loop thread
    only (worker processes have their own registries), so the locks protect nothing here.
    Exposition and :meth:`~prometheus_client.CollectorRegistry.collect` are unchanged.
    """

    def _metric_init(self) -> None:
        self._count = 0.0

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self._count += amount

    def reset(self) -> None:
        self._count = 0.0

    def _child_samples(self) -> Iterable[Sample]:
        return (Sample("_total", {}, self._count, None, None),)


class Gauge(prometheus_client.Gauge):
    """A gauge whose children keep a plain float (see :class:`Counter`)."""

    def _metric_init(self) -> None:
        self._level = 0.0

    def inc(self, amount: float = 1) -> None:
        self._level += amount

    def dec(self, amount: float = 1) -> None:
        self._level -= amount

    def set(self, value: float) -> None:
        self._level = float(value)

    def _child_samples(self) -> Iterable[Sample]:
        return (Sample("", {}, self._level, None, None),)


class Histogram(prometheus_client.Histogram):
    """A histogram whose children keep plain per-bucket counts, found by bisection (see
    :class:`Counter`); exposed cumulatively, as prometheus_client's own."""

    def _metric_init(self) -> None:
        self._counts = [0.0] * len(self._upper_bounds)
        self._total = 0.0

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        self._total += amount
        if not math.isnan(amount):  # NaN falls in no bucket, as in prometheus_client
            self._counts[bisect_left(self._upper_bounds, amount)] += 1

    def _child_samples(self) -> Iterable[Sample]:
        samples = []
        acc = 0.0
        for bound, count in zip(self._upper_bounds, self._counts, strict=True):
            acc += count
            le = floatToGoString(bound)  # type: ignore[no-untyped-call]
            samples.append(Sample("_bucket", {"le": le}, acc, None, None))
        samples.append(Sample("_count", {}, acc, None, None))
        if self._upper_bounds[0] >= 0:
            samples.append(Sample("_sum", {}, self._total, None, None))
        return tuple(samples)


class _DualChild:
    """One label combination of a :class:`DualMetric`: every call goes to both series."""

    __slots__ = ("_children",)

    def __init__(self, children: tuple[Any, ...]) -> None:
        self._children = children

    def inc(self, amount: float = 1.0) -> None:
        for c in self._children:
            c.inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        for c in self._children:
            c.dec(amount)

    def set(self, value: float) -> None:
        for c in self._children:
            c.set(value)

    def observe(self, value: float) -> None:
        for c in self._children:
            c.observe(value)


class _DualHistogramChild(_DualChild):
    """Both series of a histogram pair with the same buckets: the bucket is found once."""

    __slots__ = ("_a", "_b", "_bounds")

    def __init__(self, a: Histogram, b: Histogram) -> None:
        super().__init__((a, b))
        self._a, self._b, self._bounds = a, b, a._upper_bounds

    def observe(self, value: float) -> None:
        a, b = self._a, self._b
        a._total += value
        b._total += value
        if not math.isnan(value):
            i = bisect_left(self._bounds, value)
            a._counts[i] += 1
            b._counts[i] += 1


def _child(metric: Any, labels: Mapping[str, str]) -> Any:
    """The labelled child, or the metric itself where it has no labels (a GIE series whose llm-d
    twin gained some, e.g. the prefix indexer's ``plugin_name``)."""
    return metric.labels(**labels) if metric._labelnames else metric


def _pair(gie: Any, llmd: Any) -> _DualChild:
    if isinstance(gie, Histogram) and isinstance(llmd, Histogram) and gie._upper_bounds == llmd._upper_bounds:
        return _DualHistogramChild(gie, llmd)
    return _DualChild((gie, llmd))


class DualMetric(_DualChild):
    """A GIE-named metric and its ``llm_d_epp_*`` twin, with client label values capped.

    ``labels()`` takes the GIE label names; ``rename`` maps them to the twin's where llm-d renamed
    them. ``caps`` maps a label name to the :class:`LabelCap` bounding its values.
    """

    __slots__ = ("_caps", "_children_of", "_gie", "_llmd", "_rename")

    def __init__(
        self, gie: Any, llmd: Any, *, rename: Mapping[str, str], caps: Mapping[str, LabelCap]
    ) -> None:
        super().__init__((gie, llmd))
        self._gie = gie
        self._llmd = llmd
        self._rename = dict(rename)
        self._caps = caps
        # label values as passed -> child: resolving two label sets costs more than recording
        self._children_of: dict[tuple[tuple[object, ...], tuple[tuple[str, object], ...]], _DualChild] = {}

    @property
    def gie(self) -> Any:
        return self._gie

    @property
    def llmd(self) -> Any:
        return self._llmd

    def _values(self, labels: Mapping[str, object]) -> dict[str, str]:
        out = {}
        for key, value in labels.items():
            text = str(value)
            cap = self._caps.get(key)
            out[key] = cap(text) if cap is not None else text
        return out

    def labels(self, *positional: object, **labels: object) -> _DualChild:
        """The child of both series. Keyword labels may be a superset: each series takes the names
        it declares (llm-d added ``fairness_id``, ``priority`` and ``streaming`` to the request
        family, which the GIE names never had), so one call site serves both label sets."""
        key = (positional, tuple(labels.items()))
        found = self._children_of.get(key)
        if found is not None:
            return found
        if positional:  # positional values, in the GIE label order
            labels = dict(zip(self._gie._labelnames, positional, strict=True))
        values = self._values(labels)
        twin = {self._rename.get(k, k): v for k, v in values.items()}
        gie = {k: values[k] for k in self._gie._labelnames}
        llmd = {k: twin[k] for k in self._llmd._labelnames}
        child = _pair(_child(self._gie, gie), _child(self._llmd, llmd))
        if len(self._children_of) >= _CHILD_CACHE:  # client-derived values: stay bounded
            self._children_of.clear()
        self._children_of[key] = child
        return child

    def remove(self, *values: str) -> None:
        self._children_of.clear()  # a removed series must not be recorded into again
        for metric in (self._gie, self._llmd):
            with contextlib.suppress(KeyError):
                metric.remove(*values)
