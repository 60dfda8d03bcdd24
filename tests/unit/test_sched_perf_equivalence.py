"""The fast scheduling path computes exactly what the plain per-candidate algorithm computes.

The profile works on position-aligned float lists and the max-score picker avoids a full sort;
these tests hold them to straightforward reference implementations (a dict per scorer, a running
total per key, "stable sort descending, shuffle tied groups, take k") bit for bit, with ties,
out-of-range and NaN scores, sparse and foreign keys, and every scorer count.
"""

from __future__ import annotations

import gc
import math
import random
from collections.abc import Mapping, Sequence

import pytest

from infergate.config.picker import EndpointPickerConfig, PluginRef, PluginSpec, ProfileSpec
from infergate.scheduling import CycleState, build_scheduler, default_registry
from infergate.scheduling.engine.decisions import DecisionLog
from infergate.scheduling.plugins.pickers import MaxScorePicker, PickerParams, top_positions
from infergate.scheduling.plugins.prefix import PrefixIndex
from infergate.scheduling.plugins.scorers import QueueScorer, min_max_low_is_best
from infergate.scheduling.sdk.framework import NoParams, candidate_keys
from infergate.scheduling.sdk.scores import CandidateScores, ScoredCandidates, split_scored
from infergate.scheduling.sdk.testing import make_endpoint
from infergate.types import Endpoint, InferenceRequest, ScoredEndpoint

REQ = InferenceRequest(request_id="r", model="m", target_model="m", prompt="p" * 300)


def endpoints(n: int, rng: random.Random) -> list[Endpoint]:
    return [
        make_endpoint(
            f"e{i}",
            address=f"10.0.{i // 250}.{i % 250}",
            waiting_queue_size=rng.choice([0, 0, 3, 7]),
            kv_cache_usage=rng.choice([0.0, 0.5, rng.random()]),
        )
        for i in range(n)
    ]


# --------------------------------------------------------------------------- reference algorithms


def reference_pick(scored: Sequence[ScoredEndpoint], k: int, rng: random.Random) -> list[Endpoint]:
    """The original max-score picker: full stable sort, shuffle each tied group reaching the top k."""
    items = sorted(scored, key=lambda s: s.score, reverse=True)
    out: list[Endpoint] = []
    i, n = 0, len(items)
    while i < n and len(out) < k:
        j = i + 1
        while j < n and items[j].score == items[i].score:
            j += 1
        group = items[i:j]
        if len(group) > 1:
            rng.shuffle(group)
        out.extend(s.endpoint for s in group[: k - len(out)])
        i = j
    return out


def clamp(v: float) -> float:
    return 1.0 if v > 1.0 else v if v >= 0.0 else 0.0


