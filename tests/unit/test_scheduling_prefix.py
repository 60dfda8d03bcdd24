"""Approximate prefix-cache scorer and its index: hashing, affinity, LRU and memory bounds, purge."""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from itertools import takewhile

import pytest

from infergate.config.picker import EndpointPickerConfig, PluginRef, PluginSpec, ProfileSpec
from infergate.scheduling import CycleState, build_scheduler
from infergate.scheduling.plugins.prefix import (
    PREFIX_MATCH,
    HolderSets,
    PrefixCacheParams,
    PrefixCacheScorer,
    PrefixIndex,
    block_hashes,
)
from infergate.scheduling.sdk.testing import make_endpoint
from infergate.types import InferenceRequest, SchedulingResult


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t


def req(prompt: str, model: str = "m") -> InferenceRequest:
    return InferenceRequest(request_id="r", model=model, target_model=model, prompt=prompt)


def params(**kw: object) -> PrefixCacheParams:
    base: dict[str, object] = {"autoTune": False, "blockSizeTokens": 4}  # 16-byte blocks
    base.update(kw)
    return PrefixCacheParams.model_validate(base)


def test_block_hashes_are_chained_seeded_and_ignore_partial_blocks() -> None:
    a = block_hashes("x" * 40, "m", 16, 100)
    assert len(a) == 2  # 40 bytes → 2 full blocks, 8 trailing bytes ignored
    assert block_hashes("x" * 47, "m", 16, 100) == a
    assert block_hashes("x" * 48, "m", 16, 100)[:2] == a
    assert block_hashes("x" * 40, "other-model", 16, 100) != a  # seeded by target model
    assert len(set(a)) == 2  # same text, different position → different hash (chained)
    b = block_hashes("y" * 16 + "x" * 16, "m", 16, 100)
    assert b[1] != a[1]  # same block text after a different prefix
    assert block_hashes("x" * 15, "m", 16, 100) == []
    assert len(block_hashes("x" * 1000, "m", 16, 5)) == 5  # max blocks
    assert len(block_hashes("é" * 8, "m", 16, 10)) == 1  # UTF-8 bytes, not characters


def test_reference_score_is_matched_over_total_blocks() -> None:
    s = PrefixCacheScorer(params(loadAware=False))
    e0, e1 = make_endpoint("e0"), make_endpoint("e1")
    shared = "a" * 32  # 2 blocks
    first = req(shared + "b" * 32)  # 4 blocks
    st = CycleState()
    assert s.score(first, [e0, e1], st) == {}  # empty index
    s.post_pick(first, SchedulingResult(profile="p", targets=(e0,)), st)
    second = req(shared + "c" * 32)
    scores = s.score(second, [e0, e1], CycleState())
    assert scores == {"e0:8000": 0.5}  # sparse: e1 (no match) is missing, i.e. 0.0
    assert s.score(first, [e0, e1], CycleState()) == {"e0:8000": 1.0}
    assert s.score(req("z" * 64), [e0, e1], CycleState()) == {}
    st2 = CycleState()
    s.score(second, [e0, e1], st2)
    pm = st2.get(PREFIX_MATCH)
    assert pm is not None and len(pm.hashes) == 4 and pm.matched == {"e0:8000": 2}


def test_other_model_never_matches() -> None:
    s = PrefixCacheScorer(params(loadAware=False))
    e0 = make_endpoint("e0")
    r = req("q" * 64, model="food-review")
    s.post_pick(r, SchedulingResult(profile="p", targets=(e0,)), CycleState())
    assert s.score(req("q" * 64, model="cad-fabricator"), [e0], CycleState()) == {}
    assert s.score(req("q" * 64, model="food-review"), [e0], CycleState()) == {"e0:8000": 1.0}


def credited(prompt: str, endpoint_name: str = "e0", **kw: object) -> PrefixCacheScorer:
    """A load-aware scorer whose index credits ``endpoint_name`` with ``prompt``."""
    s = PrefixCacheScorer(params(**kw))
    s.post_pick(
        req(prompt), SchedulingResult(profile="p", targets=(make_endpoint(endpoint_name),)), CycleState()
    )
    return s


