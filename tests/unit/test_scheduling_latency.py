"""The predicted-latency scorer: exact predictions, the trade-offs it makes, and its online correction."""

from __future__ import annotations

import math
import random
from itertools import takewhile

import pytest

from infergate.config.picker import default_picker_config, parse_picker_config
from infergate.errors import ConfigError
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.scheduling.plugins.latency import LatencyParams, LatencyRecord, PredictedLatencyScorer
from infergate.scheduling.plugins.latency_prefix import (
    SHARED_PREFIX_FILL,
)
from infergate.scheduling.plugins.latency_state import SLOT_WAIT_SECONDS, slot_wait_ms
from infergate.scheduling.plugins.prefix import PrefixCacheParams, PrefixCacheScorer
from infergate.scheduling.plugins.prefix_demand import PrefixDemand
from infergate.scheduling.sdk.framework import CycleState
from infergate.scheduling.sdk.testing import make_endpoint
from infergate.types import Endpoint, InferenceRequest, SchedulingResult

BASE = "base"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t


def req(prompt: str, model: str = BASE, rid: str = "r", max_tokens: int = 100) -> InferenceRequest:
    return InferenceRequest(
        request_id=rid, model=model, target_model=model, prompt=prompt, max_tokens=max_tokens
    )


def test_prediction_of_an_idle_endpoint_is_overhead_plus_prefill_and_one_decode_step() -> None:
    s = PredictedLatencyScorer(clock=Clock())
    e = make_endpoint("a")
    p = s.predict(e, prompt_tokens=1000, matched_tokens=0, adapter=None, now=100.0)
    assert p.prefill_ms == pytest.approx(25.0)  # 1000 × 0.025
    assert p.ttft_ms == pytest.approx(35.0)  # + 10 ms overhead
    assert p.tpot_ms == pytest.approx(7.026)  # 7 + 0.026 × 1 sequence
    # cached tokens are not prefilled; running sequences and KV in use slow every decode step
    busy = make_endpoint("b", running_requests=9, kv_cache_usage=0.5, num_gpu_blocks=1000, block_size=16)
    p = s.predict(busy, prompt_tokens=1000, matched_tokens=800, adapter=None, now=100.0)
    assert p.uncached_tokens == 200 and p.ttft_ms == pytest.approx(15.0)
    assert p.tpot_ms == pytest.approx(7.0 + 0.026 * 10 + 5.46e-5 * 8000)


def test_scores_are_the_best_cost_over_each_cost() -> None:
    s = PredictedLatencyScorer(clock=Clock())
    idle, queued = make_endpoint("a"), make_endpoint("b", waiting_queue_size=4)
    # b: 4 waiting, priced at this request's prefill (nothing was sent there yet, and 25 ms is
    # more than one decode step): 100 ms of backlog; the 4 waiting sequences share its decode steps
    scores = s.score(req("x" * 4000), [idle, queued], CycleState())
    cost_a, cost_b = 0.035 + 7.026 / 50, 0.135 + (7.0 + 0.026 * 5) / 50
    assert dict(scores) == {"a:8000": 1.0, "b:8000": pytest.approx(cost_a / cost_b)}
    # costs = TTFT/1 s + TPOT/50 ms: a = 0.035 + 7.026/50; with 2 running on b its TPOT is higher
    b2 = make_endpoint("b", running_requests=40)
    scores = s.score(req("x" * 4000), [idle, b2], CycleState())
    cost_a = 0.035 + 7.026 / 50
    cost_b = 0.035 + (7.0 + 0.026 * 41) / 50
    assert scores["a:8000"] == 1.0 and scores["b:8000"] == pytest.approx(cost_a / cost_b)


def test_a_requests_own_slo_weighs_its_ttft_against_its_tpot() -> None:
    """``x-llm-d-slo-*-ms``: a request that needs fast tokens takes the queue; the others, and a
    request that needs its first token soon, take the busy replica with no queue."""
    s = PredictedLatencyScorer(clock=Clock())
    queued = make_endpoint("q", waiting_queue_size=4)  # TTFT +100 ms, TPOT 7.13 ms
    busy = make_endpoint("b", running_requests=40)  # TTFT 35 ms, TPOT 8.066 ms
    prompt = "x" * 4000
    tq, tb = 7.0 + 0.026 * 5, 7.0 + 0.026 * 41

    def scores(ttft: float | None, tpot: float | None) -> dict[str, float]:
        r = InferenceRequest(
            request_id="r", model=BASE, target_model=BASE, prompt=prompt, ttft_slo=ttft, tpot_slo=tpot
        )
        return dict(s.score(r, [queued, busy], CycleState()))

    pool = scores(None, None)  # the pool's 1 s / 50 ms
    assert pool == {"b:8000": 1.0, "q:8000": pytest.approx((0.035 + tb / 50) / (0.135 + tq / 50))}
    fast_tokens = scores(None, 0.005)
    assert fast_tokens == {"q:8000": 1.0, "b:8000": pytest.approx((0.135 + tq / 5) / (0.035 + tb / 5))}
    first_token_soon = scores(0.2, 0.005)  # TTFT weighs 5x more again: back to no queue
    assert first_token_soon["b:8000"] == 1.0 and first_token_soon["q:8000"] < 1.0


def _pick(scorer: PredictedLatencyScorer, request: InferenceRequest, endpoints: list[Endpoint]) -> str:
    state = CycleState()
    scores = scorer.score(request, endpoints, state)
    best = max(endpoints, key=lambda e: (scores[e.key], e.key == endpoints[0].key))
    scorer.post_pick(request, SchedulingResult(profile="p", targets=(best,)), state)
    return best.key


def test_a_shared_prefix_does_not_outweigh_the_unique_work_queued_behind_it() -> None:
    """RAG: 1k shared instruction tokens + 8k unique document tokens per request."""
    clock = Clock()
    s = PredictedLatencyScorer(clock=clock)
    eps = [make_endpoint("a"), make_endpoint("b"), make_endpoint("c")]
    instructions = "i" * 4000
    picks = [_pick(s, req(instructions + f"doc{n}" + "d" * 32000, rid=f"r{n}"), eps) for n in range(6)]
    # each request adds ~200 ms of prefill backlog where it goes: the pool is used evenly
    assert sorted(picks.count(k) for k in ("a:8000", "b:8000", "c:8000")) == [2, 2, 2]
    # the reference prefix formula (matched / total) alone sends every one to the first replica
    prefix = PrefixCacheScorer(PrefixCacheParams(load_aware=False))
    first = make_endpoint("a")
    state = CycleState()
    prefix.score(req(instructions + "d" * 32000), eps, state)
    prefix.post_pick(req(instructions), SchedulingResult(profile="p", targets=(first,)), state)
    scores = prefix.score(req(instructions + "e" * 32000), eps, CycleState())
    assert scores["a:8000"] > 0 and "b:8000" not in scores


