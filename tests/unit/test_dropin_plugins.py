"""llm-d-router v0.10 plugin types under their upstream names: exact scores and filter results."""

from __future__ import annotations

import pytest

from infergate.config.picker import parse_picker_config
from infergate.errors import ConfigError
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.scheduling.plugins.upstream_plugins import (
    ActiveRequestParams,
    ActiveRequestScorer,
    ByLabelFilter,
    ByLabelParams,
    ContextLengthAware,
    ContextLengthParams,
    HeaderBasedTestingFilter,
    LabelSelectorFilter,
    LabelSelectorParams,
    LoadAwareParams,
    LoadAwareScorer,
    UtilizationFilter,
    UtilizationFilterParams,
    range_score,
)
from infergate.scheduling.sdk.framework import CycleState
from infergate.types import Endpoint, EndpointMeta, EndpointMetrics, InferenceRequest


def ep(
    i: int,
    *,
    queue: int = 0,
    running: int = 0,
    kv: float = 0.0,
    in_flight: int = 0,
    labels: dict[str, str] | None = None,
    **more: str,
) -> Endpoint:
    meta = EndpointMeta(name=f"pod-{i}", address=f"10.0.0.{i}", port=8000, labels={**(labels or {}), **more})
    metrics = EndpointMetrics(waiting_queue_size=queue, running_requests=running, kv_cache_usage=kv)
    return Endpoint(meta=meta, metrics=metrics, in_flight=in_flight)


def req(prompt: str = "", **headers: str) -> InferenceRequest:
    return InferenceRequest(request_id="r", model="m", target_model="m", prompt=prompt, headers=headers)


def names(endpoints: object) -> list[str]:
    return [e.meta.name for e in endpoints]  # type: ignore[attr-defined]


def test_load_aware_scorer_scores() -> None:
    cands = [ep(1, queue=0), ep(2, queue=25), ep(3, queue=100), ep(4, queue=150)]
    scores = LoadAwareScorer(LoadAwareParams(threshold=100)).score(req(), cands, CycleState())
    assert dict(scores) == {
        "10.0.0.1:8000": 0.5,
        "10.0.0.2:8000": 0.375,
        "10.0.0.3:8000": 0.0,
        "10.0.0.4:8000": 0.0,
    }


def test_active_request_scorer_scores() -> None:
    cands = [ep(1, in_flight=0), ep(2, in_flight=2), ep(3, in_flight=4), ep(4, in_flight=8)]
    scorer = ActiveRequestScorer(ActiveRequestParams(idle_threshold=2, max_busy_score=0.5))
    assert dict(scorer.score(req(), cands, CycleState())) == {
        "10.0.0.1:8000": 1.0,
        "10.0.0.2:8000": 1.0,
        "10.0.0.3:8000": 0.25,
        "10.0.0.4:8000": 0.0,
    }


def test_context_length_aware_scores_and_filter() -> None:
    prompt = "x" * 4000  # 1000 tokens estimated
    label = "llm-d.ai/context-length-range"
    cands = [
        ep(1, labels={label: "0-2048"}),
        ep(2, labels={label: "0-100000"}),
        ep(3, labels={label: "2048-8192"}),
        ep(4),
        ep(5, labels={label: "junk"}),
        ep(6, labels={label: "1000-1000"}),
    ]
    plugin = ContextLengthAware(ContextLengthParams(enable_filtering=True))
    scores = plugin.score(req(prompt), cands, CycleState())
    narrow = 0.3 + (0.7 / (1 + 2048 / 10000) + 0.3 * 1048 / 2048) * 0.7
    wide = 0.3 + (0.7 / (1 + 100000 / 10000) + 0.3 * 99000 / 100000) * 0.7
    assert scores["10.0.0.1:8000"] == pytest.approx(narrow)
    assert scores["10.0.0.2:8000"] == pytest.approx(wide)
    assert scores["10.0.0.3:8000"] == pytest.approx(0.3 / (1 + 1048 / 1000))
    assert (scores["10.0.0.4:8000"], scores["10.0.0.5:8000"], scores["10.0.0.6:8000"]) == (0.5, 0.0, 1.0)
    assert narrow > wide > 0.3 > scores["10.0.0.3:8000"]
    assert names(plugin.filter(req(prompt), cands, CycleState())) == ["pod-1", "pod-2", "pod-4", "pod-6"]
    assert ContextLengthAware().filter(req(prompt), cands, CycleState()) == cands  # filtering off
    assert range_score(5, 5, 5) == 1.0


def test_label_selector_and_by_label_filters() -> None:
    cands = [ep(1, role="decode", gpu="h100"), ep(2, role="prefill", gpu="h100"), ep(3, gpu="a100"), ep(4)]
    selector = LabelSelectorParams.model_validate(
        {
            "matchLabels": {"gpu": "h100"},
            "matchExpressions": [{"key": "role", "operator": "NotIn", "values": ["prefill"]}],
        }
    )
    assert names(LabelSelectorFilter(selector).filter(req(), cands, CycleState())) == ["pod-1"]
    exists = LabelSelectorParams.model_validate(
        {"matchExpressions": [{"key": "role", "operator": "DoesNotExist"}]}
    )
    assert names(LabelSelectorFilter(exists).filter(req(), cands, CycleState())) == ["pod-3", "pod-4"]
    by_label = ByLabelFilter(ByLabelParams(label="gpu", valid_values=["a100"], allows_no_label=True))
    assert names(by_label.filter(req(), cands, CycleState())) == ["pod-3", "pod-4"]
    with pytest.raises(ValueError, match="validValues is required"):
        ByLabelParams(label="gpu")
    with pytest.raises(ValueError, match="values must be non-empty"):
        LabelSelectorParams.model_validate({"matchExpressions": [{"key": "a", "operator": "In"}]})


