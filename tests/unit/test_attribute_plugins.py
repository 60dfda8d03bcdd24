"""llm-d-router's ``endpoint-attribute-filter`` and ``endpoint-attribute-scorer``: the edge cases
of their README (threshold operators, onMissing, fallbackOnEmpty; adaptive and fixed ranges,
all-equal, missing), built through the registry from YAML parameters as a config would."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from infergate.config.picker import parse_picker_config
from infergate.errors import ConfigError
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.scheduling.plugins.attributes import (
    EndpointAttributeFilter,
    EndpointAttributeFilterParams,
    EndpointAttributeScorer,
    EndpointAttributeScorerParams,
)
from infergate.scheduling.sdk.framework import CycleState
from infergate.types import (
    CORE_METRICS_PRODUCER,
    Attributes,
    Endpoint,
    EndpointMeta,
    EndpointMetrics,
    InferenceRequest,
)

REQ = InferenceRequest(request_id="r", model="m", target_model="m")
GPU = ("GPUUtilization", "dcgm-extractor")


def ep(name: str, value: float | None = None, key: tuple[str, str] = GPU) -> Endpoint:
    attrs = Attributes({key: value}) if value is not None else Attributes()
    return Endpoint(
        meta=EndpointMeta(name=name, address=name, port=8000),
        metrics=EndpointMetrics(updated_at=1.0, attributes=attrs),
    )


def gpu_filter(operator: str, value: float, **extra: object) -> EndpointAttributeFilter:
    return EndpointAttributeFilter(
        EndpointAttributeFilterParams.model_validate(
            {
                "attribute": "GPUUtilization",
                "producer": "dcgm-extractor",
                "algorithm": {"type": "threshold", "threshold": {"operator": operator, "value": value}},
                **extra,
            }
        )
    )


def names(endpoints: Sequence[Endpoint]) -> list[str]:
    return [e.meta.name for e in endpoints]


POOL = [ep("low", 0.2), ep("mid", 0.5), ep("high", 0.9)]


@pytest.mark.parametrize(
    ("operator", "kept"),
    [
        ("LessThan", ["low"]),
        ("LessThanOrEqual", ["low", "mid"]),
        ("GreaterThan", ["high"]),
        ("GreaterThanOrEqual", ["mid", "high"]),
        ("Equal", ["mid"]),
        ("NotEqual", ["low", "high"]),
    ],
)
def test_each_threshold_operator(operator: str, kept: list[str]) -> None:
    assert names(gpu_filter(operator, 0.5).filter(REQ, POOL, CycleState())) == kept


def test_on_missing_passes_by_default_and_fails_when_asked() -> None:
    pool = [ep("bare"), ep("cool", 0.1), ep("hot", 0.99)]
    assert names(gpu_filter("LessThanOrEqual", 0.9).filter(REQ, pool, CycleState())) == ["bare", "cool"]
    strict = gpu_filter("LessThanOrEqual", 0.9, onMissing="Fail")
    assert names(strict.filter(REQ, pool, CycleState())) == ["cool"]


def test_fallback_on_empty_returns_every_candidate_else_none() -> None:
    hot = [ep("a", 0.95), ep("b", 0.97)]
    assert gpu_filter("LessThanOrEqual", 0.9).filter(REQ, hot, CycleState()) == []
    fallback = gpu_filter("LessThanOrEqual", 0.9, fallbackOnEmpty=True)
    assert names(fallback.filter(REQ, hot, CycleState())) == ["a", "b"]


def test_the_producer_is_part_of_the_name() -> None:
    # the same name from another producer is not the attribute the filter reads
    other = ep("other", 0.99, key=("GPUUtilization", "someone-else"))
    assert names(gpu_filter("LessThan", 0.5, onMissing="Fail").filter(REQ, [other], CycleState())) == []
    # producer omitted: core-metrics-extractor's custom metric
    core = EndpointAttributeFilter(
        EndpointAttributeFilterParams.model_validate(
            {
                "attribute": "depth",
                "algorithm": {"type": "threshold", "threshold": {"operator": "LessThan", "value": 5}},
            }
        )
    )
    pool = [
        ep("short", 2, key=("depth", CORE_METRICS_PRODUCER)),
        ep("long", 9, key=("depth", CORE_METRICS_PRODUCER)),
    ]
    assert names(core.filter(REQ, pool, CycleState())) == ["short"]
    agnostic = EndpointAttributeScorer(
        EndpointAttributeScorerParams.model_validate(
            {"attributeKey": "llm-d.ai/q", "producer": "", "algorithm": {"type": "linear_higher_is_better"}}
        )
    )
    pool = [ep("a", 1, key=("llm-d.ai/q", "")), ep("b", 3, key=("llm-d.ai/q", ""))]
    assert dict(agnostic.score(REQ, pool, CycleState())) == {"a:8000": 0.0, "b:8000": 1.0}


def scorer(kind: str, normalization: Mapping[str, object] | None = None) -> EndpointAttributeScorer:
    algorithm: dict[str, object] = {"type": kind}
    if normalization is not None:
        algorithm["normalization"] = normalization
    return EndpointAttributeScorer(
        EndpointAttributeScorerParams.model_validate(
            {"attributeKey": "GPUUtilization", "producer": "dcgm-extractor", "algorithm": algorithm}
        )
    )


def scores(s: EndpointAttributeScorer, pool: Sequence[Endpoint]) -> list[float]:
    return [round(v, 6) for v in s.score(REQ, pool, CycleState()).values()]


def test_adaptive_range_spans_the_candidates_and_ignores_missing_ones() -> None:
    pool = [ep("a", 10), ep("b", 20), ep("c", 40), ep("bare")]
    assert scores(scorer("linear_lower_is_better"), pool) == [1.0, 0.666667, 0.0, 0.0]
    assert scores(scorer("linear_higher_is_better", {"adaptiveRange": {}}), pool) == [0.0, 0.333333, 1.0, 0.0]


def test_adaptive_range_all_equal_is_neutral_and_nobody_having_it_scores_zero() -> None:
    assert scores(scorer("linear_lower_is_better"), [ep("a", 7), ep("b", 7), ep("c")]) == [1.0, 1.0, 0.0]
    assert scores(scorer("linear_lower_is_better"), [ep("a"), ep("b")]) == [0.0, 0.0]


def test_fixed_range_scales_and_clamps() -> None:
    fixed = {"fixedRange": {"min": 0.0, "max": 1.0}}
    pool = [ep("a", 0.25), ep("b", 1.5), ep("c", -0.5), ep("bare")]
    assert scores(scorer("linear_lower_is_better", fixed), pool) == [0.75, 0.0, 1.0, 0.0]
    assert scores(scorer("linear_higher_is_better", fixed), pool) == [0.25, 1.0, 0.0, 0.0]
    # one candidate: the fixed range still grades it (no neutral 1.0)
    assert scores(scorer("linear_lower_is_better", fixed), [ep("a", 0.9)]) == [0.1]


def _config(type_: str, parameters: str) -> None:
    build_scheduler(parse_picker_config(f"plugins:\n- type: {type_}\n  parameters: {parameters}\n"))


FILTER_ALGO = "algorithm: {type: threshold, threshold: {operator: LessThan, value: 1}}"


@pytest.mark.parametrize(
    ("type_", "parameters", "named"),
    [
        ("endpoint-attribute-filter", "{" + FILTER_ALGO + "}", "attribute"),
        ("endpoint-attribute-filter", "{attribute: a/b, " + FILTER_ALGO + "}", "contains '/' but producer"),
        ("endpoint-attribute-filter", "{attribute: a, onMissing: Skip, " + FILTER_ALGO + "}", "onMissing"),
        ("endpoint-attribute-filter", "{attribute: a, algorithm: {type: percentile}}", "algorithm.type"),
        ("endpoint-attribute-filter", "{attribute: a, algorithm: {type: threshold}}", "algorithm.threshold"),
        (
            "endpoint-attribute-filter",
            "{attribute: a, algorithm: {type: threshold, threshold: {operator: Below, value: 1}}}",
            "operator",
        ),
        ("endpoint-attribute-filter", "{attribute: a, topK: 3, " + FILTER_ALGO + "}", "topK"),
        ("endpoint-attribute-scorer", "{attributeKey: a, algorithm: {type: log}}", "algorithm.type"),
        (
            "endpoint-attribute-scorer",
            "{attributeKey: x/y, algorithm: {type: linear_lower_is_better}}",
            "producer",
        ),
        (
            "endpoint-attribute-scorer",
            "{attributeKey: a, algorithm: {type: linear_lower_is_better, normalization: "
            "{fixedRange: {min: 1, max: 1}}}}",
            "min < max",
        ),
        (
            "endpoint-attribute-scorer",
            "{attributeKey: a, algorithm: {type: linear_lower_is_better, normalization: "
            "{fixedRange: {min: 0, max: 1}, adaptiveRange: {}}}}",
            "at most one",
        ),
        (
            "endpoint-attribute-scorer",
            "{attributeKey: a, weight: 2, algorithm: {type: linear_lower_is_better}}",
            "weight",
        ),
    ],
)
def test_parameters_not_honoured_are_refused_by_name(type_: str, parameters: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        _config(type_, parameters)


def test_a_slash_in_the_name_is_fine_with_an_explicit_producer() -> None:
    _config("endpoint-attribute-filter", "{attribute: a/b, producer: p, " + FILTER_ALGO + "}")
    _config(
        "endpoint-attribute-scorer",
        "{attributeKey: a/b, producer: '', algorithm: {type: linear_lower_is_better}}",
    )
