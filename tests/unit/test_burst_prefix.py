"""``burst-prefix-cache-producer``'s joint assignment (upstream's ``assign_test.go`` cases, in our
own words), its prefix hashes, parameters and scorer, and the config fold that turns the
reference's ``prefix-cache-scorer`` naming it into infergate's scorer."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest

from infergate.config.picker import parse_picker_config
from infergate.errors import ConfigError
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.scheduling.plugins.burst_prefix import (
    UNLIMITED,
    BurstAssignments,
    BurstPrefixParams,
    BurstPrefixProducer,
    BurstPrefixScorer,
    BurstScorerParams,
    assign,
    prefix_hashes,
)
from infergate.scheduling.sdk.framework import CycleState
from infergate.scheduling.sdk.testing import make_endpoint
from infergate.types import Endpoint, InferenceRequest


def pods(n: int) -> list[Endpoint]:
    return [make_endpoint(f"pod{i}") for i in range(1, n + 1)]


def name(key: str | None) -> str | None:
    return None if key is None else key.split(":")[0]


def run(
    units: Sequence[tuple[int, Sequence[int]]],
    replicas: int | list[Endpoint],
    *,
    k: int = UNLIMITED,
    min_colocate: int = 0,
    by_tokens: bool = False,
) -> list[list[str | None]]:
    """Assign ``count`` requests of each prefix, in order; per unit, the pods its requests went to."""
    hashes: list[Sequence[int]] = [prefix for count, prefix in units for _ in range(count)]
    eps = pods(replicas) if isinstance(replicas, int) else replicas
    out = assign(hashes, eps, max_per_replica=k, min_colocate_blocks=min_colocate, by_tokens=by_tokens)
    names = [name(key) for key in out]
    result, i = [], 0
    for count, _ in units:
        result.append(names[i : i + count])
        i += count
    return result


def spread(groups: list[list[str | None]]) -> dict[str | None, int]:
    return dict(Counter(p for g in groups for p in g))


# ----------------------------------------------------------------------------- assignment


def test_a_whole_group_goes_to_one_replica_without_a_cap() -> None:
    [group] = run([(8, [1, 2, 3])], 4)
    assert group == ["pod1"] * 8


def test_a_cap_fills_one_replica_before_the_next() -> None:
    assert spread(run([(8, [1, 2, 3])], 4, k=4)) == {"pod1": 4, "pod2": 4}
    assert spread(run([(8, [1, 2, 3])], 4, k=2)) == {"pod1": 2, "pod2": 2, "pod3": 2, "pod4": 2}
    assert spread(run([(8, [1, 2, 3])], 4, k=3)) == {"pod1": 3, "pod2": 3, "pod3": 2}


def test_members_beyond_cap_times_replicas_are_still_placed_evenly() -> None:
    assert spread(run([(8, [1, 2, 3])], 2, k=2)) == {"pod1": 4, "pod2": 4}


def test_a_single_request_or_an_empty_prompt_gets_no_affinity() -> None:
    assert run([(1, [1, 2, 3])], 2) == [[None]]
    assert run([(2, [])], 2) == [[None, None]]
    assert run([(2, [1])], []) == [[None, None]]


def test_distinct_groups_land_on_different_replicas() -> None:
    a, b = run([(8, [1, 2, 3]), (8, [9, 9, 9])], 4)
    assert a == ["pod1"] * 8 and b == ["pod2"] * 8


def test_ties_go_to_the_replica_with_fewer_requests() -> None:
    busy, idle = make_endpoint("pod1", in_flight=3), make_endpoint("pod2", running_requests=1)
    [group] = run([(2, [1, 2])], [busy, idle])
    assert group == ["pod2", "pod2"]


def test_groups_sharing_a_prefix_colocate_within_the_fair_share() -> None:
    x1, x2, y1, y2 = run([(2, [1, 2, 3]), (2, [1, 2, 4]), (2, [7, 8, 5]), (2, [7, 8, 6])], 2, min_colocate=2)
    assert x1[0] == x2[0] and y1[0] == y2[0] and x1[0] != y1[0]
    assert spread([x1, x2, y1, y2]) == {"pod1": 4, "pod2": 4}


def test_the_fair_share_stops_prefix_sharing_groups_from_stampeding() -> None:
    groups = run([(2, [1, 2, 3]), (2, [1, 2, 4]), (2, [1, 2, 5]), (2, [1, 2, 6])], 4, min_colocate=2)
    assert spread(groups) == {"pod1": 2, "pod2": 2, "pod3": 2, "pod4": 2}


def test_a_single_request_attaches_to_the_group_it_overlaps() -> None:
    gx, sx, gy, sy = run([(2, [1, 2, 3]), (1, [1, 2, 8]), (2, [7, 8, 5]), (1, [7, 8, 9])], 2, min_colocate=2)
    assert gx[0] == gx[1] == sx[0]
    assert gy[0] == sy[0]
    assert spread([gx, sx, gy, sy]) == {"pod1": 3, "pod2": 3}


def test_a_single_request_overlapping_nothing_gets_no_affinity() -> None:
    group, lone = run([(2, [1, 2, 3]), (1, [5, 5, 5])], 2, min_colocate=2)
    assert lone == [None] and group[0] == group[1]


def test_overlapping_single_requests_colocate_without_any_group() -> None:
    groups = run([(1, [1, 2, 3]), (1, [1, 2, 4]), (1, [1, 2, 5]), (1, [1, 2, 6])], 2, min_colocate=2)
    assert None not in spread(groups)
    assert spread(groups) == {"pod1": 2, "pod2": 2}


def test_a_shared_prefix_below_the_threshold_does_not_colocate() -> None:
    x1, x2, y1, y2 = run([(2, [1, 2, 3]), (2, [1, 2, 4]), (2, [7, 8, 5]), (2, [7, 8, 6])], 2, min_colocate=3)
    assert x1[0] != x2[0]
    assert spread([x1, x2, y1, y2]) == {"pod1": 4, "pod2": 4}


def test_a_single_replica_takes_everything() -> None:
    groups = run([(4, [1, 2, 3]), (4, [9, 9, 9])], 1, min_colocate=2)
    assert spread(groups) == {"pod1": 8}


def test_balancing_by_tokens_keeps_a_long_prefix_alone() -> None:
    long, _, short2 = run([(2, [1, 2, 3, 4]), (2, [5]), (2, [6])], 2)
    assert long[0] == short2[0]  # by requests: a short unit joins the long one
    long, short1, short2 = run([(2, [1, 2, 3, 4]), (2, [5]), (2, [6])], 2, by_tokens=True)
    assert long[0] != short1[0] and short1[0] == short2[0]


def test_balancing_by_tokens_charges_a_shared_prefix_once() -> None:
    base = list(range(1, 10))
    a1, a2, a3 = run(
        [(2, [*base, 10]), (2, [*base, 11]), (2, [*base, 12])], 2, min_colocate=9, by_tokens=True
    )
    assert a1[0] == a2[0] == a3[0]


def test_longer_units_are_placed_first() -> None:
    # the later, longer group is placed first and takes the first replica
    short, long = run([(2, [1]), (2, [5, 6, 7])], 2)
    assert long == ["pod1", "pod1"] and short == ["pod2", "pod2"]


# ----------------------------------------------------------------------------- hashes


def request(
    prompt: str = "", ids: tuple[int, ...] | None = None, model: str = "m", **kw: object
) -> InferenceRequest:
    return InferenceRequest(
        request_id=str(kw.pop("rid", "r")),
        model=model,
        target_model=model,
        prompt=prompt,
        prompt_token_ids=ids,
        **kw,  # type: ignore[arg-type]
    )


def test_hashes_are_chained_per_block_of_token_ids_with_the_partial_tail() -> None:
    ids = tuple(range(10))
    h = prefix_hashes(request(ids=ids), 4, 100)
    assert len(h) == 3  # 4 + 4 + 2
    assert prefix_hashes(request(ids=(*ids[:8], 99, 98)), 4, 100)[:2] == h[:2]
    assert prefix_hashes(request(ids=(*ids[:8], 99, 98)), 4, 100)[2] != h[2]
    assert prefix_hashes(request(ids=(7, *ids[1:])), 4, 100)[2] != h[2]  # a block stands for its prefix
    assert len(prefix_hashes(request(ids=ids), 4, 2)) == 2
    assert prefix_hashes(request(ids=ids, model="other"), 4, 100) != h
    salted = request(ids=ids, body={"cache_salt": "s"})
    assert prefix_hashes(salted, 4, 100) != h


def test_without_token_ids_the_prompt_text_is_hashed() -> None:
    text = prefix_hashes(request("x" * 20), 2, 100)  # blocks of 2 tokens x 4 bytes
    assert len(text) == 3
    assert prefix_hashes(request("x" * 20), 2, 100) == text
    assert prefix_hashes(request(""), 2, 100) == []
    assert prefix_hashes(request("x" * 20, ids=(1, 2)), 2, 100) != text


def test_the_parameters_are_upstreams() -> None:
    p = BurstPrefixParams()
    assert (p.window_duration_ms, p.max_per_replica, p.block_size_tokens, p.max_batch_size) == (
        100,
        -1,
        64,
        1000,
    )
    assert p.max_blocks == 2048 and not p.by_tokens
    assert BurstPrefixParams(max_prefix_tokens_to_match=256).max_blocks == 4
    assert BurstPrefixParams(balance_by="tokens").by_tokens
    bad = [
        {"windowDurationMs": 0},
        {"windowDurationMs": 10_001},
        {"maxPerReplica": 0},
        {"maxBatchSize": -2},
        {"blockSizeTokens": 0},
        {"maxPrefixTokensToMatch": 10},
        {"minColocateBlocks": -1},
        {"balanceBy": "bytes"},
        {"window": 5},
    ]
    for fields in bad:
        with pytest.raises(ValueError):
            BurstPrefixParams.model_validate(fields)


# ----------------------------------------------------------------------------- scorer


def test_the_scorer_gives_the_assigned_candidate_one_and_the_rest_nothing() -> None:
    producer = BurstPrefixProducer()
    scorer = BurstPrefixScorer(BurstScorerParams(prefix_match_info_producer_name="burst"))
    scorer.bind_plugins({"burst": (producer, "burst-prefix-cache-producer")})
    eps = pods(3)
    r, other = request(rid="a"), request(rid="b")
    assert scorer.score(r, eps, CycleState()) == {}
    producer.assignments.start_window()
    producer.assignments.record(r, eps[1].key)
    assert scorer.score(r, eps, CycleState()) == {eps[1].key: 1.0}
    assert scorer.score(other, eps, CycleState()) == {}
    # the same id on another request object (a client reusing x-request-id) is not assigned
    assert scorer.score(request(rid="a"), eps, CycleState()) == {}
    assert scorer.score(r, [eps[0], eps[2]], CycleState()) == {}  # the assigned one is gone


def test_assignments_last_two_windows() -> None:
    a = BurstAssignments()
    r = request(rid="a")
    a.start_window()
    a.record(r, "k")
    a.start_window()
    assert a.target(r) == "k"
    a.start_window()
    assert a.target(r) is None and len(a) == 0


def test_the_scorer_needs_its_producer() -> None:
    scorer = BurstPrefixScorer(BurstScorerParams(prefix_match_info_producer_name="burst"))
    with pytest.raises(ValueError, match="names no burst-prefix-cache-producer"):
        scorer.bind_plugins({"burst": (object(), "queue-scorer")})


# ----------------------------------------------------------------------------- config


def config(
    producer: str = "", scorer: str = "prefixMatchInfoProducerName: burst-prefix-cache-producer"
) -> str:
    return f"""
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: burst-prefix-cache-producer
  {producer}