def test_utilization_filter() -> None:
    cands = [
        ep(1, running=50),
        ep(2, queue=1),
        ep(3, kv=0.9),
        ep(4, running=10, in_flight=3),
        ep(5, in_flight=9),
    ]
    params = UtilizationFilterParams.model_validate(
        {
            "conditions": [
                {"metric": "running-requests", "maxValue": 40},
                {"metric": "waiting-queue", "maxValue": 0},
                {"metric": "kv-cache-utilization", "maxValue": 0.8},
                {"metric": "active-requests", "maxValue": 5},
            ]
        }
    )
    assert names(UtilizationFilter(params).filter(req(), cands, CycleState())) == ["pod-4"]
    strict = UtilizationFilterParams.model_validate(
        {"conditions": [{"metric": "waiting-queue", "maxValue": 0}]}
    )
    busy = [ep(1, queue=2), ep(2, queue=3)]
    assert UtilizationFilter(strict).filter(req(), busy, CycleState()) == []
    fallback = strict.model_copy(update={"fallback_on_empty": True})
    assert UtilizationFilter(fallback).filter(req(), busy, CycleState()) == busy
    with pytest.raises(ValueError, match="at most 1"):
        UtilizationFilterParams.model_validate(
            {"conditions": [{"metric": "kv-cache-utilization", "maxValue": 80}]}
        )


def test_header_based_testing_filter() -> None:
    cands = [ep(1), ep(2), ep(3)]
    f = HeaderBasedTestingFilter()
    pick = f.filter(
        req(**{"test-epp-endpoint-selection": "10.0.0.3, 10.0.0.1:8000,10.0.0.9,10.0.0.3"}),
        cands,
        CycleState(),
    )
    assert names(pick) == ["pod-3", "pod-1"]
    assert f.filter(req(**{"test-epp-endpoint-selection": "10.0.0.2:9999"}), cands, CycleState()) == []
    assert f.filter(req(), cands, CycleState()) == []


async def test_conformance_filter_through_the_director() -> None:
    """The conformance suite's picker config: the header decides the endpoint, end to end."""
    import random

    from infergate.requestcontrol.director import Director
    from tests.unit.test_director import FakeClock, body, make_store

    cfg = parse_picker_config(
        """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins: [{type: header-based-testing-filter}, {type: max-score-picker}]
"""
    )
    clock = FakeClock()
    ds = make_store(clock)
    d = Director(
        datastore=ds,
        scheduler=build_scheduler(cfg, rng=random.Random(1), clock=clock),
        flow=None,
        clock=clock,
    )
    wanted = sorted(e.key for e in ds.endpoints())[1]
    for _ in range(5):
        ctx = await d.handle_request(
            path="/v1/completions", headers={"Test-EPP-Endpoint-Selection": wanted}, body=body()
        )
        assert ctx.target.key == wanted
        d.handle_response_complete(ctx)
    ctx = await d.handle_request(
        path="/v1/completions",
        headers={"Authorization": "Bearer secret", "test-epp-endpoint-selection": wanted},
        body=body(),
    )
    assert "authorization" not in ctx.request.headers  # credentials never reach plugins


@pytest.mark.parametrize(
    ("plugin", "error"),
    [
        ("{type: load-aware-scorer, parameters: {threshold: 0}}", "threshold"),
        ("{type: active-request-scorer, parameters: {requestTimeout: 2m}}", "requestTimeout"),
        ("{type: no-hit-lru-scorer, parameters: {lruSize: 0}}", "lruSize"),
        ("{type: session-affinity-filter, parameters: {profileName: prefill}}", "profileName"),
        ("{type: utilization-filter, parameters: {conditions: []}}", "conditions"),
    ],
)
def test_plugin_parameter_and_type_errors(plugin: str, error: str) -> None:
    cfg = parse_picker_config(
        f"apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins: [{plugin}]\n"
    )
    with pytest.raises(ConfigError, match=error):
        build_scheduler(cfg)


def test_no_hit_lru_scorer() -> None:
    from infergate.scheduling.plugins.prefix import PREFIX_MATCH, PrefixMatch
    from infergate.scheduling.plugins.upstream_plugins import NoHitLRUParams, NoHitLRUScorer
    from infergate.types import SchedulingResult

    lru = NoHitLRUScorer(NoHitLRUParams(lru_size=2))
    cands = [ep(1), ep(2), ep(3)]
    k1, k2, k3 = (e.key for e in cands)

    def cycle(pick: Endpoint, *, hit: bool = False) -> dict[str, float]:
        state = CycleState()
        state.put(PREFIX_MATCH, PrefixMatch([1, 2], {k1: 1} if hit else {}))
        scores = dict(lru.score(req(), cands, state))
        lru.post_pick(req(), SchedulingResult(profile="default", targets=(pick,)), state)
        return scores

    assert cycle(cands[1]) == {k1: 1.0, k2: 0.5, k3: 0.0}  # nothing used yet: candidate order
    assert cycle(cands[0]) == {k1: 1.0, k3: 0.5, k2: 0.0}  # pod-2 used most recently
    assert cycle(cands[2], hit=True) == {k1: 0.5, k2: 0.5, k3: 0.5}  # warm: neutral, LRU untouched
    assert cycle(cands[2]) == {k3: 1.0, k2: 0.5, k1: 0.0}
    # lruSize 2: pod-2 (the oldest) fell out when pod-3 was added, so it counts as never used again
    assert cycle(cands[0]) == {k2: 1.0, k1: 0.5, k3: 0.0}
    assert dict(lru.score(req(), cands[:1], CycleState())) == {k1: 1.0}