def test_a_long_shared_prefix_keeps_its_affinity_while_the_backlog_is_smaller_than_its_saving() -> None:
    clock = Clock()
    s = PredictedLatencyScorer(clock=clock)
    eps = [make_endpoint("a"), make_endpoint("b")]
    system = "s" * 32000  # 8k tokens of shared system prompt, short questions
    for n in range(4):  # three other prompts asked for as often: this one carries a quarter
        _pick(s, req(f"{n} other tenant " * 200, rid=f"o{n}"), eps)
    first = _pick(s, req(system + "q1"), eps)
    # 8k cached tokens save 200 ms; the backlog left there drains at 1 ms per ms
    clock.t += 0.25
    assert _pick(s, req(system + "q2"), eps) == first
    clock.t += 0.25
    assert _pick(s, req(system + "q3"), eps) == first


def test_a_prefix_carrying_more_traffic_than_its_holders_spreads() -> None:
    """One system prompt under every request, a request every 0.25 s on two servers: shares are
    of at least 20 requests, so once more than ten carried it (decayed), it needs both servers;
    the one lacking it is not charged the prefill the holder saves and takes the next request.
    Before, the 200 ms saving kept every request on the first (as in the affinity test above)."""
    clock = Clock()
    s = PredictedLatencyScorer(clock=clock)
    eps = [make_endpoint("a"), make_endpoint("b")]
    system = "s" * 32000
    picks = []
    for n in range(24):
        picks.append(_pick(s, req(system + f"q{n}", rid=str(n)), eps))
        clock.t += 0.25
    assert picks[:11] == ["a:8000"] * 11  # too few requests to know a share: affinity as before
    assert picks[11] == "b:8000"
    # both hold it now, so neither lacks it: every server's miss is charged again
    assert sorted(s.index.match(s._hashes(req(system), 16))) == ["a:8000", "b:8000"]


def _holder_and_lighter(waiting_on_a: int) -> list[Endpoint]:
    """``a`` (KV cache 60 % full, ``waiting_on_a`` queued) and ``b`` (30 %), each running 30 streams."""
    return [
        make_endpoint(
            n,
            running_requests=30,
            kv_cache_usage=kv,
            waiting_queue_size=w,
            num_gpu_blocks=26_000,
            block_size=16,
        )
        for n, kv, w in (("a", 0.6, waiting_on_a), ("b", 0.3, 0))
    ]


def test_a_miss_is_charged_to_the_streams_it_would_delay_while_the_holder_has_room() -> None:
    """The next turn of a conversation (2,000 tokens of history) on its holder ``a`` or on ``b``,
    whose KV cache is half as full: ``b`` decodes 6.8 ms faster a step (0.136 of cost) and
    prefilling the history there takes 50 ms more (0.05 of TTFT cost), so the request's own cost
    prefers ``b``. But those 50 ms stall each of ``b``'s 30 running streams, whose answers
    average 128 tokens: 30 × 50 / 128 / 50 = 0.23 more, and the turn stays on ``a``. With a
    request waiting on ``a`` the charge is off (the turn would queue there) and ``b`` takes it."""
    clock = Clock()
    s = PredictedLatencyScorer(clock=clock)
    history = "h" * 8000  # 2,000 tokens
    first = [make_endpoint(n, num_gpu_blocks=26_000, block_size=16) for n in ("a", "b")]
    assert _pick(s, req(history, rid="t1"), first) == "a:8000"
    clock.t += 100.0  # its prefill, frontend work and prefill rate are long gone

    pool = _holder_and_lighter
    turn = req(history + "q" * 400, rid="t2")
    scores = s.score(turn, pool(0), CycleState())
    assert scores["a:8000"] == 1.0
    cost_a = (10.0 + 2.5) / 1000 + (7.0 + 0.026 * 31 + 5.46e-5 * 0.6 * 416_000) / 50
    cost_b = (10.0 + 52.5) / 1000 + (7.0 + 0.026 * 31 + 5.46e-5 * 0.3 * 416_000) / 50 + 30 * 50.0 / 128 / 50
    assert scores["b:8000"] == pytest.approx(cost_a / cost_b)
    assert cost_b - 30 * 50.0 / 128 / 50 < cost_a  # without the charge b would be picked
    assert _pick(s, turn, pool(1)) == "b:8000"


def test_a_requests_prefill_is_charged_to_the_streams_still_decoding_where_it_would_run() -> None:
    """Two replicas alike to the scrape and to the gateway's in-flight count (20 requests each),
    but all of ``a``'s have streamed a token and none of ``b``'s: ``a`` decodes 20 streams that
    a 2,000-token prompt's 50 ms of prefill would stall, ``b``'s requests still wait before it
    rather than behind it. The prefill starts after 10 ms (the overhead), when 1 − 10 / (127 ×
    TPOT) of the streams are still decoding, each over its 127 gaps: ``a`` is charged a quarter
    of ``20 × that share × 50 / 127 / 50``, scaled by its TPOT over the bound. With
    ``stallWeight: 0`` the two cost the same. Streams of short answers are over before the
    prefill reaches them, and are not charged."""

    def pool(backlog: int = 0) -> list[Endpoint]:
        return [
            make_endpoint(n, in_flight=20, running_requests=20, waiting_queue_size=backlog).with_load(
                20, 0, started
            )
            for n, started in (("a", 20), ("b", 0))
        ]

    prompt = "p" * 8000  # 2,000 tokens: 50 ms of prefill
    scores = PredictedLatencyScorer(clock=Clock()).score(req(prompt), pool(), CycleState())
    tpot = 7.0 + 0.026 * 21
    cost = (10.0 + 50.0) / 1000 + tpot / 50
    left = 1 - 10.0 / (127 * tpot)
    stall = 0.25 * (20 * left * 50.0 / 127 / 50) * (tpot / 50)
    assert scores["b:8000"] == 1.0
    assert scores["a:8000"] == pytest.approx(cost / (cost + stall))
    off = PredictedLatencyScorer(LatencyParams(stall_weight=0.0), clock=Clock())
    assert list(off.score(req(prompt), pool(), CycleState()).values()) == [1.0, 1.0]

    def short(answer: float, backlog: int) -> list[float]:
        scorer = PredictedLatencyScorer(clock=Clock())
        for k in ("a:8000", "b:8000"):
            scorer._state_of(k).avg_answer_tokens = answer
        return list(scorer.score(req(prompt), pool(backlog), CycleState()).values())

    assert short(2.0, 0) == [1.0, 1.0]  # one gap of 7.5 ms, over before the 10 ms of overhead
    assert short(4.0, 0)[0] < 1.0  # three gaps: a third of the streams left
    assert short(4.0, 4) == [1.0, 1.0]  # behind 4 waiting requests' 28 ms of backlog: none


