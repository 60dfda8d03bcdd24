"""Scheduling plugins of llm-d-router v0.10 under their upstream type names and parameters.

An operator's EndpointPickerConfig may name these types; each one here computes what its upstream
documentation says, from the signals infergate has:

- ``load-aware-scorer``: waiting-queue size, piecewise linear into [0, 0.5];
- ``active-request-scorer``: the gateway's own in-flight count per endpoint (what upstream's
  ``inflight-load-producer`` counts), idle endpoints 1.0, busy ones scaled to ``maxBusyScore``;
- ``context-length-aware``: the endpoint label ``llm-d.ai/context-length-range: "min-max"``
  against the prompt's length in tokens, estimated as UTF-8 bytes / 4 (infergate has no
  tokenizer; upstream's tokenizer-free ``estimate`` backend is likewise an estimate);
- ``label-selector-filter`` (and its deprecated name ``by-label-selector``), ``by-label``:
  Kubernetes label selection on the endpoint's pod labels;
- ``utilization-filter``: metric caps (active requests, running requests, waiting queue, KV cache);
- ``no-hit-lru-scorer``: for requests no endpoint has any prefix cached (per the
  ``prefix-cache-scorer`` that ran earlier in the profile), spread them by least-recent use;
- ``header-based-testing-filter``: the conformance suite's filter, keeping the endpoints the
  ``test-epp-endpoint-selection`` request header lists (so infergate can stand in for the
  suite's picker).

Scores are exact functions of the snapshot, so the unit tests state them as numbers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import Field, field_validator, model_validator

from infergate.scheduling.plugins.prefix import PREFIX_MATCH
from infergate.scheduling.sdk.framework import CycleState, Params, StateKey
from infergate.types import Endpoint, InferenceRequest, SchedulingResult

__all__ = [
    "ActiveRequestParams",
    "ActiveRequestScorer",
    "ByLabelFilter",
    "ByLabelParams",
    "ContextLengthAware",
    "ContextLengthParams",
    "HeaderBasedTestingFilter",
    "LabelSelectorFilter",
    "LabelSelectorParams",
    "LoadAwareParams",
    "LoadAwareScorer",
    "NoHitLRUParams",
    "NoHitLRUScorer",
    "UtilizationFilter",
    "UtilizationFilterParams",
    "estimated_tokens",
]

CHARS_PER_TOKEN = 4
TEST_SELECTION_HEADER = "test-epp-endpoint-selection"


# ------------------------------------------------------------------------------- scorers


class LoadAwareParams(Params):
    threshold: int = Field(default=128, gt=0)


class LoadAwareScorer:
    """``load-aware-scorer``: 0.5 for an empty queue, ``0.5·(1 − q/threshold)`` below the
    threshold, 0 at or above it (upstream caps the best score at 0.5 on purpose)."""

    def __init__(self, params: LoadAwareParams | None = None) -> None:
        self._threshold = (params or LoadAwareParams()).threshold

    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Mapping[str, float]:
        out = {}
        for e in candidates:
            q = e.metrics.waiting_queue_size
            out[e.key] = 0.5 if q <= 0 else (0.0 if q >= self._threshold else 0.5 * (1 - q / self._threshold))
        return out


class ActiveRequestParams(Params):
    idle_threshold: int = Field(default=0, ge=0)
    max_busy_score: float = Field(default=1.0, ge=0.0, le=1.0)
    request_timeout: str | None = None

    @field_validator("request_timeout")
    @classmethod
    def _deprecated(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError(
                "deprecated and without effect upstream too (requests are tracked until they end); remove it"
            )
        return value


class ActiveRequestScorer:
    """``active-request-scorer``: ``count <= idleThreshold`` → 1.0; otherwise
    ``(max − count) / max · maxBusyScore`` where ``max`` is the highest count among candidates."""

    def __init__(self, params: ActiveRequestParams | None = None) -> None:
        p = params or ActiveRequestParams()
        self._idle = p.idle_threshold
        self._busy = p.max_busy_score

    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Mapping[str, float]:
        top = max((e.in_flight for e in candidates), default=0)
        out = {}
        for e in candidates:
            n = e.in_flight
            out[e.key] = 1.0 if n <= self._idle else (top - n) / top * self._busy
        return out


def estimated_tokens(request: InferenceRequest) -> int:
    """The prompt's length in tokens, estimated as UTF-8 bytes / 4."""
    return len(request.prompt.encode("utf-8")) // CHARS_PER_TOKEN


class ContextLengthParams(Params):
    label: str = Field(default="llm-d.ai/context-length-range", min_length=1)
    enable_filtering: bool = False


