"""The predicted-latency scorer's accounting shared between schedulers (gateway workers, issue #18):
each pick exports a record; another scorer applying it holds exactly the state the picking scorer
holds for that endpoint, and nothing else (no prefix credit, no pending TTFT observation). Each
observed TTFT exports its correction ratio, so every scorer's correction learns every answer."""

from __future__ import annotations

import pytest

from infergate.scheduling.plugins.latency import (
    AccountingRecord,
    LatencyRecord,
    PredictedLatencyScorer,
    TpotRecord,
    TtftRecord,
)
from infergate.scheduling.sdk.framework import CycleState
from infergate.scheduling.sdk.testing import make_endpoint
from infergate.types import Endpoint, InferenceRequest, SchedulingResult

BASE = "base"


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


def req(tokens: int, rid: str = "r", max_tokens: int = 100) -> InferenceRequest:
    # the scorer counts 4 bytes of prompt per token
    return InferenceRequest(
        request_id=rid, model=BASE, target_model=BASE, prompt="x" * (4 * tokens), max_tokens=max_tokens
    )


def pick(
    scorer: PredictedLatencyScorer, request: InferenceRequest, target: Endpoint, pool: list[Endpoint]
) -> None:
    """Score ``pool`` and send ``request`` to ``target``, as the scheduler would."""
    state = CycleState()
    scorer.score(request, pool, state)
    scorer.post_pick(request, SchedulingResult(profile="p", targets=(target,)), state)


def ttft_on(scorer: PredictedLatencyScorer, e: Endpoint, now: float) -> float:
    return scorer.predict(e, prompt_tokens=1000, matched_tokens=0, adapter=None, now=now).ttft_ms


def test_a_pick_exports_one_record_of_what_it_added() -> None:
    clock = Clock()
    a = PredictedLatencyScorer(clock=clock)
    out: list[AccountingRecord] = []
    a.export_accounting(out.append)
    ea, eb = make_endpoint("a"), make_endpoint("b")
    pick(a, req(1000, max_tokens=300), ea, [ea, eb])
    # 1000 uncached tokens × 0.025 ms; the default 10 ms of API-frontend work per request
    assert out == [
        LatencyRecord(endpoint="a:8000", prefill_ms=25.0, answer_tokens=300, frontend_ms=10.0, at=100.0)
    ]
    a.export_accounting(None)
    pick(a, req(1000), ea, [ea, eb])
    assert len(out) == 1


def test_applying_a_record_gives_the_picking_scorers_state_and_prediction() -> None:
    clock = Clock()
    a, b = PredictedLatencyScorer(clock=clock), PredictedLatencyScorer(clock=clock)
    a.export_accounting(b.apply_accounting)
    ea, eb = make_endpoint("a"), make_endpoint("b")
    assert ttft_on(b, ea, 100.0) == pytest.approx(35.0)  # 10 ms overhead + 25 ms prefill
    pick(a, req(1000), ea, [ea, eb])
    clock.t = 100.002  # two milliseconds later: 2 ms of backlog and frontend work drained
    assert b.debug_state()["a:8000"] == {
        "backlog_ms": 23.0,
        "frontend_backlog_ms": 8.0,
        "frontend_unreported": 0,
        "prefill_utilisation": 0.005,  # 25 ms of prefill over the 5 s rate window
        "ttft_observed_over_predicted": 1.0,
        "tpot_observed_over_predicted": 1.0,
        "tpot_relative_to_pool": 1.0,
        "tpot_scale": 1.0,
        "last_predicted_ttft_ms": 0.0,
        "last_observed_ttft_ms": 0.0,
        "observations": 0,
        "tpot_observations": 0,
        "requests": 1,
    }
    assert b.debug_state()["a:8000"] == a.debug_state()["a:8000"]
    # overhead 10 + frontend 8 + backlog 23 + prefill 25, in both schedulers
    assert ttft_on(b, ea, 100.002) == pytest.approx(66.0)
    assert ttft_on(a, ea, 100.002) == pytest.approx(66.0)
    # the prefix index learnt nothing in b, nor did b wait for the request's answer
    assert b.index.match(a._hashes(req(1000), 16)) == {}
    b.observe_ttft("r", 1.0)
    assert b.debug_state()["a:8000"]["observations"] == 0


