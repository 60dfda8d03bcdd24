"""The gateway's own Prometheus metrics, under the reference endpoint picker's names.

Dashboards built for the Gateway API Inference Extension read ``inference_objective_*``,
``inference_pool_*`` and ``inference_extension_*``; keeping the names, types, labels and buckets
identical lets them work unchanged. All metrics live on one :class:`GatewayMetrics` object with its
own registry, so tests and several gateways in one process never collide on the global registry.
Components accept ``metrics: GatewayMetrics | None`` and record nothing when it is ``None``.
This module imports nothing from infergate.

llm-d-router v0.10 renamed the family to ``llm_d_epp_*`` and emits the old names beside the new
ones; infergate does the same: every metric with an llm-d twin is a :class:`DualMetric` that
records into both series (the twin's label names follow llm-d where they were renamed, e.g.
``model_server_pod`` → ``model_server_endpoint``). Label values that come from clients are bounded
as llm-d bounds them: ``model_name`` and ``target_model_name`` share a cap of 1000 distinct values
and ``fairness_id`` has its own cap of 1000; past a cap new values are reported as ``other``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = ["LABEL_CAP", "OTHER", "DualMetric", "GatewayMetrics", "LabelCap"]

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


def _build_ref() -> str:
    """The installed package version (the reference puts its git ref here)."""
    try:
        return importlib.metadata.version("infergate")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _build_commit() -> str:
    """``INFERGATE_COMMIT`` when the image build sets it, else ``unknown``."""
    return os.environ.get("INFERGATE_COMMIT") or "unknown"


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
        child = _pair(self._gie.labels(**gie), self._llmd.labels(**llmd))
        if len(self._children_of) >= _CHILD_CACHE:  # client-derived values: stay bounded
            self._children_of.clear()
        self._children_of[key] = child
        return child

    def remove(self, *values: str) -> None:
        self._children_of.clear()  # a removed series must not be recorded into again
        for metric in (self._gie, self._llmd):
            with contextlib.suppress(KeyError):
                metric.remove(*values)


_DURATION_BUCKETS = (
    0.005,
    0.025,
    0.05,
    0.1,
    0.2,
    0.4,
    0.6,
    0.8,
    1.0,
    1.25,
    1.5,
    2,
    3,
    4,
    5,
    6,
    8,
    10,
    15,
    20,
    30,
    45,
    60,
    120,
    180,
    240,
    300,
    360,
    480,
    600,
    900,
    1200,
    1800,
    2700,
    3600,
)
_TPOT_BUCKETS = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.06,
    0.08,
    0.1,
    0.125,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.8,
    1,
    1.5,
    2,
    3,
    4.5,
    6,
    12,
    18,
    24,
    30,
    36,
    48,
    60,
    120,
    180,
    240,
    300,
    360,
    480,
    600,
    900,
    1200,
    1800,
    2700,
    3600,
)
_REQUEST_SIZE_BUCKETS = (*(float(64 * 4**i) for i in range(13)), float(1 << 30))  # 64 B … 1 GiB
_TOKEN_BUCKETS = tuple(float(1 << i) for i in range(17))  # 1 … 65536
_SCHEDULER_BUCKETS = (
    0.0001,
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
)
_PLUGIN_BUCKETS = (
    0.00001,
    0.00002,
    0.00005,
    0.0001,
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
)
_QUEUE_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
_RATIO_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

_OBJ = ("model_name", "target_model_name")
# llm-d-router v0.10 labels its request family (llm_d_epp_request_*) with the fairness id and the
# objective's priority as well; TTFT also says whether the response was streamed.
_OBJ_LLMD = (*_OBJ, "fairness_id", "priority")
_OBJ_LLMD_STREAMING = (*_OBJ_LLMD, "streaming")
# llm-d's own buckets for its TTFT and streaming-TPOT twins (the GIE series keep theirs)
_LLMD_TTFT_BUCKETS = (*_DURATION_BUCKETS[: _DURATION_BUCKETS.index(120) + 1],)
_LLMD_TPOT_BUCKETS = (
    0.0005, 0.00205, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.125,
    0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1, 2,
)  # fmt: skip
_FLOW = ("fairness_id", "priority", "inference_pool", "model_name", "target_model_name")


class GatewayMetrics:
    """Every metric the gateway exports, registered on one registry.

    Attribute names are the reference metric names without their family prefix.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._exposition: Any = self.registry
        r = self.registry
        self.model_cap = LabelCap()
        self.fairness_cap = LabelCap()
        caps = {
            "model_name": self.model_cap,
            "target_model_name": self.model_cap,
            "target_model": self.model_cap,
            "fairness_id": self.fairness_cap,
        }

        def dual(
            cls: Any,
            gie: str,
            llmd: str,
            doc: str,
            labels: tuple[str, ...] = (),
            rename: Mapping[str, str] | None = None,
            *,
            twin_labels: tuple[str, ...] | None = None,
            twin_buckets: tuple[float, ...] | None = None,
            **kwargs: Any,
        ) -> DualMetric:
            """``twin_labels``/``twin_buckets``: where llm-d's series differ from the GIE one."""
            rename = rename or {}
            if twin_labels is None:
                twin_labels = tuple(rename.get(n, n) for n in labels)
            twin_kwargs = dict(kwargs) if twin_buckets is None else {**kwargs, "buckets": twin_buckets}
            return DualMetric(
                cls(gie, doc, labels, registry=r, **kwargs),
                cls(llmd, doc, twin_labels, registry=r, **twin_kwargs),
                rename=rename,
                caps=caps,
            )

        # --- per objective (model) ------------------------------------------------------------
        self.request_total = dual(
            Counter,
            "inference_objective_request",
            "llm_d_epp_request",
            "Requests scheduled, per model.",
            (*_OBJ, "priority"),
            twin_labels=_OBJ_LLMD,
        )
        self.request_error_total = dual(
            Counter,
            "inference_objective_request_error",
            "llm_d_epp_request_error",
            "Requests that failed, per error code.",
            (*_OBJ, "error_code"),
            twin_labels=(*_OBJ_LLMD, "error_code"),
        )
        self.request_duration = dual(
            Histogram,
            "inference_objective_request_duration_seconds",
            "llm_d_epp_request_duration_seconds",
            "End-to-end request latency.",
            _OBJ,
            buckets=_DURATION_BUCKETS,
            twin_labels=_OBJ_LLMD,
        )
        self.request_ttft = dual(
            Histogram,
            "inference_objective_request_ttft_seconds",
            "llm_d_epp_request_ttft_seconds",
            "Time to the first response byte.",
            _OBJ,
            buckets=_DURATION_BUCKETS,
            twin_labels=_OBJ_LLMD_STREAMING,
            twin_buckets=_LLMD_TTFT_BUCKETS,
        )
        self.request_tpot = dual(
            Histogram,
            "inference_objective_request_tpot_seconds",
            "llm_d_epp_request_streaming_tpot_seconds",
            "Time per output token after the first, of streamed responses.",
            _OBJ,
            buckets=_TPOT_BUCKETS,
            twin_labels=_OBJ_LLMD,
            twin_buckets=_LLMD_TPOT_BUCKETS,
        )
        self.normalized_tpot = dual(
            Histogram,
            "inference_objective_normalized_time_per_output_token_seconds",
            "llm_d_epp_request_ntpot_seconds",
            "Request latency divided by the number of output tokens.",
            _OBJ,
            buckets=_TPOT_BUCKETS,
            twin_labels=_OBJ_LLMD,
        )
        self.request_sizes = dual(
            Histogram,
            "inference_objective_request_sizes",
            "llm_d_epp_request_size_bytes",
            "Request body size in bytes.",
            _OBJ,
            buckets=_REQUEST_SIZE_BUCKETS,
            twin_labels=_OBJ_LLMD,
        )
        self.response_sizes = dual(
            Histogram,
            "inference_objective_response_sizes",
            "llm_d_epp_response_size_bytes",
            "Response body size in bytes.",
            _OBJ,
            buckets=_REQUEST_SIZE_BUCKETS,
            twin_labels=_OBJ_LLMD,
        )
        self.input_tokens = dual(
            Histogram,
            "inference_objective_input_tokens",
            "llm_d_epp_request_input_tokens",
            "Prompt tokens per request (from usage).",
            _OBJ,
            buckets=_TOKEN_BUCKETS,
            twin_labels=_OBJ_LLMD,
        )
        self.output_tokens = dual(
            Histogram,
            "inference_objective_output_tokens",
            "llm_d_epp_request_output_tokens",
            "Completion tokens per request (from usage).",
            _OBJ,
            buckets=_TOKEN_BUCKETS,
            twin_labels=_OBJ_LLMD,
        )
        self.prompt_cached_tokens = dual(
            Histogram,
            "inference_objective_prompt_cached_tokens",
            "llm_d_epp_request_cached_tokens",
            "Prompt tokens served from the prefix cache.",
            _OBJ,
            buckets=_TOKEN_BUCKETS,
            twin_labels=_OBJ_LLMD,
        )
        self.running_requests = dual(
            Gauge,
            "inference_objective_running_requests",
            "llm_d_epp_request_running",
            "Requests in flight through the gateway.",
            ("model_name",),
            twin_labels=_OBJ_LLMD,
        )

        # --- per pool -----------------------------------------------------------------------
        self.pool_average_kv_cache_utilization = dual(
            Gauge,
            "inference_pool_average_kv_cache_utilization",
            "llm_d_epp_average_kv_cache_utilization",
            "Mean KV-cache use of the pool's ready endpoints.",
            ("name",),
        )
        self.pool_average_queue_size = dual(
            Gauge,
            "inference_pool_average_queue_size",
            "llm_d_epp_average_queue_size",
            "Mean waiting-queue length of the pool's ready endpoints.",
            ("name",),
        )
        self.pool_average_running_requests = dual(
            Gauge,
            "inference_pool_average_running_requests",
            "llm_d_epp_average_running_requests",
            "Mean running requests of the pool's ready endpoints.",
            ("name",),
        )
        self.pool_ready_pods = dual(
            Gauge,
            "inference_pool_ready_pods",
            "llm_d_epp_ready_endpoints",
            "Endpoints with fresh metrics.",
            ("name",),
        )
        self.pool_per_pod_queue_size = dual(
            Gauge,
            "inference_pool_per_pod_queue_size",
            "llm_d_epp_per_endpoint_queue_size",
            "Waiting-queue length per endpoint.",
            ("name", "model_server_pod"),
            rename={"model_server_pod": "model_server_endpoint"},
        )

        # --- scheduler ------------------------------------------------------------------------
        self.scheduler_e2e_duration = dual(
            Histogram,
            "inference_extension_scheduler_e2e_duration_seconds",
            "llm_d_epp_scheduler_e2e_duration_seconds",
            "Time of one whole scheduling cycle.",
            buckets=_SCHEDULER_BUCKETS,
        )
        self.scheduler_attempts_total = dual(
            Counter,
            "inference_extension_scheduler_attempts",
            "llm_d_epp_scheduler_attempts",
            "Scheduling cycles by outcome.",
            ("status", "target_model_name", "pod_name", "namespace", "port"),
            rename={"pod_name": "endpoint_name"},
        )
        self.plugin_duration = dual(
            Histogram,
            "inference_extension_plugin_duration_seconds",
            "llm_d_epp_plugin_duration_seconds",
            "Time spent in one plugin call.",
            ("extension_point", "plugin_type", "plugin_name"),
            buckets=_PLUGIN_BUCKETS,
        )
        self.prefix_indexer_size = dual(
            Gauge,
            "inference_extension_prefix_indexer_size",
            "llm_d_epp_prefix_indexer_size",
            "Entries held by the approximate prefix index.",
        )
        self.prefix_indexer_hit_ratio = dual(
            Histogram,
            "inference_extension_prefix_indexer_hit_ratio",
            "llm_d_epp_prefix_indexer_hit_ratio",
            "Matched share of a request's prefix blocks.",
            buckets=_RATIO_BUCKETS,
        )
        self.model_rewrite_decisions_total = dual(
            Counter,
            "inference_extension_model_rewrite_decisions",
            "llm_d_epp_model_rewrite_decisions",
            "Model rewrites applied.",
            ("model_rewrite_name", "model_name", "target_model"),
        )
        self.info = dual(
            Gauge,
            "inference_extension_info",
            "llm_d_epp_info",
            "Build information.",
            ("commit", "build_ref"),
        )

        # --- flow control ---------------------------------------------------------------------
        self.fc_request_queue_duration = dual(
            Histogram,
            "inference_extension_flow_control_request_queue_duration_seconds",
            "llm_d_epp_flow_control_request_queue_duration_seconds",
            "Time a request waited in flow control.",
            (*_FLOW, "outcome"),
            buckets=_QUEUE_BUCKETS,
        )
        self.fc_dispatch_cycle_duration = dual(
            Histogram,
            "inference_extension_flow_control_dispatch_cycle_duration_seconds",
            "llm_d_epp_flow_control_dispatch_cycle_duration_seconds",
            "Time of one dispatch cycle.",
            buckets=_SCHEDULER_BUCKETS,
        )
        self.fc_queue_size = dual(
            Gauge,
            "inference_extension_flow_control_queue_size",
            "llm_d_epp_flow_control_queue_size",
            "Requests waiting in flow control.",
            _FLOW,
        )
        self.fc_queue_bytes = dual(
            Gauge,
            "inference_extension_flow_control_queue_bytes",
            "llm_d_epp_flow_control_queue_bytes",
            "Request bytes waiting in flow control.",
            _FLOW,
        )
        self.fc_pool_saturation = dual(
            Gauge,
            "inference_extension_flow_control_pool_saturation",
            "llm_d_epp_flow_control_pool_saturation",
            "The pool's saturation; 1 or more means saturated.",
            ("inference_pool",),
        )
        self.fc_rejected_total = dual(
            Counter,
            "inference_extension_flow_control_rejected_requests",
            "llm_d_epp_flow_control_rejected_requests",
            "Requests rejected by flow control.",
            ("priority", "reason"),
        )

        # --- data plane (no reference counterpart) -----------------------------------------------
        self.retry_refused_total = Counter(
            "infergate_request_retry_refused",
            "Requests failed instead of retried because endpoints went down while serving them "
            "(reason endpoints_down: two did; the request probably stalls them).",
            ("reason",),
            registry=r,
        )

        self.info.labels(commit=_build_commit(), build_ref=_build_ref()).set(1)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self._exposition)

    def expose(self, source: Any) -> None:
        """Render ``source`` (anything with ``collect()``) instead of the registry: the gateway
        process of several workers adds the workers' series to its own."""
        self._exposition = source