- type: prefix-cache-scorer
  parameters:
    {scorer}
- type: max-score-picker
"""


def test_the_prefix_cache_scorer_naming_the_producer_becomes_the_burst_scorer() -> None:
    cfg = parse_picker_config(config("parameters: {maxPerReplica: 3, balanceBy: tokens}"))
    types = {p.ref: p.type for p in cfg.plugins}
    assert types["prefix-cache-scorer"] == "burst-prefix-cache-scorer"
    # no profile given: the producer is no stage of the default one
    assert [r.plugin_ref for r in cfg.scheduling_profiles[0].plugins] == [
        "prefix-cache-scorer",
        "max-score-picker",
    ]
    sched = build_scheduler(cfg)
    producer = sched.plugin("burst-prefix-cache-producer")
    assert isinstance(producer, BurstPrefixProducer)
    assert producer.params.max_per_replica == 3 and producer.params.by_tokens
    assert isinstance(sched.plugin("prefix-cache-scorer"), BurstPrefixScorer)


def test_what_the_burst_pipeline_would_ignore_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"parameters.blockSizeTokens: a prefix-cache-scorer reading"):
        parse_picker_config(
            config(scorer="{prefixMatchInfoProducerName: burst-prefix-cache-producer, blockSizeTokens: 8}")
        )
    with pytest.raises(
        ConfigError, match=r"plugins\[burst-prefix-cache-producer\]: .* no prefix-cache-scorer names"
    ):
        parse_picker_config(config(scorer="blockSizeTokens: 8"))
    with pytest.raises(ConfigError, match=r"parameters\.maxPerReplica"):
        build_scheduler(parse_picker_config(config("parameters: {maxPerReplica: 0}")))
    two = config() + "- type: burst-prefix-cache-producer\n  name: second\n"
    with pytest.raises(ConfigError, match="several burst-prefix-cache-producer plugins"):
        parse_picker_config(two)
