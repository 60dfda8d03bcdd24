"""Scheduling: plugin formulas (exact numbers), framework clamping/weights/timing, pickers, config."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from infergate.config.picker import (
    EndpointPickerConfig,
    PluginRef,
    PluginSpec,
    ProfileSpec,
    load_picker_config,
    parse_picker_config,
    reference_picker_config,
)
from infergate.errors import ConfigError, NoCapacityError
from infergate.scheduling import CycleState, build_scheduler, default_registry
from infergate.scheduling.plugins.filters import LoraAffinityFilter, LoraAffinityFilterParams, LowQueueFilter
from infergate.scheduling.plugins.pickers import (
    MaxScorePicker,
    RandomPicker,
    RoundRobinPicker,
    WeightedRandomPicker,
)
from infergate.scheduling.plugins.scorers import (
    KvCacheUtilizationScorer,
    LeastInFlightScorer,
    LoraAffinityParams,
    LoraAffinityScorer,
    QueueScorer,
    RunningRequestsScorer,
)
from infergate.scheduling.sdk.framework import PluginContext, PluginRegistry
from infergate.scheduling.sdk.testing import make_endpoint
from infergate.telemetry import GatewayMetrics
from infergate.types import Endpoint, InferenceRequest, ScoredEndpoint

REQ = InferenceRequest(request_id="r1", model="m", target_model="m")
REFERENCE_LORA = LoraAffinityParams(load_aware=False)


def lora_req(model: str) -> InferenceRequest:
    return InferenceRequest(request_id="r", model=model, target_model=model)


def eps(*metrics: dict[str, Any], in_flight: Sequence[int] = ()) -> list[Endpoint]:
    out = []
    for i, m in enumerate(metrics):
        f = in_flight[i] if i < len(in_flight) else 0
        out.append(make_endpoint(f"e{i}", in_flight=f, **m))
    return out


def by_name(scores: Mapping[str, float]) -> dict[str, float]:
    return {k.split(":")[0]: round(v, 6) for k, v in scores.items()}


def config(*plugins: tuple[str, str | None, dict[str, object], float | None]) -> EndpointPickerConfig:
    specs = [PluginSpec(type=t, name=n, parameters=p) for t, n, p, _ in plugins]
    refs = [PluginRef(plugin_ref=n or t, weight=w) for t, n, _, w in plugins]
    return EndpointPickerConfig(plugins=specs, scheduling_profiles=[ProfileSpec(name="p", plugins=refs)])


# --------------------------------------------------------------------------- scorer formulas


@pytest.mark.parametrize(
    ("queues", "expected"),
    [
        ([0, 5, 10], {"e0": 1.0, "e1": 0.5, "e2": 0.0}),
        ([3, 3, 3], {"e0": 1.0, "e1": 1.0, "e2": 1.0}),  # all equal → 1.0
        ([2, 6], {"e0": 1.0, "e1": 0.0}),
        ([4, 1, 2], {"e0": 0.0, "e1": 1.0, "e2": 0.666667}),
    ],
)
def test_queue_scorer_min_max(queues: list[int], expected: dict[str, float]) -> None:
    cands = eps(*({"waiting_queue_size": q} for q in queues))
    assert by_name(QueueScorer().score(REQ, cands, CycleState())) == expected


@pytest.mark.parametrize(
    ("running", "expected"),
    [([0, 8, 2], {"e0": 1.0, "e1": 0.0, "e2": 0.75}), ([1, 1], {"e0": 1.0, "e1": 1.0})],
)
def test_running_requests_scorer(running: list[int], expected: dict[str, float]) -> None:
    cands = eps(*({"running_requests": r} for r in running))
    assert by_name(RunningRequestsScorer().score(REQ, cands, CycleState())) == expected


def test_least_in_flight_scorer_uses_gateway_count() -> None:
    cands = eps({}, {}, {}, in_flight=[0, 4, 1])
    assert by_name(LeastInFlightScorer().score(REQ, cands, CycleState())) == {
        "e0": 1.0,
        "e1": 0.0,
        "e2": 0.75,
    }


@pytest.mark.parametrize(("kv", "expected"), [(0.0, 1.0), (0.25, 0.75), (1.0, 0.0), (0.9, 0.1)])
def test_kv_cache_scorer(kv: float, expected: float) -> None:
    cands = eps({"kv_cache_usage": kv})
    assert by_name(KvCacheUtilizationScorer().score(REQ, cands, CycleState())) == {"e0": expected}


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({"running_adapters": ["a"], "max_active_adapters": 1}, 1.0),  # running wins even when full
        ({"running_adapters": ["b"], "max_active_adapters": 2}, 0.6),  # free slot
        ({"waiting_adapters": ["a"], "running_adapters": ["b"], "max_active_adapters": 3}, 0.8),  # waiting
        ({"waiting_adapters": ["a"], "running_adapters": ["b"], "max_active_adapters": 2}, 0.8),  # waiting
        ({"running_adapters": ["b", "c"], "max_active_adapters": 2}, 0.0),  # full, not there
    ],
)
def test_lora_affinity_scorer_reference_rule(metrics: dict[str, object], expected: float) -> None:
    # a second, LoRA-enabled endpoint so the scorer is not neutral
    cands = eps(metrics, {"max_active_adapters": 2, "running_adapters": ["x", "y"]})
    scores = LoraAffinityScorer(REFERENCE_LORA).score(lora_req("a"), cands, CycleState())
    assert by_name(scores).get("e0", 0.0) == expected  # a missing key means 0.0
    assert by_name(scores).get("e1", 0.0) == 0.0


def test_lora_affinity_scorer_neutral_for_base_models_and_lora_off() -> None:
    cands = eps({"max_active_adapters": 2, "running_adapters": ["a", "b"]}, {"max_active_adapters": 2})
    for load_aware, e1 in ((True, 0.1), (False, 0.6)):  # load-aware: slot 0.4 + slot use 2/4
        s = LoraAffinityScorer(LoraAffinityParams(base_models=["base"], load_aware=load_aware))
        assert by_name(s.score(lora_req("base"), cands, CycleState())) == {"e0": 1.0, "e1": 1.0}
        assert by_name(s.score(lora_req("a"), cands, CycleState())) == {"e0": 1.0, "e1": e1}
        off = eps({}, {})
        assert by_name(s.score(lora_req("a"), off, CycleState())) == {"e0": 1.0, "e1": 1.0}


# e0 runs adapter a, e1 has a free slot, e2 is full with two other adapters
_SLOTS = (
    {"max_active_adapters": 2, "running_adapters": ["a"]},
    {"max_active_adapters": 2, "running_adapters": ["b"]},
    {"max_active_adapters": 2, "running_adapters": ["x", "y"]},
)


@pytest.mark.parametrize(
    ("in_flight", "expected"),
    [
        # idle: a runs on e0, so a slot on e1 costs 0.4 + the pool's slot use 4/6: packed
        ([0, 0, 0], {"e0": 1.0, "e1": 0.0, "e2": 0.0}),
        # mean load 1/3 → scale 4/3: e0 costs 0.75, e1 1.066667 → e1 scores 1 − 0.316667
        ([1, 0, 0], {"e0": 1.0, "e1": 0.683333, "e2": 0.0}),
        # scale 7/3: e0 costs 12/7, more than e1's slot: the adapter spreads to e1
        ([4, 0, 0], {"e0": 0.352381, "e1": 1.0, "e2": 0.0}),
        ([0, 1, 0], {"e0": 1.0, "e1": 0.0, "e2": 0.0}),
        # the full endpoint never wins, however idle: it would have to evict an adapter
        ([5, 5, 0], {"e0": 1.0, "e1": 0.0, "e2": 0.0}),
    ],
)
def test_lora_affinity_scorer_load_aware(in_flight: list[int], expected: dict[str, float]) -> None:
    cands = eps(*_SLOTS, in_flight=in_flight)
    assert by_name(LoraAffinityScorer().score(lora_req("a"), cands, CycleState())) == expected


def test_lora_affinity_load_aware_prefers_the_less_loaded_holder_and_reads_scraped_load() -> None:
    both = ({"max_active_adapters": 2, "running_adapters": ["a"]},) * 2 + (_SLOTS[2],)
    # loads 3, 1, 0: mean 4/3, scale 7/3 → costs 9/7 and 3/7: e0 scores 1 − 6/7
    cands = eps(*both, in_flight=[3, 1, 0])
    expected = {"e0": 0.142857, "e1": 1.0, "e2": 0.0}
    assert by_name(LoraAffinityScorer().score(lora_req("a"), cands, CycleState())) == expected
    # the same load seen only by the scrape (another gateway's requests): queue 1 + batch 2
    scraped = eps(
        {**both[0], "waiting_queue_size": 1, "running_requests": 2}, both[1], both[2], in_flight=[0, 1]
    )
    assert by_name(LoraAffinityScorer().score(lora_req("a"), scraped, CycleState())) == expected
    # waiting (0.8) counts as held: cost 0.2; e1's free slot 0.4 + slot use 2/4
    waiting = eps({"max_active_adapters": 2, "waiting_adapters": ["a"]}, _SLOTS[1])
    assert by_name(LoraAffinityScorer().score(lora_req("a"), waiting, CycleState())) == {"e0": 1.0, "e1": 0.3}
    # waiting behind two other adapters (blocked) costs 1.0, e1's slot 0.4 + 4/4
    blocked = eps({**_SLOTS[2], "waiting_adapters": ["a"]}, _SLOTS[1], in_flight=[0, 0])
    assert by_name(LoraAffinityScorer().score(lora_req("a"), blocked, CycleState())) == {"e0": 1.0, "e1": 0.6}
    blocked = eps({**_SLOTS[2], "waiting_adapters": ["a"]}, _SLOTS[1], in_flight=[2, 0])  # scale 2
    assert by_name(LoraAffinityScorer().score(lora_req("a"), blocked, CycleState())) == {"e0": 0.4, "e1": 1.0}
    # an adapter held nowhere: every free slot costs 0.4, load decides
    nowhere = eps(*_SLOTS, in_flight=[0, 1, 0])
    expected = {"e0": 1.0, "e1": 0.25, "e2": 0.0}
    assert by_name(LoraAffinityScorer().score(lora_req("c"), nowhere, CycleState())) == expected
    # every endpoint would have to evict: all 0, the scorer has no preference
    full = eps(_SLOTS[2], _SLOTS[2], in_flight=[4, 0])
    assert by_name(LoraAffinityScorer().score(lora_req("a"), full, CycleState())) == {"e0": 0.0, "e1": 0.0}


def _serve(sched: Any, model: str, pool: list[dict[str, Any]]) -> int:
    """Schedule one request over ``pool`` (name → in-flight, running adapters) and book it there."""
    cands = [
        make_endpoint(p["name"], in_flight=p["n"], max_active_adapters=2, running_adapters=p["running"])
        for p in pool
    ]
    i = [c.key for c in cands].index(sched.schedule(lora_req(model), cands).primary.key)
    pool[i]["n"] += 1
    pool[i]["running"] = sorted({*pool[i]["running"], model})
    return i


@pytest.mark.parametrize("load_aware", [True, False])
def test_lora_affinity_spreads_a_hot_adapter_and_packs_a_cold_one(load_aware: bool) -> None:
    params: dict[str, object] = {"loadAware": load_aware}
    sched = build_scheduler(
        config(("lora-affinity-scorer", None, params, 1.0), ("max-score-picker", None, {}, None)),
        rng=random.Random(3),
    )
    pool = [
        {"name": "e0", "n": 0, "running": ["hot", "cold"]},
        *({"name": f"e{i}", "n": 0, "running": []} for i in range(1, 4)),
    ]
    hot = Counter(_serve(sched, "hot", pool) for _ in range(40))
    if load_aware:
        assert len(hot) == 4 and max(hot.values()) <= 12  # spread over every endpoint
    else:
        assert hot == {0: 40}  # the reference packs it all onto e0
    # a cold adapter resident on e0 goes there while e0 is not far busier than the others
    for p in pool:
        p["n"] = 2
    assert _serve(sched, "cold", pool) == 0


# --------------------------------------------------------------------------- filters


def test_low_queue_filter_fails_open() -> None:
    from infergate.scheduling.plugins.filters import LowQueueFilterParams

    f = LowQueueFilter(LowQueueFilterParams(threshold=5))
    cands = eps({"waiting_queue_size": 5}, {"waiting_queue_size": 6}, {"waiting_queue_size": 0})
    assert [e.meta.name for e in f.filter(REQ, cands, CycleState())] == ["e0", "e2"]
    over = eps({"waiting_queue_size": 9}, {"waiting_queue_size": 7})
    assert [e.meta.name for e in f.filter(REQ, over, CycleState())] == ["e0", "e1"]


def test_lora_affinity_filter_soft_affinity() -> None:
    cands = eps(
        {"running_adapters": ["a"], "max_active_adapters": 2},  # affinity
        {"waiting_adapters": ["a"], "running_adapters": ["b"], "max_active_adapters": 2},  # affinity
        {"running_adapters": ["b"], "max_active_adapters": 2},  # available
        {"running_adapters": ["b", "c"], "max_active_adapters": 2},  # neither
    )
    always = LoraAffinityFilter(LoraAffinityFilterParams(threshold=1.0), rng=random.Random(0))
    never = LoraAffinityFilter(LoraAffinityFilterParams(threshold=0.0), rng=random.Random(0))
    assert [e.meta.name for e in always.filter(lora_req("a"), cands, CycleState())] == ["e0", "e1"]
    assert [e.meta.name for e in never.filter(lora_req("a"), cands, CycleState())] == ["e2"]
    assert [e.meta.name for e in always.filter(lora_req("z"), cands[3:], CycleState())] == ["e3"]
    half = LoraAffinityFilter(LoraAffinityFilterParams(threshold=0.5), rng=random.Random(7))
    picks = Counter(len(half.filter(lora_req("a"), cands, CycleState())) for _ in range(400))
    assert 150 < picks[2] < 250 and picks[1] == 400 - picks[2]


# --------------------------------------------------------------------------- pickers


def scored(*values: float) -> list[ScoredEndpoint]:
    return [ScoredEndpoint(make_endpoint(f"e{i}"), v) for i, v in enumerate(values)]


def test_max_score_picker_orders_and_breaks_ties_randomly_but_seeded() -> None:
    p = MaxScorePicker(rng=random.Random(3))
    out = p.pick(REQ, scored(0.1, 0.9, 0.5, 0.3), CycleState())
    assert [e.meta.name for e in out] == ["e1", "e2", "e3"]  # primary + 2 fallbacks
    ties = scored(1.0, 1.0, 1.0, 0.2)
    firsts = Counter(p.pick(REQ, ties, CycleState())[0].meta.name for _ in range(600))
    assert set(firsts) == {"e0", "e1", "e2"} and min(firsts.values()) > 150
    seq_a = [MaxScorePicker(rng=random.Random(42)).pick(REQ, ties, CycleState())[0].key for _ in range(1)]
    runs = [
        [q.pick(REQ, ties, CycleState())[0].key for _ in range(20)]
        for q in (MaxScorePicker(rng=random.Random(42)), MaxScorePicker(rng=random.Random(42)))
    ]
    assert runs[0] == runs[1] and runs[0][0] == seq_a[0]


def test_random_and_round_robin_pickers() -> None:
    rr = RoundRobinPicker()
    firsts = [rr.pick(REQ, scored(0.9, 0.1, 0.5), CycleState())[0].meta.name for _ in range(6)]
    assert firsts == ["e0", "e1", "e2", "e0", "e1", "e2"]
    assert [e.meta.name for e in rr.pick(REQ, scored(0, 0, 0), CycleState())] == ["e0", "e1", "e2"]
    rp = RandomPicker(rng=random.Random(1))
    counts = Counter(rp.pick(REQ, scored(1.0, 0.0, 0.0), CycleState())[0].meta.name for _ in range(600))
    assert min(counts.values()) > 150  # scores ignored
    assert len(rp.pick(REQ, scored(1, 1), CycleState())) == 2


def test_weighted_random_picker_follows_scores() -> None:
    wp = WeightedRandomPicker(rng=random.Random(5))
    counts = Counter(wp.pick(REQ, scored(3.0, 1.0, 0.0), CycleState())[0].meta.name for _ in range(4000))
    assert counts["e2"] == 0  # zero score never primary while others score > 0
    assert 0.70 < counts["e0"] / 4000 < 0.80  # P = 3/4
    zeros = Counter(wp.pick(REQ, scored(0, 0), CycleState())[0].meta.name for _ in range(400))
    assert min(zeros.values()) > 120  # all zero → random
    assert [e.meta.name for e in wp.pick(REQ, scored(3.0, 1.0, 0.0), CycleState())][2] == "e2"


# --------------------------------------------------------------------------- framework


class FixedScorer:
    """Returns preset (possibly out-of-range) scores to test clamping."""

    def __init__(self, values: dict[str, float]) -> None:
        self.values = values

    def score(
        self, request: object, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> dict[str, float]:
        return {e.key: self.values[e.meta.name] for e in candidates if e.meta.name in self.values}


def registry_with_fixed(values: dict[str, dict[str, float]]) -> PluginRegistry:
    from infergate.scheduling.sdk.framework import NoParams

    reg = default_registry()
    for name, v in values.items():

        def factory(p: NoParams, c: PluginContext, v: dict[str, float] = v) -> FixedScorer:
            return FixedScorer(v)

        reg.register_scorer(name, NoParams, factory)
    return reg


def test_framework_clamps_weights_and_sums() -> None:
    reg = registry_with_fixed(
        {"s-a": {"e0": 1.7, "e1": -0.5, "e2": float("nan")}, "s-b": {"e0": 0.5, "e1": 0.25}}
    )
    cfg = config(("s-a", None, {}, 2.0), ("s-b", None, {}, 4.0), ("max-score-picker", None, {}, None))
    sched = build_scheduler(cfg, registry=reg, rng=random.Random(0))
    res = sched.schedule(REQ, eps({}, {}, {}))
    # e0: 1.0*2 + 0.5*4 = 4; e1: 0*2 + 0.25*4 = 1; e2: nan→0, missing → 0
    assert by_name(res.scores) == {"e0": 4.0, "e1": 1.0, "e2": 0.0}
    assert by_name(res.plugin_scores["s-a"]) == {"e0": 1.0, "e1": 0.0, "e2": 0.0}
    assert by_name(res.plugin_scores["s-b"]) == {"e0": 0.5, "e1": 0.25, "e2": 0.0}
    assert [e.meta.name for e in res.targets] == ["e0", "e1", "e2"]
    assert res.profile == "p" and res.primary.meta.name == "e0"


def test_weights_change_the_winner() -> None:
    cands = eps(
        {"waiting_queue_size": 0, "kv_cache_usage": 0.9}, {"waiting_queue_size": 4, "kv_cache_usage": 0.0}
    )
    queue_heavy = config(("queue-scorer", None, {}, 5.0), ("kv-cache-utilization-scorer", None, {}, 1.0))
    kv_heavy = config(("queue-scorer", None, {}, 1.0), ("kv-cache-utilization-scorer", None, {}, 5.0))
    assert build_scheduler(queue_heavy).schedule(REQ, cands).primary.meta.name == "e0"
    assert build_scheduler(kv_heavy).schedule(REQ, cands).primary.meta.name == "e1"


def test_no_candidates_or_all_filtered_raise_no_capacity() -> None:
    class DropAll:
        def filter(
            self, request: object, candidates: Sequence[Endpoint], state: CycleState, /
        ) -> list[Endpoint]:
            return []

    from infergate.scheduling.sdk.framework import NoParams

    reg = default_registry()
    reg.register_filter("drop-all", NoParams, lambda p, c: DropAll())
    sched = build_scheduler(config(("drop-all", None, {}, None)), registry=reg)
    with pytest.raises(NoCapacityError, match="drop-all"):
        sched.schedule(REQ, eps({}))
    with pytest.raises(NoCapacityError):
        sched.schedule(REQ, [])


def metric_samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client import generate_latest

    text = generate_latest(registry).decode()
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def test_timing_recorded_per_plugin_and_e2e() -> None:
    reg = CollectorRegistry()
    metrics = GatewayMetrics(reg)
    sched = build_scheduler(reference_picker_config(lora=True), metrics=metrics, rng=random.Random(1))
    cands = eps({"waiting_queue_size": 1}, {"waiting_queue_size": 2})
    for _ in range(3):
        sched.schedule(InferenceRequest(request_id="x", model="m", target_model="m", prompt="p" * 200), cands)
    with pytest.raises(NoCapacityError):
        sched.schedule(REQ, [])
    samples = metric_samples(reg)
    counts = {
        (lbl["extension_point"], lbl["plugin_type"], lbl["plugin_name"]): v
        for name, lbl, v in samples
        if name == "inference_extension_plugin_duration_seconds_count"
    }
    assert counts[("Scorer", "queue-scorer", "queue-scorer")] == 3
    assert counts[("Scorer", "kv-cache-utilization-scorer", "kv-cache-utilization-scorer")] == 3
    assert counts[("Scorer", "prefix-cache-scorer", "prefix-cache-scorer")] == 3
    assert counts[("Scorer", "lora-affinity-scorer", "lora-affinity-scorer")] == 3
    assert counts[("Picker", "max-score-picker", "max-score-picker")] == 3
    assert counts[("PostPick", "prefix-cache-scorer", "prefix-cache-scorer")] == 3
    e2e = [v for n, _, v in samples if n == "inference_extension_scheduler_e2e_duration_seconds_count"]
    assert e2e == [4.0]
    attempts = {
        lbl["status"]: v for n, lbl, v in samples if n == "inference_extension_scheduler_attempts_total"
    }
    assert attempts == {"success": 3.0, "failure": 1.0}
    size = [v for n, _, v in samples if n == "inference_extension_prefix_indexer_size"]
    assert size == [3.0]  # 200 chars → 3 blocks of 64 bytes, all picks stick to the same primary
    # llm-d's twins name the plugin keeping the index; the matched prefix in bytes: nothing on
    # the first pick, all 3 blocks (192 bytes) on the next two
    plugin = {"plugin_name": "prefix-cache-scorer", "plugin_type": "prefix-cache-scorer"}
    assert [lbl for n, lbl, _ in samples if n == "llm_d_epp_prefix_indexer_size"] == [plugin]
    hit_bytes = {lbl["le"]: v for n, lbl, v in samples if n == "llm_d_epp_prefix_indexer_hit_bytes_bucket"}
    assert (hit_bytes["0.0"], hit_bytes["128.0"], hit_bytes["256.0"]) == (1.0, 1.0, 3.0)
    total = [v for n, _, v in samples if n == "inference_extension_prefix_indexer_hit_bytes_sum"]
    assert total == [384.0]


# --------------------------------------------------------------------------- config


GIE_STYLE = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
  parameters: {autoTune: false, blockSizeTokens: 4, maxPrefixBlocksToMatch: 8, lruCapacityPerServer: 100}
- type: lora-affinity-scorer
  name: lora
  parameters: {baseModels: [base]}
- type: utilization-detector
  parameters: {queueDepthThreshold: 5, kvCacheUtilThreshold: 0.8}
- type: single-profile-handler
- type: weighted-random-picker
  parameters: {maxNumOfEndpoints: 2}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: prefix-cache-scorer, weight: 3}
  - {pluginRef: lora}
  - {pluginRef: weighted-random-picker}
"""