def test_a_miss_where_prompts_part_is_charged_while_the_holder_queues_once_shared_prefixes_crowd() -> None:
    """As above, but the 2,000 tokens are a preamble earlier prompts went on from differently (a
    tenant's system prompt and its questions). While the tenants' preambles fit in half a
    server's cache, a copy on ``b`` only spreads the queue, and ``b`` takes a new question as
    before. Once 105 tenants' preambles (13,125 blocks, more than half of 26,000) have been parted
    from, a copy would evict another tenant's: the charge stays with a request waiting on ``a``,
    and ``a`` keeps the question. A conversation's next turn (its history ended where the
    index's blocks end) is not a shared prefix and goes to ``b`` either way."""
    clock = Clock()
    s = PredictedLatencyScorer(clock=clock)
    first = [make_endpoint("a", num_gpu_blocks=26_000, block_size=16)]
    tenants = [f"{k:04d}" * 2000 for k in range(105)]  # 8,000 characters: 125 blocks each

    def ask(k: int) -> None:  # two questions on tenant k's preamble: parted from
        assert _pick(s, req(tenants[k] + "q" * 400, rid=f"q{k}"), first) == "a:8000"
        assert _pick(s, req(tenants[k] + "r" * 400, rid=f"r{k}"), first) == "a:8000"

    for k in range(104):
        ask(k)
    clock.t += 100.0
    pool = _holder_and_lighter(1)

    def best(prompt: str) -> str:
        scores = s.score(req(prompt), pool, CycleState())  # scored only: the index stays as it is
        return max(scores, key=lambda k: scores[k])

    assert s.index.shared_blocks == 104 * 125  # 13,000: they fit
    assert best(tenants[0] + "z" * 400) == "b:8000"
    ask(104)  # 13,125: crowded
    assert best(tenants[0] + "z" * 400) == "a:8000"
    assert best(tenants[0] + "q" * 400 + "z" * 400) == "b:8000"


def test_prefix_demand_counts_shares_against_holders() -> None:
    """A prefix is short of holders when fewer candidates hold it than its decayed share of the
    recent requests (of at least 20) times the candidates, and at least one does."""
    d = PrefixDemand()
    keys = ["a", "b", "c", "d"]
    hot = list(range(1, 40))  # 39 blocks: known by its 32nd
    assert not d.short_of_holders(hot, {"a": 39}, keys, 0.0)  # one request: 1/20 x 4 < 1
    for _ in range(19):
        d.short_of_holders(hot, {}, keys, 0.0)
    assert d.short_of_holders(hot, {"a": 39}, keys, 0.0)  # share 1: needs 4, has 1
    assert not d.short_of_holders(hot, {}, keys, 0.0)  # held nowhere: nothing to spread
    assert not d.short_of_holders(hot, dict.fromkeys(keys, 39), keys, 0.0)  # all four hold it
    assert d.short_of_holders(hot, {"a": 39, "b": 39, "c": 39, "d": 20}, keys, 0.0)  # d: 20 < 32
    for n in range(40):  # forty other prefixes, once each
        d.short_of_holders([1000 + n], {}, keys, 0.0)
    assert not d.short_of_holders(hot, {"a": 39, "b": 39}, keys, 0.0)  # 25/65 x 4 = 1.54 < 2
    assert d.short_of_holders(hot, {"a": 39}, keys, 0.0)  # 26/66 x 4 = 1.58 > 1
    # the counts decay over PREFIX_DEMAND_SECONDS: 50 s later hot's count is about 1 of 20
    for _ in range(10):
        d.short_of_holders([5000], {}, keys, 50.0)
    assert not d.short_of_holders(hot, {"a": 39}, keys, 50.0)
    # a prompt shorter than 32 blocks is known by all its blocks
    assert d.short_of_holders([7, 8], {"a": 2}, keys, 50.0) is False


def test_lora_slot_costs_and_spreading_a_hot_adapter() -> None:
    clock = Clock()
    s = PredictedLatencyScorer(LatencyParams(base_models=[BASE]), clock=clock)
    holder = make_endpoint("a", running_adapters=["hot", "x"], max_active_adapters=2)
    free_slot = make_endpoint("b", running_adapters=["y"], max_active_adapters=2)
    full = make_endpoint("c", running_adapters=["y", "z"], max_active_adapters=2)
    p_free = s.predict(free_slot, prompt_tokens=100, matched_tokens=0, adapter="hot", now=100.0)
    p_full = s.predict(full, prompt_tokens=100, matched_tokens=0, adapter="hot", now=100.0)
    assert p_free.ttft_ms == pytest.approx(10 + 2.5 + 25.0)  # + loading into the free slot
    assert p_full.ttft_ms == pytest.approx(10 + 2.5 + 128.0 * (7.0 + 0.026))  # a slot frees after an answer
    # taking the free slot for an adapter already served elsewhere costs the pool's shortage of
    # slots times the wait for a slot, since a cold adapter may need that slot
    p_taken = s.predict(
        free_slot, prompt_tokens=100, matched_tokens=0, adapter="hot", now=100.0, slot_pressure=5 / 6
    )
    assert p_taken.ttft_ms == pytest.approx(10 + 2.5 + 25.0 + 5 / 6 * 128.0 * (7.0 + 0.026))
    eps = [holder, free_slot, full]
    prompt = "p" * 32000  # 8k unique tokens: 200 ms of prefill each

    def picks_of(scorer: PredictedLatencyScorer) -> list[str]:
        return [_pick(scorer, req(f"{n} " + prompt, model="hot", rid=str(n)), eps) for n in range(6)]

    # no other adapter asked for: nothing needs the free slot, and the hot adapter spreads to it
    # as soon as its own replica's backlog exceeds the load there
    alone = picks_of(s)
    assert alone[:2] == ["a:8000", "b:8000"]
    assert "c:8000" not in alone  # never evict from a full replica while a slot is free elsewhere
    # a cold adapter was asked for and no replica holds it: the one free slot may be its, so
    # taking it costs the pool's slot use (5 of 6), and the hot adapter stays where it runs until
    # its backlog there is ~750 ms; still never evicting from the full replica
    s = PredictedLatencyScorer(LatencyParams(base_models=[BASE]), clock=clock)
    assert s._slot_pressure("cold", eps) == 0.0  # held nowhere: not priced here
    assert s._slot_pressure("hot", eps) == pytest.approx(5 / 6)
    kept = picks_of(s)
    assert kept[:4] == ["a:8000"] * 4
    assert "b:8000" in kept and "c:8000" not in kept
    # ten seconds later the cold adapter is no longer in demand
    clock.t += 10.0
    assert s._slot_pressure("hot", eps) == 0.0


def test_an_adapter_waiting_for_a_slot_is_priced_by_how_long_it_has_waited() -> None:
    """vLLM starts a waiting adapter's requests only once a running adapter has no request left.
    Where every slot runs another adapter, joining its queue costs nothing at first and the
    whole wait for a slot (an answer's decode) after SLOT_WAIT_SECONDS; with a slot free, or
    once it runs, nothing, and its clock starts again."""
    clock = Clock()
    s = PredictedLatencyScorer(LatencyParams(base_models=[BASE]), clock=clock)
    starving = make_endpoint(
        "a", running_adapters=["x", "y"], waiting_adapters=["cold"], max_active_adapters=2
    )
    starting = make_endpoint("b", running_adapters=["x"], waiting_adapters=["cold"], max_active_adapters=2)
    running = make_endpoint("a", running_adapters=["cold", "x"], max_active_adapters=2)
    wait = 128.0 * (7.0 + 0.026)  # the default average answer at the idle step time

    def ttft(e: Endpoint) -> float:
        return s.predict(e, prompt_tokens=100, matched_tokens=0, adapter="cold", now=clock.t).ttft_ms

    assert ttft(starving) == pytest.approx(10 + 2.5)  # just seen waiting: a slot may free at once
    clock.t += SLOT_WAIT_SECONDS / 2
    assert ttft(starving) == pytest.approx(10 + 2.5 + wait / 2)
    assert ttft(starting) == pytest.approx(10 + 2.5)  # a free slot: it starts at the next step
    clock.t += SLOT_WAIT_SECONDS
    assert ttft(starving) == pytest.approx(10 + 2.5 + wait)  # at most a slot's whole wait
    # so requests for it go where a running adapter's slot frees as soon, not into a queue that
    # has not moved for seconds: here a replica with a free slot
    free = make_endpoint("d", running_adapters=["x"], max_active_adapters=2)
    assert _pick(s, req("q", model="cold", rid="1"), [starving, free]) == "d:8000"
    assert ttft(running) == pytest.approx(10 + 2.5)  # it runs: its clock starts again
    assert ttft(starving) == pytest.approx(10 + 2.5)