def test_an_observed_ttft_corrects_every_scorer_that_applies_its_record() -> None:
    clock = Clock()
    a, b = PredictedLatencyScorer(clock=clock), PredictedLatencyScorer(clock=clock)
    out: list[AccountingRecord] = []
    a.export_accounting(out.append)
    ea, eb = make_endpoint("a"), make_endpoint("b")
    pick(a, req(1000), ea, [ea, eb])  # predicted 35 ms (10 overhead + 25 prefill)
    a.observe_ttft("r", 0.042)  # observed 42 ms: ratio 1.2
    ttft = out[-1]
    assert isinstance(ttft, TtftRecord) and ttft.endpoint == "a:8000"
    assert ttft.ratio == pytest.approx(1.2)
    for record in out:
        b.apply_accounting(record)
    assert b.debug_state()["a:8000"]["ttft_observed_over_predicted"] == pytest.approx(1.2)
    assert b.debug_state()["a:8000"]["observations"] == 1
    assert ttft_on(b, ea, 101.0) == pytest.approx(ttft_on(a, ea, 101.0))
    assert ttft_on(b, ea, 101.0) == pytest.approx(1.2 * 35.0)  # a second later: all drained
    # the ratio is clamped to the limit before it travels; the other endpoint is untouched
    seen = len(out)
    pick(a, req(1000, rid="r2"), ea, [ea, eb])
    a.observe_ttft("r2", 10.0)
    assert out[-1] == TtftRecord(endpoint="a:8000", ratio=1.5, at=clock.t)
    for record in out[seen:]:
        b.apply_accounting(record)
    assert b.debug_state()["a:8000"] == pytest.approx(
        {**a.debug_state()["a:8000"], "last_predicted_ttft_ms": 0.0, "last_observed_ttft_ms": 0.0}
    )
    assert b.debug_state()["a:8000"]["observations"] == 2
    assert "b:8000" not in b.debug_state()


def test_a_late_record_is_added_at_the_states_last_update_and_counts_in_the_averages() -> None:
    clock = Clock(100.010)
    b = PredictedLatencyScorer(clock=clock)
    ea, eb = make_endpoint("a"), make_endpoint("b")
    pick(b, req(1000, max_tokens=100), ea, [ea, eb])  # b's own pick: 25 ms at 100.010
    clock.t = 100.012
    # another worker's pick of 2000 tokens stamped 100.000, arriving after b's own
    b.apply_accounting(
        LatencyRecord("a:8000", prefill_ms=50.0, answer_tokens=300, frontend_ms=10.0, at=100.0)
    )
    st = b.debug_state()["a:8000"]
    assert st["backlog_ms"] == 73.0  # 25 + 50 at 100.010, 2 ms drained since
    assert st["frontend_backlog_ms"] == 18.0  # 10 + 10 at 100.010
    assert st["prefill_utilisation"] == 0.015  # (25 + 50) / 5000
    assert st["requests"] == 2
    state = b._state["a:8000"]
    assert state.avg_prefill_ms == 37.5  # 25, then half way to 50 (second request)
    assert state.avg_answer_tokens == 200.0  # 100, then half way to 300
    assert b._avg_prefill_ms == pytest.approx(26.25)  # the pool average moves by 5 % per request
    # a record without max_tokens leaves the answer length alone
    b.apply_accounting(
        LatencyRecord("a:8000", prefill_ms=37.5, answer_tokens=0, frontend_ms=10.0, at=100.012)
    )
    assert state.avg_answer_tokens == 200.0 and state.avg_prefill_ms == 37.5


def test_a_record_for_an_unknown_endpoint_creates_its_state() -> None:
    b = PredictedLatencyScorer(clock=Clock())
    b.apply_accounting(LatencyRecord("c:8000", prefill_ms=25.0, answer_tokens=0, frontend_ms=10.0, at=99.0))
    assert b.debug_state()["c:8000"]["backlog_ms"] == 0.0  # 25 ms sent a second ago: drained
    assert b.debug_state()["c:8000"]["requests"] == 1
    b.remove_endpoint("c:8000")
    assert b.debug_state() == {}


def tpot_on(scorer: PredictedLatencyScorer, e: Endpoint) -> float:
    return scorer.predict(e, prompt_tokens=0, matched_tokens=0, adapter=None, now=200.0).tpot_ms


def test_an_observed_tpot_corrects_every_scorer_that_applies_its_record() -> None:
    """Each finished request's TPOT ratio travels as a :class:`TpotRecord`; a scorer that applies
    the records learns the same factors, so its TPOT predictions equal the observing scorer's."""
    clock = Clock()
    a, b = PredictedLatencyScorer(clock=clock), PredictedLatencyScorer(clock=clock)
    out: list[AccountingRecord] = []
    a.export_accounting(out.append)
    ea, eb = make_endpoint("a"), make_endpoint("b")
    for n in range(300):
        pick(a, req(1000, rid=f"ra{n}"), ea, [ea, eb])  # predicted TPOT 7.026 ms on an idle endpoint
        pick(a, req(1000, rid=f"rb{n}"), eb, [ea, eb])
        a.observe_tpot(f"ra{n}", 2 * 0.007026)  # a decodes twice as slowly as b
        a.observe_tpot(f"rb{n}", 0.007026)
    tpots = [r for r in out if isinstance(r, TpotRecord)]
    assert [r.endpoint for r in tpots[:2]] == ["a:8000", "b:8000"] and len(tpots) == 600
    assert [r.ratio for r in tpots[:2]] == pytest.approx([2.0, 1.0], rel=1e-2)
    for record in out:
        b.apply_accounting(record)
    assert b.debug_state()["a:8000"]["tpot_scale"] == a.debug_state()["a:8000"]["tpot_scale"]
    assert tpot_on(b, ea) == pytest.approx(tpot_on(a, ea))
    assert tpot_on(b, ea) == pytest.approx(7.026 * 2 / 1.25, rel=1e-2)
    assert tpot_on(b, eb) == pytest.approx(tpot_on(a, eb)) == pytest.approx(7.026)