def test_build_from_reference_yaml(tmp_path: Path) -> None:
    path = tmp_path / "epp.yaml"
    path.write_text(GIE_STYLE)
    sched = build_scheduler(load_picker_config(path), rng=random.Random(0))
    prof = sched.profile
    assert [(s.name, s.type, s.weight) for s in prof.scorers] == [
        ("queue-scorer", "queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", "kv-cache-utilization-scorer", 2.0),
        ("prefix-cache-scorer", "prefix-cache-scorer", 3.0),
        ("lora", "lora-affinity-scorer", 1.0),  # weight defaults to 1.0
    ]
    assert prof.picker.type == "weighted-random-picker"
    assert [h.name for h in prof.post_picks] == ["prefix-cache-scorer"]
    res = sched.schedule(REQ, eps({}, {}, {}))
    assert len(res.targets) == 2  # maxNumOfEndpoints honoured


def test_reference_config_builds_reference_profile() -> None:
    sched = build_scheduler(reference_picker_config(lora=False))
    assert [(s.type, s.weight) for s in sched.profile.scorers] == [
        ("queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", 2.0),
        ("prefix-cache-scorer", 3.0),
    ]
    assert sched.profile.picker.type == "max-score-picker"


def test_no_profile_and_no_picker_defaults() -> None:
    cfg = parse_picker_config("plugins: [{type: queue-scorer}, {type: low-queue-filter}]")
    sched = build_scheduler(cfg)
    assert [s.type for s in sched.profile.scorers] == ["queue-scorer"]
    assert [f.type for f in sched.profile.filters] == ["low-queue-filter"]
    assert sched.profile.picker.type == "max-score-picker"  # injected