@pytest.mark.parametrize(
    ("e0_load", "expected"),
    [
        # T = 16 tokens (64 bytes), e0 matches 2 of 4 blocks (8 tokens): u = max(16 − 8, 16/8) = 8.
        # cost e0 = 8 + 8·n, cost e1 = 16; score = 1 − (cost − min)/16
        ({}, {"e0": 1.0, "e1": 0.5}),
        ({"in_flight": 1}, {"e0": 1.0, "e1": 1.0}),  # the saving exactly pays for one request
        ({"in_flight": 2}, {"e0": 0.5, "e1": 1.0}),  # a busier cached endpoint loses
        ({"in_flight": 3}, {"e0": 0.0, "e1": 1.0}),
        ({"waiting_queue_size": 1, "running_requests": 1}, {"e0": 0.5, "e1": 1.0}),  # scraped load
        ({"in_flight": 1, "running_requests": 2}, {"e0": 0.5, "e1": 1.0}),  # the higher count wins
    ],
)
def test_load_aware_score_weighs_the_saved_prefill_against_load(
    e0_load: dict[str, int], expected: dict[str, float]
) -> None:
    s = credited("a" * 32 + "b" * 32)
    e0 = make_endpoint("e0", **e0_load)  # type: ignore[arg-type]
    scores = s.score(req("a" * 32 + "c" * 32), [e0, make_endpoint("e1")], CycleState())
    assert {k.split(":")[0]: round(v, 6) for k, v in scores.items()} == expected


def test_load_aware_full_match_is_worth_at_most_max_affinity_requests() -> None:
    prompt = "a" * 64  # 16 tokens, fully cached on e0: u = max(0, 16/8) = 2 tokens per request
    s = credited(prompt)
    for n, e0, e1 in [(3, 1.0, 0.375), (8, 1.0, 1.0), (9, 0.875, 1.0)]:
        scores = s.score(req(prompt), [make_endpoint("e0", in_flight=n), make_endpoint("e1")], CycleState())
        assert dict(scores) == {"e0:8000": e0, "e1:8000": e1}
    s = credited(prompt, maxAffinityRequests=2)  # u = 8: one request in flight costs half the prompt
    scores = s.score(req(prompt), [make_endpoint("e0", in_flight=2), make_endpoint("e1")], CycleState())
    assert dict(scores) == {"e0:8000": 1.0, "e1:8000": 1.0}
    # the prompt length counts beyond the hashed blocks: 64 cached bytes of 128 → T = 32, u = 16
    s = credited(prompt, maxPrefixBlocksToMatch=4)
    scores = s.score(req(prompt * 2), [make_endpoint("e0", in_flight=1), make_endpoint("e1")], CycleState())
    assert dict(scores) == {"e0:8000": 1.0, "e1:8000": 1.0}  # 16 + 16 vs 32


def test_load_aware_is_silent_without_any_match() -> None:
    s = credited("a" * 64)
    cands = [make_endpoint("e0"), make_endpoint("e1", in_flight=5)]
    assert s.score(req("z" * 64), cands, CycleState()) == {}
    assert s.score(req("a" * 8), cands, CycleState()) == {}  # shorter than a block


def test_load_aware_does_not_herd_a_shared_instruction_onto_one_endpoint() -> None:
    """RAG shape: a shared instruction block in front of a longer unique document per request."""
    instruction = "i" * 64
    homes: dict[bool, Counter[str]] = {}
    for load_aware in (True, False):
        s = PrefixCacheScorer(params(loadAware=load_aware))
        in_flight = dict.fromkeys(("e0", "e1", "e2", "e3"), 0)
        for n in range(40):
            cands = [make_endpoint(k, in_flight=v) for k, v in in_flight.items()]
            r = req(instruction + f"{n:04d}" * 128)  # 64 + 512 bytes
            st = CycleState()
            scores = s.score(r, cands, st)
            best = max(cands, key=lambda e: (scores.get(e.key, 0.0), -in_flight[e.meta.name]))
            s.post_pick(r, SchedulingResult(profile="p", targets=(best,)), st)
            in_flight[best.meta.name] += 1  # nothing finishes: the load only grows
        homes[load_aware] = Counter(in_flight)
    assert sorted(homes[True].values()) == [10, 10, 10, 10]
    assert homes[False]["e0"] == 40  # the reference formula sends every request to the first home