def _parse_range(text: str) -> tuple[int, int] | None:
    lo, sep, hi = text.partition("-")
    try:
        low, high = int(lo.strip()), int(hi.strip())
    except ValueError:
        return None
    return (low, high) if sep and low <= high else None


def range_score(length: int, low: int, high: int) -> float:
    """In range: above 0.3, higher for narrow ranges and for more headroom; out of range: below
    0.3, decaying with the distance to the range (the upstream formula)."""
    fallback = 0.3
    if low <= length <= high:
        width = high - low
        if width == 0:
            return 1.0
        width_score = 1.0 / (1.0 + width / 10000.0)
        position = (high - length) / width
        return fallback + (0.7 * width_score + 0.3 * position) * (1.0 - fallback)
    distance = length - high if length > high else low - length
    return fallback / (1.0 + distance / 1000.0)


class ContextLengthAware:
    """``context-length-aware``: scores (and with ``enableFiltering`` filters) by the endpoint's
    context-length range label; unlabelled endpoints score 0.5 and pass the filter, a malformed
    label scores 0 and fails it."""

    def __init__(self, params: ContextLengthParams | None = None) -> None:
        p = params or ContextLengthParams()
        self._label = p.label
        self._filtering = p.enable_filtering

    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Mapping[str, float]:
        length = estimated_tokens(request)
        out = {}
        for e in candidates:
            text = e.meta.labels.get(self._label)
            if text is None:
                out[e.key] = 0.5
                continue
            bounds = _parse_range(text)
            out[e.key] = 0.0 if bounds is None else range_score(length, *bounds)
        return out

    def filter(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Sequence[Endpoint]:
        if not self._filtering:
            return candidates
        length = estimated_tokens(request)
        kept = []
        for e in candidates:
            text = e.meta.labels.get(self._label)
            if text is None:
                kept.append(e)
                continue
            bounds = _parse_range(text)
            if bounds is not None and bounds[0] <= length <= bounds[1]:
                kept.append(e)
        return kept


class NoHitLRUParams(Params):
    prefix_plugin_type: Literal["prefix-cache-scorer"] = "prefix-cache-scorer"
    prefix_plugin_name: str = Field(default="prefix-cache-scorer", min_length=1)
    lru_size: int = Field(default=1024, gt=0)


_COLD: StateKey[bool] = StateKey("no-hit-lru-cold")


class NoHitLRUScorer:
    """``no-hit-lru-scorer``: a request with a prefix hit anywhere scores 0.5 everywhere; a cold one
    ranks endpoints never used for a cold request first (``1 − i/(n−1)`` in candidate order), then
    the used ones from least to most recently used, continuing the same scale (floored at 0). After
    a cold request the picked endpoint becomes the most recently used. Reads the prefix match the
    ``prefix-cache-scorer`` left in the cycle state, so that scorer must come first in the profile
    (without it every request counts as cold)."""

    def __init__(self, params: NoHitLRUParams | None = None) -> None:
        self._size = (params or NoHitLRUParams()).lru_size
        self._lru: OrderedDict[str, None] = OrderedDict()  # oldest first

    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Mapping[str, float]:
        match = state.get(PREFIX_MATCH)
        cold = match is None or not any(match.matched.values())
        state.put(_COLD, cold)
        if not cold:
            return {e.key: 0.5 for e in candidates}
        n = len(candidates)
        if n == 1:
            return {candidates[0].key: 1.0}
        position = {k: i for i, k in enumerate(self._lru)}
        never = [e for e in candidates if e.key not in position]
        out = {e.key: 1.0 - i / (n - 1) for i, e in enumerate(never)}
        for e in candidates:
            if e.key in position:
                out[e.key] = max(0.0, 1.0 - (len(never) + position[e.key]) / (n - 1))
        return out

    def post_pick(self, request: InferenceRequest, result: SchedulingResult, state: CycleState, /) -> None:
        if not state.get(_COLD) or not result.targets:
            return
        key = result.primary.key
        self._lru.pop(key, None)
        self._lru[key] = None
        while len(self._lru) > self._size:
            self._lru.popitem(last=False)

    def remove_endpoint(self, key: str) -> None:
        self._lru.pop(key, None)


# ------------------------------------------------------------------------------- filters


class LabelRequirement(Params):
    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"values must be non-empty for operator {self.operator}")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"values must be empty for operator {self.operator}")
        return self


class LabelSelectorParams(Params):
    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelRequirement] = Field(default_factory=list)


def _requirement_holds(req: LabelRequirement, labels: Mapping[str, str]) -> bool:
    present = req.key in labels
    if req.operator == "Exists":
        return present
    if req.operator == "DoesNotExist":
        return not present
    if req.operator == "In":
        return present and labels[req.key] in req.values
    return not present or labels[req.key] not in req.values  # NotIn, as Kubernetes defines it