def reference_totals(
    keys: list[str], raws: list[Mapping[str, float]], weights: list[float]
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """The original profile: a dict per scorer, a running total per key from 0.0, in scorer order."""
    totals = dict.fromkeys(keys, 0.0)
    per: list[dict[str, float]] = []
    for raw, w in zip(raws, weights, strict=True):
        clamped = dict.fromkeys(keys, 0.0)
        for key, v in raw.items():
            if key in clamped:
                v = v if 0.0 <= v <= 1.0 else clamp(v)
                clamped[key] = v
                totals[key] += v * w
        per.append(clamped)
    return totals, per


# --------------------------------------------------------------------------- picker


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_top_positions_matches_sort_and_shuffle_with_the_same_rng(k: int) -> None:
    rng = random.Random(7)
    eps = endpoints(40, rng)
    for trial in range(300):
        n = rng.choice([1, 2, 3, 4, 10, 40])
        levels = rng.choice([[0.0], [0.0, 1.0], [0.5, 1.5, 2.5, 7.0], [rng.random() for _ in range(40)]])
        scores = [rng.choice(levels) for _ in range(n)]
        scored = [ScoredEndpoint(e, s) for e, s in zip(eps, scores, strict=False)]
        expected = reference_pick(scored, k, random.Random(trial))
        fast = ScoredCandidates(eps[:n], scores)
        picker = MaxScorePicker(PickerParams(max_num_of_endpoints=k), rng=random.Random(trial))
        assert picker.pick(REQ, fast, CycleState()) == expected
        picker = MaxScorePicker(PickerParams(max_num_of_endpoints=k), rng=random.Random(trial))
        assert picker.pick(REQ, scored, CycleState()) == expected  # plain list of ScoredEndpoint
        got = [eps[i] for i in top_positions(scores, k, random.Random(trial))]
        assert got == expected


def test_top_positions_edge_cases() -> None:
    rng = random.Random(0)
    assert top_positions([], 3, rng) == []
    assert top_positions([0.3], 3, rng) == [0]
    assert top_positions([1, 3, 2], 3, rng) == [1, 2, 0]  # ints work too
    assert top_positions([0.0, 2.0, 1.0, 2.0], 2, random.Random(5)) in ([1, 3], [3, 1])
    firsts = {top_positions([1.0] * 5, 1, rng)[0] for _ in range(200)}
    assert firsts == {0, 1, 2, 3, 4}  # ties broken at random


# --------------------------------------------------------------------------- containers


def test_candidate_scores_is_a_read_only_mapping() -> None:
    s = CandidateScores(["a:1", "b:1"], [0.5, 1.0])
    plain = {"a:1": 0.5, "b:1": 1.0}
    assert s == plain and plain.__eq__(s) is NotImplemented and dict(s) == plain
    assert s != {"a:1": 0.5}
    assert list(s) == ["a:1", "b:1"] and len(s) == 2 and "b:1" in s and "c:1" not in s
    assert s["a:1"] == 0.5 and s.get("c:1", 0.0) == 0.0 and s.get("c:1") is None
    assert dict(s.items()) == {"a:1": 0.5, "b:1": 1.0} and list(s.values()) == [0.5, 1.0]
    assert "a:1" in repr(s)
    with pytest.raises(KeyError):
        s["c:1"]
    with pytest.raises(ValueError, match="2 keys but 1 values"):
        CandidateScores(["a", "b"], [1.0])


def test_scored_candidates_is_a_sequence_of_scored_endpoints() -> None:
    eps = endpoints(3, random.Random(1))
    sc = ScoredCandidates(eps, [0.1, 0.2, 0.3])
    assert len(sc) == 3 and sc[1] == ScoredEndpoint(eps[1], 0.2) and sc[-1].score == 0.3
    assert sc[:2] == [ScoredEndpoint(eps[0], 0.1), ScoredEndpoint(eps[1], 0.2)]
    assert list(sc) == [ScoredEndpoint(e, s) for e, s in zip(eps, [0.1, 0.2, 0.3], strict=True)]
    assert split_scored(sc) == (eps, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="3 endpoints but 1 scores"):
        ScoredCandidates(eps, [1.0])


def test_min_max_helper_flags_nan_for_clamping() -> None:
    eps = endpoints(3, random.Random(2))
    out = min_max_low_is_best(eps, lambda e: {"e0": 1.0, "e1": math.nan, "e2": 3.0}[e.meta.name])
    assert not out.bounded
    assert QueueScorer().score(REQ, eps, CycleState()).bounded


# --------------------------------------------------------------------------- profile totals


class ListScorer:
    """Returns the next preset mapping (dense CandidateScores or a sparse dict) each call."""

    def __init__(self) -> None:
        self.outputs: list[Mapping[str, float]] = []

    def score(
        self, request: object, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Mapping[str, float]:
        return self.outputs.pop(0)


def _config(names: list[str], weights: list[float]) -> EndpointPickerConfig:
    specs = [PluginSpec(type=n, name=n) for n in names] + [PluginSpec(type="max-score-picker")]
    refs = [PluginRef(plugin_ref=n, weight=w) for n, w in zip(names, weights, strict=True)]
    return EndpointPickerConfig(
        plugins=specs,
        scheduling_profiles=[
            ProfileSpec(name="p", plugins=[*refs, PluginRef(plugin_ref="max-score-picker")])
        ],
    )


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 6])
def test_profile_totals_are_bit_identical_to_per_key_sums(count: int) -> None:
    rng = random.Random(count)
    names = [f"s{i}" for i in range(count)]
    instances = {n: ListScorer() for n in names}
    reg = default_registry()
    for n in names:
        reg.register_scorer(n, NoParams, lambda p, c, n=n: instances[n])  # type: ignore[misc]
    for trial in range(60):
        weights = [rng.choice([0.0, 1.0, 2.0, 3.0, 0.7]) for _ in names]
        sched = build_scheduler(_config(names, weights), registry=reg, rng=random.Random(trial))
        eps = endpoints(rng.choice([1, 3, 20, 60]), rng)
        keys = [e.key for e in eps]
        raws: list[Mapping[str, float]] = []
        for n in names:
            kind = rng.choice(["dense", "dense-bad", "sparse-few", "sparse-many", "empty"])
            if kind.startswith("dense"):
                bad = [1.5, -0.2, math.nan, math.inf] if kind == "dense-bad" else []
                values = [rng.choice([rng.random(), 0.0, 1.0, *bad]) for _ in keys]
                raw: Mapping[str, float] = dict(zip(keys, values, strict=True))
                # the profile only trusts a CandidateScores over its own key list; this one is not
                instances[n].outputs.append(CandidateScores(list(keys), values))
            else:
                pick = rng.sample(keys, min(len(keys), 2 if kind == "sparse-few" else 15))
                raw = {k: rng.choice([rng.random(), 2.0, -1.0, math.nan]) for k in pick}
                if kind == "empty":
                    raw = {}
                raw = {**raw, "foreign:1": 0.9}  # not a candidate: ignored
                instances[n].outputs.append(raw)
            raws.append(raw)
        res = sched.schedule(REQ, eps)
        totals, per = reference_totals(keys, raws, weights)
        assert list(res.scores.items()) == list(totals.items())
        for n, expected in zip(names, per, strict=True):
            assert list(res.plugin_scores[n].items()) == list(expected.items())
        best = max(totals.values())
        assert totals[res.primary.key] == best