def test_index_lru_bound_per_server_and_reverse_map_cleanup() -> None:
    idx = PrefixIndex()
    idx.add("a", [1, 2, 3], capacity=3)
    idx.add("b", [1, 2], capacity=3)
    assert len(idx) == 5
    idx.add("a", [4, 5], capacity=3)  # evicts 1 and 2 from a
    assert idx.entries("a") == 3 and len(idx) == 5
    assert idx.match([1, 2]) == {"b": 2}
    assert idx.match([3]) == {"a": 1}
    idx.add("a", [3, 6], capacity=3)  # 3 refreshed, 4 evicted (least recently added)
    assert idx.match([4]) == {}
    assert idx.match([5]) == {"a": 1}
    idx.remove_server("b")
    assert idx.match([1]) == {} and len(idx) == 3
    idx.remove_server("b")  # idempotent
    assert idx.match([5, 9, 3]) == {"a": 1}  # stops at the first unknown hash


def test_index_tells_where_prompts_part_from_where_one_ended() -> None:
    """``parted_at``: the known blocks end where a credited prompt went on differently (yes), or
    where one ended (no); an end is forgotten with its block, and a whole-prompt match, a walk
    that went on past the count or no match at all did not part anywhere."""
    idx = PrefixIndex()
    idx.add("a", [1, 2, 3, 4], capacity=10)  # a system prompt 1-2, a first question 3-4
    assert idx.parted_at([1, 2, 7], 2)  # another question on 1-2: parts after 2
    assert not idx.parted_at([1, 2, 3, 4, 8], 4)  # the conversation's next turn: 4 ended a prompt
    assert not idx.parted_at([1, 2, 3, 4], 4) and not idx.parted_at([1, 2, 7], 0)
    idx.add("b", [1, 2], capacity=10)  # a prompt of the system prompt alone
    assert not idx.parted_at([1, 2, 7], 2)
    assert not idx.parted_at([1, 2, 3, 9], 2)  # b's count stops at 2, but the walk goes on to 3
    idx.remove_server("a")
    idx.add("b", [5, 6], capacity=2)  # 1 and 2 leave b, the last to hold them: 2's end is forgotten
    idx.add("c", [1, 2, 3], capacity=10)
    assert idx.parted_at([1, 2, 9], 2) and not idx.parted_at([1, 2, 3, 4], 3)


def test_index_counts_the_blocks_of_the_prefixes_prompts_parted_from() -> None:
    """``shared_blocks``: each prefix a credited prompt parted from counts its blocks once, from
    any server's credit, until no server holds its last block; a conversation going on from
    where its last prompt ended, a prompt the index knows nothing of and a prompt wholly known
    count nothing."""
    idx = PrefixIndex()
    idx.add("a", [1, 2, 3, 4], capacity=10)
    idx.add("a", [9, 8], capacity=10)
    idx.add("a", [1, 2, 3, 4, 5], capacity=10)  # the next turn: 4 ended a prompt
    idx.add("b", [1, 2, 3, 4], capacity=10)
    assert idx.shared_blocks == 0
    idx.add("b", [1, 2, 7], capacity=10)  # parts after 2 from 1-2
    idx.add("c", [1, 2, 6], capacity=10)  # the same prefix again, another server
    idx.add("c", [9, 8, 7, 6], capacity=10)  # 8 ended a prompt: a conversation, not a fork
    idx.add("c", [1, 2, 3, 11], capacity=10)  # parts after 3 from 1-3
    assert idx.shared_blocks == 2 + 3
    idx.remove_server("a")
    idx.remove_server("b")
    assert idx.shared_blocks == 5  # c holds 1, 2 and 3
    idx.add("c", [20, 21, 22], capacity=3)  # 1, 2 and 3 leave c: forgotten
    assert idx.shared_blocks == 0


def reference_match(idx: PrefixIndex, hashes: list[int]) -> dict[str, int]:
    """One count per holder per block of the walk, stopping at the first unknown hash."""
    counts: dict[str, int] = {}
    for h in hashes:
        holders = idx._servers.get(h)
        if not holders:
            break
        for s in holders:
            counts[s] = counts.get(s, 0) + 1
    return counts