def test_an_adapter_waiting_where_slots_change_hands_is_priced_from_the_last_change() -> None:
    """A queue whose slots turn over is moving: adapters taking turns there start in order, and
    pricing their wait spread them into queues everywhere (lora-uniform under a loose SLO). The
    price grows only while the same adapters hold the slots; a change starts its clock again."""
    clock = Clock()
    s = PredictedLatencyScorer(LatencyParams(base_models=[BASE]), clock=clock)
    wait = 128.0 * (7.0 + 0.026)

    def ttft(running: list[str]) -> float:
        e = make_endpoint("a", running_adapters=running, waiting_adapters=["cold"], max_active_adapters=2)
        return s.predict(e, prompt_tokens=100, matched_tokens=0, adapter="cold", now=clock.t).ttft_ms

    assert ttft(["x", "y"]) == pytest.approx(10 + 2.5)
    clock.t += SLOT_WAIT_SECONDS / 2
    assert ttft(["x", "y"]) == pytest.approx(10 + 2.5 + wait / 2)
    assert ttft(["x", "z"]) == pytest.approx(10 + 2.5)  # y's slot went to z: the queue moved
    clock.t += SLOT_WAIT_SECONDS / 4
    assert ttft(["x", "z"]) == pytest.approx(10 + 2.5 + wait / 4)  # timed from the change
    clock.t += SLOT_WAIT_SECONDS
    assert ttft(["x", "z"]) == pytest.approx(10 + 2.5 + wait)  # stuck again: the whole wait


def test_slot_pressure_is_the_homeless_adapters_over_the_free_slots() -> None:
    """Adapters asked for in the last 10 s and held nowhere, over the slots left free, at most the
    pool's slot use; 0 for an adapter served nowhere (it takes a slot anyway)."""
    clock = Clock()
    s = PredictedLatencyScorer(LatencyParams(base_models=[BASE]), clock=clock)
    pool = [
        make_endpoint("a", running_adapters=["hot", "x"], waiting_adapters=["y"], max_active_adapters=4),
        make_endpoint("b", running_adapters=["hot", "z"], max_active_adapters=4),
    ]  # 8 slots, 5 held (y waits on a: held), 3 free
    assert s._slot_pressure("hot", pool) == 0.0  # nothing else asked for
    assert s._slot_pressure("c1", pool) == 0.0  # held nowhere: it takes a slot anyway
    assert s._slot_pressure("hot", pool) == pytest.approx(1 / 3)
    assert s._slot_pressure("y", pool) == pytest.approx(1 / 3)
    clock.t += 5.0
    assert s._slot_pressure("c2", pool) == 0.0
    assert s._slot_pressure("hot", pool) == pytest.approx(5 / 8)  # 2 of 3 free slots: the slot use
    clock.t += 6.0  # c1 was asked for 11 s ago
    assert s._slot_pressure("hot", pool) == pytest.approx(1 / 3)


def test_the_api_frontend_is_a_serial_stage_shared_with_streaming_tokens() -> None:
    """Short chat at high rates is bound by the server's API frontend (10 ms per request, and
    0.064 ms per streamed token taken first), not by the GPU: a replica streaming more tokens
    admits requests more slowly, so new ones go where the frontend has time."""
    clock = Clock()
    s = PredictedLatencyScorer(clock=clock)
    idle = make_endpoint("a")
    assert _pick(s, req("x" * 400, rid="1"), [idle]) == "a:8000"  # 10 ms of request work on a
    p = s.predict(idle, prompt_tokens=100, matched_tokens=0, adapter=None, now=100.0)
    assert p.frontend_ms == pytest.approx(10.0)  # nothing streams: waits for the 10 ms
    assert p.ttft_ms == pytest.approx(10 + 10.0 + 2.5 + 2.5)  # + prefill backlog and own prefill
    # 100 sequences streaming at TPOT (7 + 0.026 × 101) / (1 − ρ) ms take 0.064 × 100 / TPOT of its
    # time (ρ: the 2.5 ms of prefill sent, over the 5 s rate window, decayed)
    streaming = make_endpoint("a", running_requests=100)

    def busy() -> float:
        rho = 2.5 / 5000 * math.exp(-(clock.t - 100.0) / 5.0)
        return 0.064 * 100 / ((7.0 + 0.026 * 101) / (1 - rho))

    clock.t += 0.005  # 5 ms at the share measured before (0: all of it) worked off 5 ms
    p = s.predict(streaming, prompt_tokens=100, matched_tokens=0, adapter=None, now=clock.t)
    assert p.frontend_ms == pytest.approx(5.0 / (1 - busy()))
    left = 5.0 - 5.0 * (1 - busy())
    clock.t += 0.005  # now only 1 − busy of each ms goes to the request
    p = s.predict(streaming, prompt_tokens=100, matched_tokens=0, adapter=None, now=clock.t)
    assert p.frontend_ms == pytest.approx(left / (1 - busy()))
    assert s.debug_state()["a:8000"]["frontend_backlog_ms"] == pytest.approx(left, abs=1e-3)
    # between two equally loaded GPUs the one streaming fewer tokens gets the request
    quiet = make_endpoint("b", running_requests=60)
    loud = make_endpoint("c", running_requests=120)
    for n in range(2):
        _pick(s, req(f"{n} " + "y" * 400, rid=f"b{n}"), [quiet])
        _pick(s, req(f"{n} " + "y" * 400, rid=f"c{n}"), [loud])
    scores = s.score(req("z" * 400), [quiet, loud], CycleState())
    assert scores["b:8000"] == 1.0 and scores["c:8000"] < 1.0