class LabelSelectorFilter:
    """``label-selector-filter``: keep endpoints whose labels match the selector (all
    ``matchLabels`` pairs and every ``matchExpressions`` requirement). An empty selector keeps all."""

    def __init__(self, params: LabelSelectorParams | None = None) -> None:
        p = params or LabelSelectorParams()
        self._labels = dict(p.match_labels)
        self._exprs = list(p.match_expressions)

    def filter(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Sequence[Endpoint]:
        return [
            e
            for e in candidates
            if all(e.meta.labels.get(k) == v for k, v in self._labels.items())
            and all(_requirement_holds(r, e.meta.labels) for r in self._exprs)
        ]


class ByLabelParams(Params):
    label: str = Field(min_length=1)
    valid_values: list[str] = Field(default_factory=list)
    allows_no_label: bool = False

    @model_validator(mode="after")
    def _something_passes(self) -> ByLabelParams:
        if not self.valid_values and not self.allows_no_label:
            raise ValueError("validValues is required unless allowsNoLabel is true")
        return self


class ByLabelFilter:
    """``by-label`` (deprecated upstream): keep endpoints whose ``label`` is one of
    ``validValues``; endpoints without the label pass only with ``allowsNoLabel``."""

    def __init__(self, params: ByLabelParams) -> None:
        self._label = params.label
        self._values = frozenset(params.valid_values)
        self._no_label = params.allows_no_label

    def filter(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Sequence[Endpoint]:
        kept = []
        for e in candidates:
            value = e.meta.labels.get(self._label)
            if (value is None and self._no_label) or (value is not None and value in self._values):
                kept.append(e)
        return kept


UtilizationMetric = Literal["active-requests", "running-requests", "waiting-queue", "kv-cache-utilization"]


class UtilizationCondition(Params):
    metric: UtilizationMetric
    max_value: float = Field(ge=0.0)

    @model_validator(mode="after")
    def _fraction(self) -> UtilizationCondition:
        if self.metric == "kv-cache-utilization" and self.max_value > 1.0:
            raise ValueError("maxValue of kv-cache-utilization is a fraction and must be at most 1")
        return self


class UtilizationFilterParams(Params):
    conditions: list[UtilizationCondition] = Field(min_length=1)
    fallback_on_empty: bool = False


def _metric(e: Endpoint, metric: UtilizationMetric) -> float:
    if metric == "active-requests":
        return float(e.in_flight)
    if metric == "running-requests":
        return float(e.metrics.running_requests)
    if metric == "waiting-queue":
        return float(e.metrics.waiting_queue_size)
    return e.metrics.kv_cache_usage


class UtilizationFilter:
    """``utilization-filter``: keep endpoints within every ``conditions`` cap (metric ≤ maxValue);
    with ``fallbackOnEmpty`` an empty result gives back all candidates."""

    def __init__(self, params: UtilizationFilterParams) -> None:
        self._conditions = [(c.metric, c.max_value) for c in params.conditions]
        self._fallback = params.fallback_on_empty

    def filter(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Sequence[Endpoint]:
        kept = [e for e in candidates if all(_metric(e, m) <= cap for m, cap in self._conditions)]
        return candidates if not kept and self._fallback else kept


class HeaderBasedTestingFilter:
    """``header-based-testing-filter``: keep the endpoints named in the ``test-epp-endpoint-selection``
    header (comma-separated ``ip`` or ``ip:port``, in header order, one per IP); no header → none."""

    def filter(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Sequence[Endpoint]:
        wanted = (request.headers.get(TEST_SELECTION_HEADER) or "").strip()
        if not wanted:
            return []
        by_ip: dict[str, Endpoint] = {}
        by_host_port: dict[str, Endpoint] = {}
        for e in candidates:
            ip = e.meta.address.strip().strip("[]")
            if ip:
                by_ip.setdefault(ip, e)
                by_host_port[f"{ip}:{e.meta.port}"] = e
        kept: list[Endpoint] = []
        seen: set[str] = set()
        for raw in wanted.split(","):
            item = raw.strip()
            if not item:
                continue
            host, port = _split(item)
            found = by_host_port.get(f"{host}:{port}") if port else by_ip.get(host)
            if found is not None and found.meta.address not in seen:
                seen.add(found.meta.address)
                kept.append(found)
        return kept


def _split(item: str) -> tuple[str, str]:
    """``host:port`` / ``[v6]:port`` → (host, port); a bare (possibly bracketed) IP → (ip, "")."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if item.count(":") == 1:
        host, port = item.split(":")
        return host, port
    return item, ""