class ModelIndex:
    """The index's contract written plainly: an LRU of hashes per server, holders derived."""

    def __init__(self) -> None:
        self.lrus: dict[str, OrderedDict[int, None]] = {}

    def add(self, server: str, hashes: list[int], capacity: int) -> None:
        lru = self.lrus.setdefault(server, OrderedDict())
        for h in hashes:
            lru[h] = None
            lru.move_to_end(h)
        while len(lru) > capacity:
            lru.popitem(last=False)

    def holders(self) -> dict[int, set[str]]:
        out: dict[int, set[str]] = {}
        for server, lru in self.lrus.items():
            for h in lru:
                out.setdefault(h, set()).add(server)
        return out

    def match(self, hashes: list[int]) -> dict[str, int]:
        holders, counts = self.holders(), Counter[str]()
        for h in hashes:
            if h not in holders:
                break
            counts.update(holders[h])
        return dict(counts)


@pytest.mark.parametrize("limit", [4096, 2], ids=["shared-sets", "cache-emptied-often"])
def test_index_keeps_its_contract_and_match_counts_runs_right(limit: int) -> None:
    """Holder sets are shared, never-modified objects and ``match`` counts runs of equal holders
    at once; after every change the index must equal the plain model (holders per hash, entries)
    and ``match`` must equal counting block by block (servers in the same order too).

    Small capacities evict the oldest blocks of a prompt first, so servers hold later blocks
    without earlier ones and holder sets change along the walk in every way (grow, shrink, swap,
    alternate). ``limit=2`` empties the transition cache almost every time.
    """
    rng = random.Random(7)
    idx, model = PrefixIndex(), ModelIndex()
    idx._sets = HolderSets(limit=limit)
    servers = [f"s{i}" for i in range(6)]
    prompts = [[rng.randrange(40) for _ in range(rng.randrange(1, 30))] for _ in range(12)]
    runs_seen = 0
    for _ in range(1500):
        prompt = rng.choice(prompts)[: rng.randrange(1, 31)]
        if rng.random() < 0.02:
            server = rng.choice(servers)
            idx.remove_server(server)
            model.lrus.pop(server, None)
        else:
            server, capacity = rng.choice(servers), rng.choice([3, 8, 25, 1000])
            idx.add(server, prompt, capacity=capacity)
            model.add(server, prompt, capacity)
        assert {h: set(d) for h, d in idx._servers.items()} == model.holders()
        assert len(idx) == sum(len(lru) for lru in model.lrus.values())
        query = rng.choice(prompts)
        got = idx.match(query)
        assert got == model.match(query)
        assert list(got.items()) == list(reference_match(idx, query).items())
        walked = takewhile(idx._servers.__contains__, query)
        runs_seen += len({frozenset(idx._servers[h]) for h in walked}) > 1
    assert runs_seen > 300  # most walks crossed several different holder sets
    assert len(idx._sets) <= limit


def test_blocks_with_the_same_holders_share_one_set() -> None:
    idx = PrefixIndex()
    idx.add("a", list(range(100)), 1000)
    idx.add("b", list(range(60)), 1000)
    idx.add("c", list(range(50, 80)), 1000)
    by_set = {frozenset(d): {id(d)} for d in idx._servers.values()}
    for d in idx._servers.values():
        by_set[frozenset(d)].add(id(d))
    # 0-49 {a, b}, 50-59 {a, b, c}, 60-79 {a, c}, 80-99 {a}: one object per set
    assert {k: len(v) for k, v in by_set.items()} == {
        frozenset("ab"): 1,
        frozenset("abc"): 1,
        frozenset("ac"): 1,
        frozenset("a"): 1,
    }
    idx.remove_server("b")  # {a, b} becomes {a}: the same object as blocks 80-99 hold
    assert idx._servers[0] is idx._servers[99]