def test_the_frontends_streaming_share_follows_the_learnt_decode_speed() -> None:
    """A replica that decodes faster than the model says streams its tokens faster, so its API
    frontend has less time left for requests: the streaming share uses the endpoint's learnt TPOT
    factor (absolute), while the cost's own TPOT keeps the relative correction only. Without it
    the share was underestimated on fast replicas, the frontend looked unsaturated, and short
    chats at high rates piled up there (sharegpt-like on six replicas, docs/benchmarks.md)."""
    clock = Clock()
    s = PredictedLatencyScorer(clock=clock)
    streaming = make_endpoint("a", running_requests=50)
    model_tpot = 7.0 + 0.026 * 51
    for n in range(300):  # every answer streams at 0.6 x the predicted TPOT
        _pick(s, req("hi", rid=f"q{n}"), [streaming])
        s.observe_tpot(f"q{n}", 0.6 * s._decoding[f"q{n}"][1] / 1000)
    factor = s.debug_state()["a:8000"]["tpot_observed_over_predicted"]
    assert factor == pytest.approx(0.6, abs=0.01)
    clock.t += 100.0  # everything sent has been worked off; the prefill rate has decayed
    _pick(s, req("hi", rid="last"), [streaming])  # 10 ms of request work, now
    p = s.predict(streaming, prompt_tokens=1, matched_tokens=0, adapter=None, now=clock.t)
    busy = 0.064 * 50 / (p.tpot_ms * factor)
    assert p.tpot_ms == pytest.approx(model_tpot, rel=1e-3)  # one replica: nothing relative to correct
    assert p.frontend_ms == pytest.approx(10.0 / (1 - busy), rel=1e-3)
    assert p.frontend_ms > 10.0 / (1 - 0.064 * 50 / model_tpot) * 1.5  # the model alone: 16 ms


def test_requests_two_scrapes_do_not_show_wait_in_the_api_frontend() -> None:
    """vLLM counts a request as waiting only once its API frontend handed it to the engine: what
    this gateway has in flight there beyond the scraped running and waiting requests is in the
    frontend. As many as two scrapes in a row show are a queue, and each new scrape sets their work
    (10 ms each) as a floor under the frontend the model tracks, which on fast GPUs streaming long
    answers it underestimated by a second (slow-half-decode under the loose SLO,
    docs/benchmarks.md). One scrape's alone may be a burst in transit; between scrapes the model
    drains the work as before."""
    clock = Clock()
    s = PredictedLatencyScorer(clock=clock)

    def held(running: int, scrape: float, role: str | None = None) -> Endpoint:
        labels = {"llm-d.ai/role": role} if role else {}
        return make_endpoint("held", in_flight=40, running_requests=running, updated_at=scrape, labels=labels)

    def frontend(e: Endpoint) -> float:
        return s.predict(e, prompt_tokens=100, matched_tokens=0, adapter=None, now=clock.t).frontend_ms

    tpot = 7.0 + 0.026 * 41  # 40 sequences either way

    def wait(running: int, work: float) -> float:
        return work / (1 - 0.064 * running / tpot)

    assert frontend(held(10, 1.0)) == 0.0  # 30 unreported once: perhaps a burst in transit
    assert frontend(held(10, 2.0)) == pytest.approx(wait(10, 300.0))  # twice: a queue
    assert s.debug_state()["held:8000"]["frontend_unreported"] == 30
    # without the floor "held" streams fewer tokens than "shown" and looked the better of the two
    shown = make_endpoint("shown", in_flight=40, running_requests=40, updated_at=2.0)
    assert _pick(s, req("x" * 400, rid="1"), [held(10, 2.0), shown]) == "shown:8000"
    # the same scrape 50 ms later: no second floor, the work drains
    clock.t += 0.05
    left = 300.0 - 50.0 * (1 - 0.064 * 10 / tpot)
    assert frontend(held(10, 2.0)) == pytest.approx(wait(10, left))
    # a new scrape with fewer unreported requests does not lower the model's work
    assert frontend(held(35, 3.0)) == pytest.approx(wait(35, left))
    # a P/D decoder's requests prefill on another server before it reports them: no floor
    s = PredictedLatencyScorer(clock=clock)
    assert frontend(held(10, 1.0, "decode")) == frontend(held(10, 2.0, "decode")) == 0.0


def test_observed_ttft_scales_the_endpoints_predictions() -> None:
    clock = Clock()
    s = PredictedLatencyScorer(clock=clock)
    e = make_endpoint("a")
    r = req("x" * 4000, rid="q")
    _pick(s, r, [e])
    before = s.predict(e, prompt_tokens=1000, matched_tokens=1000, adapter=None, now=200.0).ttft_ms
    s.observe_ttft("q", 1.25 * 0.035)  # a quarter more than was predicted (35 ms)
    after = s.predict(e, prompt_tokens=1000, matched_tokens=1000, adapter=None, now=200.0).ttft_ms
    assert after == pytest.approx(1.25 * before)
    s.observe_ttft("q", 9.0)  # already consumed: ignored
    s.observe_ttft("unknown", 1.0)
    assert s.predict(e, prompt_tokens=1000, matched_tokens=1000, adapter=None, now=200.0).ttft_ms == after


def test_picks_never_observed_are_forgotten_oldest_first_within_the_bound() -> None:
    """A caller that never reports answers does not grow the scorer without bound; the newest
    picks can still be observed, the ones forgotten cannot."""
    s = PredictedLatencyScorer(clock=Clock(), max_pending=8)
    e = make_endpoint("a")
    for n in range(41):
        _pick(s, req("x" * 4000, rid=f"q{n}"), [e])
        assert len(s._pending) <= 8
        assert f"q{n}" in s._pending
    factor = s.debug_state()["a:8000"]["ttft_observed_over_predicted"]
    s.observe_ttft("q0", 1.0)  # forgotten long ago: nothing learnt
    assert s.debug_state()["a:8000"]["ttft_observed_over_predicted"] == factor
    s.observe_ttft("q40", 1.0)
    assert s.debug_state()["a:8000"]["ttft_observed_over_predicted"] > factor


@pytest.mark.parametrize(
    ("limit", "observed", "factor"), [(1.5, 4.0, 1.5), (1.5, 0.1, 1 / 1.5), (4.0, 2.0, 2.0)]
)
def test_the_correction_factor_stays_within_its_limit(limit: float, observed: float, factor: float) -> None:
    """One replica's unexplained wait moves its predictions by at most ``ttftCorrectionLimit``."""
    clock = Clock()
    s = PredictedLatencyScorer(LatencyParams(ttft_correction_limit=limit), clock=clock)
    e = make_endpoint("a")
    _pick(s, req("x" * 4000, rid="q"), [e])
    before = s.predict(e, prompt_tokens=1000, matched_tokens=1000, adapter=None, now=200.0).ttft_ms
    s.observe_ttft("q", observed * 0.035)  # ``observed`` times what was predicted (35 ms)
    after = s.predict(e, prompt_tokens=1000, matched_tokens=1000, adapter=None, now=200.0).ttft_ms
    assert after == pytest.approx(factor * before)


def _tpot(s: PredictedLatencyScorer, e: Endpoint) -> float:
    return s.predict(e, prompt_tokens=0, matched_tokens=0, adapter=None, now=200.0).tpot_ms