@pytest.mark.parametrize(
    ("plugins", "profiles", "match"),
    [
        ([PluginSpec(type="no-such-scorer")], [], r"plugin 'no-such-scorer': unknown type"),
        (
            [PluginSpec(type="prefix-cache-scorer", parameters={"blockSizeTokens": -1})],
            [],
            r"plugin 'prefix-cache-scorer' \(type prefix-cache-scorer\): parameters.blockSizeTokens",
        ),
        (
            [PluginSpec(type="prefix-cache-scorer", name="pfx", parameters={"blockSize": 64})],
            [],
            r"plugin 'pfx'.*blockSizeTokens",
        ),
        (
            [PluginSpec(type="queue-scorer", parameters={"threshold": 1})],
            [],
            r"plugin 'queue-scorer'.*parameters.threshold",
        ),
        (
            [PluginSpec(type="max-score-picker"), PluginSpec(type="random-picker")],
            [
                ProfileSpec(
                    name="x",
                    plugins=[PluginRef(plugin_ref="max-score-picker"), PluginRef(plugin_ref="random-picker")],
                )
            ],
            r"more than one picker",
        ),
        (
            [PluginSpec(type="queue-scorer")],
            [ProfileSpec(name="a"), ProfileSpec(name="b")],
            r"need a profile handler",
        ),
    ],
)
def test_config_errors_name_the_plugin(
    plugins: list[PluginSpec], profiles: list[ProfileSpec], match: str
) -> None:
    cfg = EndpointPickerConfig(plugins=plugins, scheduling_profiles=profiles)
    with pytest.raises(ConfigError, match=match):
        build_scheduler(cfg)