def test_memory_bounded_by_capacity_times_servers() -> None:
    cap = 50
    s = PrefixCacheScorer(params(lruCapacityPerServer=cap))
    servers = [make_endpoint(f"e{i}") for i in range(4)]
    rng = random.Random(0)
    for i in range(300):
        text = "".join(rng.choice("abcdef") for _ in range(16 * 20)) + str(i)
        target = servers[i % 4]
        s.post_pick(req(text), SchedulingResult(profile="p", targets=(target,)), CycleState())
    assert len(s.index) == cap * 4
    assert all(s.index.entries(e.key) == cap for e in servers)


def test_auto_tune_uses_endpoint_block_size_and_gpu_blocks() -> None:
    s = PrefixCacheScorer(PrefixCacheParams())  # autoTune on
    e0 = make_endpoint("e0", block_size=2, num_gpu_blocks=3)  # 8-byte blocks, 3 entries max
    r = req("k" * 80)  # 10 blocks of 8 bytes
    st = CycleState()
    s.score(r, [e0], st)
    pm = st.get(PREFIX_MATCH)
    assert pm is not None and len(pm.hashes) == 10
    s.post_pick(r, SchedulingResult(profile="p", targets=(e0,)), st)
    assert s.index.entries(e0.key) == 3


def test_max_prefix_tokens_overrides_blocks() -> None:
    s = PrefixCacheScorer(params(maxPrefixTokensToMatch=8))  # 8 tokens / 4 per block = 2 blocks
    assert len(s.hashes_for(req("x" * 400), [make_endpoint("e0")])) == 2


def test_inactive_endpoints_purged_and_forget() -> None:
    clock = FakeClock()
    s = PrefixCacheScorer(params(inactivePurgeSeconds=120), clock=clock)
    e0, e1 = make_endpoint("e0"), make_endpoint("e1")
    for e, text in ((e0, "a" * 32), (e1, "b" * 32)):
        st = CycleState()
        s.score(req(text), [e0, e1], st)
        s.post_pick(req(text), SchedulingResult(profile="p", targets=(e,)), st)
    assert sorted(s.index.servers()) == ["e0:8000", "e1:8000"]
    clock.t += 100
    st = CycleState()
    s.score(req("c" * 32), [e0], st)  # only e0 still a candidate
    clock.t += 30  # e1 last seen 130 s ago, e0 30 s ago
    s.post_pick(req("c" * 32), SchedulingResult(profile="p", targets=(e0,)), st)
    assert s.index.servers() == ["e0:8000"]
    s.remove_endpoint("e0:8000")
    assert len(s.index) == 0


def cfg(weight_prefix: float) -> EndpointPickerConfig:
    plugins = [
        PluginSpec(type="queue-scorer"),
        PluginSpec(type="prefix-cache-scorer", parameters={"autoTune": False, "blockSizeTokens": 4}),
        PluginSpec(type="max-score-picker"),
    ]
    refs = [
        PluginRef(plugin_ref="queue-scorer", weight=1.0),
        PluginRef(plugin_ref="prefix-cache-scorer", weight=weight_prefix),
        PluginRef(plugin_ref="max-score-picker"),
    ]
    return EndpointPickerConfig(plugins=plugins, scheduling_profiles=[ProfileSpec(name="d", plugins=refs)])


@pytest.mark.parametrize(("weight", "sticky"), [(3.0, True), (0.0, False)])
def test_scheduler_sticks_repeated_prompts_to_one_endpoint(weight: float, sticky: bool) -> None:
    sched = build_scheduler(cfg(weight), rng=random.Random(11))
    cands = [make_endpoint(f"e{i}") for i in range(4)]
    prompts = [f"{i:02d}" * 200 for i in range(8)]
    homes: dict[int, set[str]] = {i: set() for i in range(8)}
    for _ in range(10):
        for i, p in enumerate(prompts):
            homes[i].add(sched.schedule(req(p), cands).primary.key)
    if sticky:
        assert all(len(h) == 1 for h in homes.values())
        assert len({next(iter(h)) for h in homes.values()}) > 1  # different prompts spread out
    else:
        assert any(len(h) > 1 for h in homes.values())
    sched.forget_endpoint("e0:8000")
    pfx = sched.plugin("prefix-cache-scorer")
    assert isinstance(pfx, PrefixCacheScorer) and "e0:8000" not in pfx.index.servers()