def test_observed_tpots_scale_an_endpoints_predictions_relative_to_the_fastest() -> None:
    """A replica that decodes much slower than the fastest (a slower GPU) is priced slower; one a
    little slower (within what the model's error spreads equal replicas by) is not; a bias every
    replica shares (the model's constants off for this hardware) changes no prediction."""
    s = PredictedLatencyScorer(clock=Clock())
    slow, mid, fast, new = (make_endpoint(n) for n in ("slow", "mid", "fast", "new"))
    idle = 7.026  # ms: 7 + 0.026 x 1 sequence
    _pick(s, req("hi", rid="first"), [slow])
    s.observe_tpot("first", 1.8 * 1.6 * idle / 1000)
    # one answer moves the factor by 2 % of the way only (first ratios swing with the batch)
    assert s.debug_state()["slow:8000"]["tpot_observed_over_predicted"] == pytest.approx(
        1 + 0.02 * (1.8 * 1.6 - 1), abs=1e-4
    )
    for n in range(600):
        for e, times in ((slow, 1.6), (mid, 1.2), (fast, 1.0)):  # all 1.8 x slower than predicted
            _pick(s, req("hi", rid=f"{e.key}{n}"), [e])
            s.observe_tpot(f"{e.key}{n}", 1.8 * times * idle / 1000)
    state = s.debug_state()
    assert state["slow:8000"]["tpot_observed_over_predicted"] == pytest.approx(1.8 * 1.6, rel=1e-2)
    assert state["slow:8000"]["tpot_relative_to_pool"] == pytest.approx(1.6, rel=1e-3)
    assert state["slow:8000"]["tpot_scale"] == pytest.approx(1.6 / 1.25, rel=1e-3)  # beyond the band
    assert state["mid:8000"]["tpot_scale"] == 1.0  # within it
    assert _tpot(s, slow) == pytest.approx(idle * 1.6 / 1.25, rel=1e-3)
    assert _tpot(s, mid) == pytest.approx(idle) and _tpot(s, fast) == pytest.approx(idle)
    assert _tpot(s, new) == pytest.approx(idle)  # never observed: as predicted
    # without the fastest, the next fastest is the unit
    s.remove_endpoint("fast:8000")
    assert s.debug_state()["slow:8000"]["tpot_relative_to_pool"] == pytest.approx(1.6 / 1.2, rel=1e-3)
    assert _tpot(s, slow) == pytest.approx(idle * 1.6 / 1.2 / 1.25, rel=1e-3)


def test_a_uniform_tpot_bias_changes_no_score() -> None:
    """A decode speed every replica shares changes no TPOT in the cost (an absolute factor would
    reweigh TPOT against TTFT for the whole pool). It does change how busy each frontend is with
    streaming (the previous test), so that term is off here."""
    params = LatencyParams(frontend_ms_per_token=0.0)
    s, plain = PredictedLatencyScorer(params, clock=Clock()), PredictedLatencyScorer(params, clock=Clock())
    pool = [make_endpoint("a", running_requests=30), make_endpoint("b", running_requests=5)]
    for n, e in enumerate(pool * 10):
        _pick(s, req("hi", rid=f"q{n}"), [e])
        _pick(plain, req("hi", rid=f"q{n}"), [e])
        predicted_ms = s._decoding[f"q{n}"][1]
        s.observe_tpot(f"q{n}", 1.9 * predicted_ms / 1000)  # every replica 1.9 x slower than predicted
    assert s.score(req("hi"), pool, CycleState()) == pytest.approx(plain.score(req("hi"), pool, CycleState()))


@pytest.mark.parametrize(("limit", "scale"), [(1.0, 1.0), (1.5, 1.5), (4.0, 4.0), (10.0, 8 / 1.25)])
def test_the_tpot_correction_stays_within_its_limit(limit: float, scale: float) -> None:
    """``tpotCorrectionLimit`` bounds how much one endpoint's TPOT is scaled; at 1 the correction
    is off. One stalled stream counts at most ten times its prediction."""
    s = PredictedLatencyScorer(LatencyParams(tpot_correction_limit=limit), clock=Clock())
    a, b = make_endpoint("slow"), make_endpoint("fast")
    for n in range(600):
        _pick(s, req("hi", rid=f"s{n}"), [a])
        _pick(s, req("hi", rid=f"f{n}"), [b])
        s.observe_tpot(f"s{n}", 8 * 0.007026)  # eight times the fast one's
        s.observe_tpot(f"f{n}", 0.007026)
    state = s.debug_state()
    assert state["slow:8000"]["tpot_scale"] == pytest.approx(scale, rel=1e-3)
    assert state["fast:8000"]["tpot_scale"] == 1.0
    _pick(s, req("hi", rid="stall"), [b])
    before = s.debug_state()["fast:8000"]["tpot_observed_over_predicted"]
    s.observe_tpot("stall", 1000.0)
    after = s.debug_state()["fast:8000"]["tpot_observed_over_predicted"]
    assert after == pytest.approx(before + 0.02 * (10 - before), abs=1e-4)


def test_a_tpot_is_learnt_once_per_pick_and_not_after_a_failure() -> None:
    s = PredictedLatencyScorer(clock=Clock())
    e = make_endpoint("a")
    _pick(s, req("hi", rid="q"), [e])
    s.observe_tpot("q", None)  # failed, unstreamed or no usage: the pick is forgotten
    s.observe_tpot("q", 1.0)
    s.observe_tpot("unknown", 1.0)
    assert s.debug_state()["a:8000"]["tpot_observed_over_predicted"] == 1.0


def test_scheduler_forwards_observations_and_departures() -> None:
    text = """
plugins:
- type: predicted-latency-scorer
  parameters: {ttftSloSeconds: 0.5, onlineCorrection: true, ttftCorrectionLimit: 4}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: predicted-latency-scorer}]
"""
    clock = Clock()
    sched = build_scheduler(parse_picker_config(text), clock=clock)
    e = make_endpoint("a")
    sched.schedule(req("x" * 4000, rid="q"), [e])
    plugin = sched.plugin("predicted-latency-scorer")
    assert isinstance(plugin, PredictedLatencyScorer)
    sched.observe_ttft("q", 0.07)
    sched.observe_tpot("q", 0.014)
    assert plugin.debug_state()["a:8000"]["tpot_observed_over_predicted"] == pytest.approx(
        1 + 0.02 * (0.014 / 0.007026 - 1), abs=1e-4
    )
    assert plugin.predict(
        e, prompt_tokens=0, matched_tokens=0, adapter=None, now=300.0
    ).ttft_ms == pytest.approx(20.0)
    sched.forget_endpoint("a:8000")
    assert plugin.predict(
        e, prompt_tokens=0, matched_tokens=0, adapter=None, now=300.0
    ).ttft_ms == pytest.approx(10.0)


