"""llm-d-router's generic endpoint-attribute plugins: filter and score on one named scalar value.

An endpoint attribute is a number some producer published for an endpoint
(:attr:`~infergate.types.EndpointMetrics.attributes`): a ``customMetrics`` entry of
``core-metrics-extractor``, or ``GPUUtilization`` of ``dcgm-extractor``. These plugins know nothing
of where it came from, so one pair serves every such signal:

* ``endpoint-attribute-filter`` keeps the candidates whose value passes ``algorithm.threshold``
  (``LessThan``, ``LessThanOrEqual``, ``GreaterThan``, ``GreaterThanOrEqual``, ``Equal``,
  ``NotEqual``); ``onMissing`` keeps (``Pass``, the default) or drops (``Fail``) a candidate
  without the attribute; ``fallbackOnEmpty`` returns every candidate when none passes (otherwise
  an empty result: no capacity, as upstream);
* ``endpoint-attribute-scorer`` scales the value linearly onto [0, 1] (``linear_lower_is_better``
  inverts it) over ``fixedRange`` (clamped) or, by default, ``adaptiveRange``: the candidates'
  own minimum and maximum, all equal giving each 1.0. A candidate without the attribute scores 0.

The attribute is named with its producer: ``producer`` omitted means ``core-metrics-extractor``
(the only producer whose names come from configuration), ``""`` a producer-agnostic attribute. An
attribute name containing ``/`` without an explicit producer is refused: it is the old combined
``name/producer`` spelling, which would silently match nothing.

Both are pure: one dictionary lookup per candidate, nothing kept between cycles, and nothing at all
on the request path of a config that does not name them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import Field, model_validator

from infergate.scheduling.sdk.framework import CycleState, Params, candidate_keys
from infergate.scheduling.sdk.scores import CandidateScores
from infergate.types import CORE_METRICS_PRODUCER, AttributeKey, Endpoint, InferenceRequest

__all__ = [
    "EndpointAttributeFilter",
    "EndpointAttributeFilterParams",
    "EndpointAttributeScorer",
    "EndpointAttributeScorerParams",
    "attribute_key",
]

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "LessThan": operator.lt,
    "LessThanOrEqual": operator.le,
    "GreaterThan": operator.gt,
    "GreaterThanOrEqual": operator.ge,
    "Equal": operator.eq,
    "NotEqual": operator.ne,
}


def attribute_key(field: str, name: str, producer: str | None) -> AttributeKey:
    """The ``(name, producer)`` a plugin reads; ValueError for a name with ``/`` and no producer."""
    if producer is not None:
        return (name, producer)
    if "/" in name:
        head, _, tail = name.rpartition("/")
        raise ValueError(
            f"{field}: {name!r} contains '/' but producer is not set; if this is the combined "
            f"'attribute/producer' spelling, write {field}: {head!r} and producer: {tail!r}; if the "
            "name itself contains '/', set producer explicitly"
        )
    return (name, CORE_METRICS_PRODUCER)


class ThresholdParams(Params):
    operator: Literal["LessThan", "LessThanOrEqual", "GreaterThan", "GreaterThanOrEqual", "Equal", "NotEqual"]
    value: float


class FilterAlgorithmParams(Params):
    type: Literal["threshold"]
    threshold: ThresholdParams


class EndpointAttributeFilterParams(Params):
    attribute: str = Field(min_length=1)
    producer: str | None = None
    on_missing: Literal["Pass", "Fail", ""] = "Pass"
    fallback_on_empty: bool = False
    algorithm: FilterAlgorithmParams

    @model_validator(mode="after")
    def _resolvable(self) -> EndpointAttributeFilterParams:
        attribute_key("attribute", self.attribute, self.producer)
        return self


class EndpointAttributeFilter:
    """``endpoint-attribute-filter``: see the module docstring."""

    def __init__(self, params: EndpointAttributeFilterParams) -> None:
        self._key = attribute_key("attribute", params.attribute, params.producer)
        self._pass_missing = params.on_missing != "Fail"
        self._fallback = params.fallback_on_empty
        compare = _OPERATORS[params.algorithm.threshold.operator]
        bound = params.algorithm.threshold.value
        self._passes: Callable[[float], bool] = lambda v: compare(v, bound)

    def filter(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Sequence[Endpoint]:
        key, passes, pass_missing = self._key, self._passes, self._pass_missing
        kept: list[Endpoint] = []
        for e in candidates:
            value = e.metrics.attributes.get(key)
            if pass_missing if value is None else passes(value):
                kept.append(e)
        if not kept and self._fallback:
            return candidates
        return kept


class FixedRangeParams(Params):
    min: float = 0.0
    max: float = 0.0

    @model_validator(mode="after")
    def _ordered(self) -> FixedRangeParams:
        if self.min >= self.max:
            raise ValueError(f"fixedRange needs min < max (got min {self.min:g}, max {self.max:g})")
        return self


class AdaptiveRangeParams(Params):
    """No parameters: the range is the candidates' own."""


class NormalizationParams(Params):
    fixed_range: FixedRangeParams | None = None
    adaptive_range: AdaptiveRangeParams | None = None

    @model_validator(mode="after")
    def _one(self) -> NormalizationParams:
        if self.fixed_range is not None and self.adaptive_range is not None:
            raise ValueError("at most one of fixedRange and adaptiveRange")
        return self


class ScorerAlgorithmParams(Params):
    type: Literal["linear_lower_is_better", "linear_higher_is_better"]
    normalization: NormalizationParams = NormalizationParams()


class EndpointAttributeScorerParams(Params):
    attribute_key: str = Field(min_length=1)
    producer: str | None = None
    algorithm: ScorerAlgorithmParams

    @model_validator(mode="after")
    def _resolvable(self) -> EndpointAttributeScorerParams:
        attribute_key("attributeKey", self.attribute_key, self.producer)
        return self


class EndpointAttributeScorer:
    """``endpoint-attribute-scorer``: see the module docstring."""

    def __init__(self, params: EndpointAttributeScorerParams) -> None:
        self._key = attribute_key("attributeKey", params.attribute_key, params.producer)
        self._lower = params.algorithm.type == "linear_lower_is_better"
        fixed = params.algorithm.normalization.fixed_range
        self._fixed = None if fixed is None else (fixed.min, fixed.max)

    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> CandidateScores:
        keys = candidate_keys(candidates, state)
        key = self._key
        values = [e.metrics.attributes.get(key) for e in candidates]
        present = [v for v in values if v is not None]
        if not present:
            return CandidateScores(keys, [0.0] * len(keys), bounded=True)
        if self._fixed is not None:
            low, high = self._fixed
        else:
            low, high = min(present), max(present)
            if low == high:  # everyone that has it is alike: a neutral 1.0, as upstream
                return CandidateScores(keys, [0.0 if v is None else 1.0 for v in values], bounded=True)
        span = high - low
        lower = self._lower
        scores: list[float] = []
        for v in values:
            if v is None:
                scores.append(0.0)
                continue
            x = (v - low) / span
            x = 0.0 if x < 0.0 else 1.0 if x > 1.0 else x
            scores.append(1.0 - x if lower else x)
        return CandidateScores(keys, scores, bounded=True)