def test_registry_rejects_double_registration_and_lists_types() -> None:
    reg = default_registry()
    assert {"queue-scorer", "prefix-cache-scorer", "max-score-picker", "least-in-flight-scorer"} <= set(
        reg.types()
    )
    from infergate.scheduling.sdk.framework import NoParams

    with pytest.raises(ValueError):
        reg.register_scorer("queue-scorer", NoParams, lambda p, c: QueueScorer())
    plugin = reg.create("random-picker", "rp", {"maxNumOfEndpoints": 1}, PluginContext())
    assert isinstance(plugin, RandomPicker)


# --------------------------------------------------------------------------- properties, integration


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 50), st.floats(0, 1), st.integers(0, 20)), min_size=1, max_size=12),
    st.floats(0, 5),
    st.floats(0, 5),
    st.floats(0, 5),
)
def test_totals_follow_the_formula_and_primary_is_best(
    rows: list[tuple[int, float, int]], wq: float, wkv: float, wf: float
) -> None:
    cands = [
        make_endpoint(f"e{i}", waiting_queue_size=q, kv_cache_usage=kv, in_flight=f)
        for i, (q, kv, f) in enumerate(rows)
    ]
    cfg = config(
        ("queue-scorer", None, {}, wq),
        ("kv-cache-utilization-scorer", None, {}, wkv),
        ("least-in-flight-scorer", None, {}, wf),
    )
    res = build_scheduler(cfg, rng=random.Random(0)).schedule(REQ, cands)

    def minmax(vals: list[float]) -> list[float]:
        lo, hi = min(vals), max(vals)
        return [1.0] * len(vals) if hi == lo else [(hi - v) / (hi - lo) for v in vals]

    q = minmax([float(r[0]) for r in rows])
    f = minmax([float(r[2]) for r in rows])
    for i, e in enumerate(cands):
        expected = wq * q[i] + wkv * (1 - rows[i][1]) + wf * f[i]
        assert res.scores[e.key] == pytest.approx(expected)
    assert res.scores[res.primary.key] == pytest.approx(max(res.scores.values()))
    assert len(res.targets) == min(3, len(cands)) and len({t.key for t in res.targets}) == len(res.targets)


def test_in_flight_from_datastore_spreads_a_burst_between_scrapes() -> None:
    from infergate.datastore import Datastore
    from infergate.types import EndpointMeta, EndpointMetrics

    class Clock:
        def now(self) -> float:
            return 50.0

    ds = Datastore(Clock(), staleness=2.0)
    for i in range(3):
        meta = EndpointMeta(name=f"p{i}", address="127.0.0.1", port=9000 + i)
        ds.upsert_endpoint(meta)
        ds.update_metrics(meta.key, EndpointMetrics(updated_at=50.0))  # identical, frozen metrics
    sched = build_scheduler(
        config(("queue-scorer", None, {}, 2.0), ("least-in-flight-scorer", None, {}, 1.0)),
        rng=random.Random(2),
    )
    for _ in range(9):
        ds.acquire(sched.schedule(REQ, ds.candidates()).primary.key)
    assert sorted(e.in_flight for e in ds.endpoints()) == [3, 3, 3]