def _reference_cost(
    scorer: PredictedLatencyScorer,
    e: Endpoint,
    *,
    prompt_tokens: int,
    matched_tokens: int,
    adapter: str | None,
    now: float,
    slot_pressure: float,
) -> tuple[float, float, float]:
    """The model as the module docstring writes it (the cost, and the TTFT and TPOT in it), through
    the endpoint state's own helpers (``drained``, ``frontend_drained``, ``_rate``): the oracle for
    the scoring loop, which writes them out for speed."""
    p = scorer._p
    m = e.metrics
    st = scorer._state_of(e.key)
    uncached = max(0, prompt_tokens - matched_tokens)
    prefill = uncached * p.prefill_ms_per_token
    per_request = st.avg_prefill_ms if st.sent >= 5 else (scorer._avg_prefill_ms or prefill)
    per_request = max(per_request, p.decode_step_ms)
    backlog = max(st.drained(now), m.waiting_queue_size * per_request)
    seqs = max(m.running_requests + m.waiting_queue_size, e.in_flight)
    kv_tokens = 0.0
    if m.num_gpu_blocks and m.block_size:
        kv_tokens = m.kv_cache_usage * m.num_gpu_blocks * m.block_size
    step = p.decode_step_ms + p.decode_ms_per_seq * (seqs + 1) + p.decode_ms_per_kv_token * kv_tokens
    tpot = step / (1.0 - min(0.9, scorer._rate(st, now)))
    lora = 0.0
    if adapter is not None and adapter not in m.running_adapters and adapter not in m.waiting_adapters:
        busy = len(m.running_adapters | m.waiting_adapters)
        swap = st.avg_answer_tokens * tpot
        lora = p.lora_load_ms + slot_pressure * swap if busy < m.max_active_adapters else swap
    if adapter is not None:  # its queue where every slot runs another adapter, by how long it waited
        full = len(m.running_adapters) >= m.max_active_adapters
        starving = full and adapter in m.waiting_adapters and adapter not in m.running_adapters
        lora += slot_wait_ms(st, adapter, starving, st.avg_answer_tokens * tpot, now, m.running_adapters)
    st.frontend_ms = st.frontend_drained(now)
    if m.updated_at != st.metrics_at:  # a new scrape: the requests it does not show wait in the frontend
        st.metrics_at = m.updated_at
        held = 0
        if e.meta.labels.get("llm-d.ai/role") != "decode":
            held = max(0, e.in_flight - m.running_requests - m.waiting_queue_size)
        queue = min(held, st.unreported)  # as many as the scrape before showed too
        st.unreported = held
        st.frontend_ms = max(st.frontend_ms, queue * p.frontend_ms_per_request)
    st.frontend_at = now
    step_ms = tpot * st.tpot_factor if st.tpot_observed else tpot  # the learnt decode speed
    share = p.frontend_ms_per_token * m.running_requests / step_ms if step_ms > 0 else 0.0
    st.frontend_busy = min(0.95, share)
    frontend = st.frontend_ms / (1.0 - st.frontend_busy)
    ttft = (p.overhead_ms + frontend + backlog + prefill + lora) * st.ttft_factor
    tpot *= scorer._tpot.scale(st)  # the request's own decode only
    return ttft / (p.ttft_slo_seconds * 1000.0) + tpot / (p.tpot_slo_seconds * 1000.0), ttft, tpot