@pytest.mark.parametrize("load_aware", [False, True])
def test_builtin_scorers_take_the_dense_path_and_records_stay_plain(load_aware: bool) -> None:
    """The reference profile's four scorers (with the reference or the load-aware affinity
    formulas) return dense scores over the cycle's own key tuple, and the log keeps plain dicts."""
    from infergate.config.picker import reference_picker_config

    cfg = reference_picker_config(lora=True)
    if load_aware:
        affinity = ("prefix-cache-scorer", "lora-affinity-scorer")
        plugins = [
            p.model_copy(update={"parameters": {**p.parameters, "loadAware": True}})
            if p.type in affinity
            else p
            for p in cfg.plugins
        ]
        cfg = cfg.model_copy(update={"plugins": plugins})
    log = DecisionLog()
    sched = build_scheduler(cfg, rng=random.Random(0), decision_log=log)
    eps = endpoints(30, random.Random(3))
    sched.schedule(REQ, eps)  # credits the primary with REQ's prefix: the next cycle matches it
    res = sched.schedule(REQ, eps)
    assert isinstance(res.scores, CandidateScores)
    assert list(res.scores) == [e.key for e in eps]
    assert set(res.plugin_scores) == {
        "queue-scorer",
        "kv-cache-utilization-scorer",
        "prefix-cache-scorer",
        "lora-affinity-scorer",
    }
    state = CycleState()
    keys = candidate_keys(eps, state)
    for name in ("queue-scorer", "kv-cache-utilization-scorer", "lora-affinity-scorer"):
        raw = sched.plugin(name).score(REQ, eps, state)  # type: ignore[attr-defined]
        assert isinstance(raw, CandidateScores) and raw.key_seq is keys
    prefix = sched.plugin("prefix-cache-scorer").score(REQ, eps, state)  # type: ignore[attr-defined]
    if load_aware:  # one score per candidate, in candidate order
        assert isinstance(prefix, CandidateScores) and prefix.key_seq is keys
    else:  # sparse: only the endpoint first credited with the prefix
        assert len(prefix) == 1 and set(prefix.values()) == {1.0}
    rec, _ = log.recent()  # newest first
    assert type(rec["scores"]) is dict and list(rec["scores"]) == [e.key for e in eps]
    assert all(type(v) is dict for v in rec["plugin_scores"].values())
    assert rec["endpoint"] == res.primary.key and rec["fallbacks"] == [t.key for t in res.targets[1:]]


def test_prefix_index_entries_do_not_load_the_garbage_collector() -> None:
    idx = PrefixIndex()
    idx.add("a:1", list(range(100)), 1000)
    idx.add("b:1", list(range(50)), 1000)
    assert idx.match(list(range(10))) == {"a:1": 10, "b:1": 10}
    assert not any(gc.is_tracked(v) for v in idx._servers.values())
    idx.remove_server("a:1")
    assert idx.match(list(range(60))) == {"b:1": 50}


def test_kept_results_hold_no_gc_tracked_score_containers() -> None:
    """The live view keeps 200 results; their score columns must not add to GC pauses."""
    from infergate.config.picker import default_picker_config

    sched = build_scheduler(default_picker_config(lora=True), rng=random.Random(0))
    res = sched.schedule(REQ, endpoints(50, random.Random(4)))
    gc.collect()
    assert isinstance(res.scores, CandidateScores)
    containers = [res.scores.key_seq, res.scores.value_seq]
    for per in res.plugin_scores.values():
        assert isinstance(per, CandidateScores)
        containers.append(per.value_seq)
    assert not any(gc.is_tracked(c) for c in containers)


@pytest.mark.parametrize("weight", [-1.0, math.inf, math.nan])
def test_programmatic_configs_cannot_bring_non_finite_weights(weight: float) -> None:
    from infergate.errors import ConfigError

    cfg = EndpointPickerConfig.model_construct(
        plugins=[PluginSpec(type="queue-scorer")],
        scheduling_profiles=[
            ProfileSpec.model_construct(
                name="p", plugins=[PluginRef.model_construct(plugin_ref="queue-scorer", weight=weight)]
            )
        ],
    )
    with pytest.raises(ConfigError, match="weight must be a finite number >= 0"):
        build_scheduler(cfg)