def test_the_scoring_loop_computes_the_documented_model_to_the_last_bit() -> None:
    """Two scorers with the same history: one scores through its loop, the other is priced by the
    oracle above; every score and every endpoint's state afterwards are equal, float for float,
    over a few hundred cycles of varied pools (queues, KV, adapters, in-flight counts, backlogs,
    prefix matches, corrections)."""
    rng = random.Random(11)

    class Clock:
        t = 50.0

        def now(self) -> float:
            return self.t

    clock = Clock()
    # a short rate window, so the prefill share reaches its cap of 0.9 in some cycles
    params = LatencyParams(rate_window_seconds=0.5, prefill_ms_per_token=1.0)
    fast, oracle = PredictedLatencyScorer(params, clock=clock), PredictedLatencyScorer(params, clock=clock)
    adapters = ["sql-lora", "chat-lora", "food-review"]
    prompts = ["x" * n + " shared system prompt " * 20 * n for n in range(8)]
    # tenants' prompts on one preamble: a new tenant's match ends where they part (a branch point)
    tenants = ["shared system prompt " * 40 + f"tenant {k} " * 30 for k in range(150)]
    ends: set[int] = set()  # the last block of every prompt credited
    for cycle in range(300):
        clock.t += rng.choice([0.0, 0.001, 0.02, 0.3])
        pool = [
            make_endpoint(
                f"e{i}",
                in_flight=(n := rng.randrange(12)),
                waiting_queue_size=rng.randrange(4),
                running_requests=rng.choice([rng.randrange(4), rng.randrange(40)]),
                updated_at=rng.choice([1.0, 2.0, clock.t]),
                labels=rng.choice([{}, {"llm-d.ai/role": "decode"}]),
                kv_cache_usage=rng.random(),
                num_gpu_blocks=rng.choice([None, 4000, 20]),
                block_size=rng.choice([None, 16]),
                running_adapters=rng.sample(adapters, rng.randrange(3)),
                max_active_adapters=rng.choice([0, 2, 4]),
            ).with_load(n, 0, rng.randrange(n + 1))  # some of them seen to start
            for i in range(rng.randrange(1, 6))
        ]
        model = rng.choice([BASE, *adapters])
        request = InferenceRequest(
            request_id=f"r{cycle}",
            model=model,
            target_model=model,
            prompt=rng.choice(rng.choice([prompts, tenants])),
            max_tokens=64,
        )
        state = CycleState()
        got = fast.score(request, pool, state)
        # the oracle sees the same inputs the loop derived: prompt size, matches, adapter, pressure
        block_tokens = pool[0].metrics.block_size or 16
        hashes = oracle._hashes(request, block_tokens)
        matched = oracle.index.match(hashes) if hashes else {}
        adapter = request.target_model if oracle._is_adapter(request, pool) else None
        pressure = oracle._slot_pressure(adapter, pool) if adapter is not None else 0.0
        prompt_tokens = max(1, len(request.prompt.encode()) // 4)
        priced = [
            _reference_cost(
                oracle,
                e,
                prompt_tokens=prompt_tokens,
                matched_tokens=matched.get(e.key, 0) * block_tokens,
                adapter=adapter,
                now=clock.t,
                slot_pressure=pressure,
            )
            for e in pool
        ]
        costs = [cost for cost, _, _ in priced]
        held = [matched.get(e.key, 0) * block_tokens for e in pool]
        if oracle._prefixes.short_of_holders(hashes, matched, [e.key for e in pool], clock.t):
            # a prefix too few hold for its share: no charge for the blocks a holder has
            top = min(max(held), prompt_tokens)
            for i, e in enumerate(pool):
                if held[i] < top:
                    f = oracle._state[e.key].ttft_factor
                    costs[i] -= (top - held[i]) * (params.prefill_ms_per_token / 1000.0) * f
        elif matched:
            # the streams a candidate runs pay for its prefill beyond the best holder's, unless
            # a best holder queues, or the match ends where prompts part and the prefixes they part
            # from take more than half the smallest cache
            m = max(matched.values())
            depth = len(list(takewhile(lambda h: h in oracle.index._servers, hashes)))
            crowded = False
            if m == depth < len(hashes) and hashes[m - 1] not in ends:  # parts from a shared prefix
                cache = min(e.metrics.num_gpu_blocks or params.lru_capacity_per_server for e in pool)
                crowded = oracle.index.shared_blocks > SHARED_PREFIX_FILL * cache  # (the index's tests)
            prefills = [max(0, prompt_tokens - h) * params.prefill_ms_per_token for h in held]
            least = min(prefills)
            pairs = zip(prefills, pool, strict=True)
            queued = [x == least and e.metrics.waiting_queue_size > 0 for x, e in pairs]
            if crowded or not any(queued):
                for i, e in enumerate(pool):
                    answer = max(1.0, oracle._state[e.key].avg_answer_tokens)
                    costs[i] += e.metrics.running_requests * (prefills[i] - least) / answer / 50.0
            if m >= len(hashes):  # someone holds the whole prompt: a copy delays the queue behind it
                for i, e in enumerate(pool):
                    costs[i] += (1 + e.metrics.waiting_queue_size) * (prefills[i] - least) / 1000.0
        for i, e in enumerate(pool):  # a quarter of the prefill the streams still decoding wait for
            _, own_ttft, own_tpot = priced[i]
            gaps = oracle._state[e.key].avg_answer_tokens - 1.0
            prefill = max(0, prompt_tokens - held[i]) * params.prefill_ms_per_token
            if e.in_flight_started and prefill > 0 and gaps > 0:
                left = max(0.0, 1.0 - (own_ttft - prefill) / (gaps * own_tpot))  # after the wait before it
                stall = e.in_flight_started * left * prefill / gaps / 50.0
                costs[i] += 0.25 * stall * (own_tpot / 50.0)
        assert list(got.values()) == [min(costs) / c if c > 0 else 1.0 for c in costs], cycle
        assert fast._state == oracle._state, cycle  # the frontend brought up to now alike
        # both account the same pick and learn from the same answer: their histories stay equal
        primary = pool[rng.randrange(len(pool))]
        result = SchedulingResult(profile="default", targets=(primary,))
        fast.post_pick(request, result, state)
        oracle.post_pick(request, result, state)
        if hashes:
            ends.add(hashes[-1])
        assert fast._state == oracle._state, cycle
        ttft = rng.choice([None, 0.05, 0.4])
        fast.observe_ttft(request.request_id, ttft)
        oracle.observe_ttft(request.request_id, ttft)
        tpot = rng.choice([None, 0.004, 0.012, 0.03])
        fast.observe_tpot(request.request_id, tpot)
        oracle.observe_tpot(request.request_id, tpot)


def _reference_account(scorer: PredictedLatencyScorer, r: LatencyRecord) -> None:
    """One pick's accounting as the module docstring describes it, through the endpoint state's
    own helpers: the oracle for ``_account``, which writes them out for speed."""
    st = scorer._state_of(r.endpoint)
    at = max(r.at, st.backlog_at)
    st.backlog_ms = st.drained(at) + r.prefill_ms
    st.backlog_at = at
    at = max(r.at, st.frontend_at)
    st.frontend_ms = st.frontend_drained(at) + r.frontend_ms
    st.frontend_at = at
    at = max(r.at, st.rate_at)
    st.prefill_rate = scorer._rate(st, at) + r.prefill_ms / (scorer._p.rate_window_seconds * 1000.0)
    st.rate_at = at
    st.sent += 1
    alpha = 0.1 if st.sent > 10 else 1.0 / st.sent
    st.avg_prefill_ms += alpha * (r.prefill_ms - st.avg_prefill_ms)
    if scorer._avg_prefill_ms == 0.0:
        scorer._avg_prefill_ms = r.prefill_ms
    scorer._avg_prefill_ms += 0.05 * (r.prefill_ms - scorer._avg_prefill_ms)
    if r.answer_tokens:
        st.avg_answer_tokens += alpha * (r.answer_tokens - st.avg_answer_tokens)


def test_accounting_a_pick_computes_the_documented_model_to_the_last_bit() -> None:
    """Records arriving in and out of order (another worker's, a hop late), with busy frontends
    and drained backlogs, leave the same state, float for float, as the helper-based oracle."""
    rng = random.Random(5)
    params = LatencyParams(rate_window_seconds=0.5)
    fast, oracle = PredictedLatencyScorer(params), PredictedLatencyScorer(params)
    now = 10.0
    for n in range(2000):
        now += rng.choice([0.0, 0.0005, 0.01, 0.4])
        key = rng.choice(["a:8000", "b:8000", "c:8000"])
        busy = rng.choice([0.0, 0.3, 0.95])
        for s in (fast, oracle):
            s._state_of(key).frontend_busy = busy  # as the scoring loop leaves it
        record = LatencyRecord(
            endpoint=key,
            prefill_ms=rng.choice([0.0, 3.0, 250.0]),
            answer_tokens=rng.choice([0, 1, 300]),
            frontend_ms=rng.choice([0.0, 10.0]),
            at=now - rng.choice([0.0, 0.0, 0.003, 1.0]),  # late records
        )
        fast.apply_accounting(record)
        _reference_account(oracle, record)
        assert fast._state == oracle._state, n
        assert fast._avg_prefill_ms == oracle._avg_prefill_ms, n


def test_prefix_demand_forgets_prompts_seen_once_before_a_hot_prefix() -> None:
    """Unique prompts fill the counts; when they overflow, a prefix asked for again and again
    keeps its count (its share stays known) and the prompts seen once are dropped."""
    d = PrefixDemand()
    keys = ["a", "b", "c", "d"]
    hot = list(range(1, 40))
    t = 0.0
    for n in range(10_000):  # every other request hot, the rest unique: hot carries a half
        t += 0.001
        d.short_of_holders(hot if n % 2 else [10_000 + n], {}, keys, t)
    assert len(d._counts) < 1000  # overflowed at 4,096 prefixes: those seen once were dropped
    # hot's share is still a half: 4 candidates x 1/2 need 2 holders, it has 1 (had its count
    # started again with the others', it would be a sixth of the decayed total, needing 0.6)
    assert d.short_of_holders(hot, {"a": 39}, keys, t)


def test_samples_of_one_prompt_sent_together_stay_where_it_is_prefilled() -> None:
    """Four samples of one 1,000-token prompt sent together (a rollout's group) to two servers
    with requests waiting, under the default profile. From the second sample on, the sample's
    own TTFT is the same on the holder ``a`` (the backlog the first sample's prefill joined) as
    on ``b`` (its own 25 ms prefill), and the in-flight term would send it to ``b``. But the
    copy is also 25 ms every request queued on ``b`` waits for: charged for them (two waiting,
    so three times), the samples stay on ``a``. A prompt that only starts like the first (the
    same document, another question) is no copy of it: it goes to ``b``."""
    clock = Clock()
    sched = build_scheduler(default_picker_config(lora=False), clock=clock)
    in_flight = {"a": 0, "b": 0}

    def pick(prompt: str, rid: str) -> str:
        pool = [
            make_endpoint(
                n,
                in_flight=k,
                waiting_queue_size=2,
                running_requests=20,
                num_gpu_blocks=26_000,
                block_size=16,
            )
            for n, k in in_flight.items()
        ]
        key = sched.schedule(req(prompt, rid=rid), pool).primary.key
        in_flight[key.split(":")[0]] += 1
        return key

    prompt = "p" * 4000
    first = pick(prompt, "s0")
    assert [pick(prompt, f"s{i}") for i in range(1, 4)] == [first] * 3
    other = "b:8000" if first == "a:8000" else "a:8000"
    assert pick(prompt[:-64] + "q" * 64, "d") == other


def test_a_negative_stall_weight_is_refused_by_name() -> None:
    """``stallWeight`` below 0 would pay candidates for stalling their streams: the config is
    refused, naming the parameter."""
    text = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: predicted-latency-scorer
  parameters: {stallWeight: -0.5}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: predicted-latency-scorer}]
"""
    with pytest.raises(
        ConfigError, match=r"parameters\.stallWeight: Input should be greater than or equal to 0"
    ):
        build_scheduler(parse_picker_config(text), clock=Clock())
