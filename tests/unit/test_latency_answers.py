"""predicted-latency-scorer learns from answers that were not streamed (``observe_answer``).

Nobody times such an answer's tokens: the data plane knows only its end-to-end time and its token
count. The scorer splits that time by what it expected of each part on that endpoint and teaches
the part expected to dominate.
"""

from __future__ import annotations

import pytest

from infergate.config.picker import parse_picker_config
from infergate.scheduling.engine.scheduler import Scheduler, build_scheduler
from infergate.scheduling.plugins.latency import (
    AccountingRecord,
    PredictedLatencyScorer,
    TpotRecord,
    TtftRecord,
)
from infergate.scheduling.sdk.framework import CycleState
from infergate.scheduling.sdk.testing import make_endpoint
from infergate.types import Endpoint, InferenceRequest, SchedulingResult


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t


def req(prompt: str, rid: str) -> InferenceRequest:
    return InferenceRequest(request_id=rid, model="base", target_model="base", prompt=prompt, max_tokens=100)


def pick(s: PredictedLatencyScorer, r: InferenceRequest, e: Endpoint) -> tuple[float, float]:
    """Schedule ``r`` on ``e``; the TTFT and TPOT (ms) the scorer expects for it there."""
    state = CycleState()
    s.score(r, [e], state)
    s.post_pick(r, SchedulingResult(profile="p", targets=(e,)), state)
    return s._pending[r.request_id][1], s._decoding[r.request_id][1]


def factors(s: PredictedLatencyScorer, key: str = "a:8000") -> tuple[float, float]:
    state = s.debug_state()[key]
    return state["ttft_observed_over_predicted"], state["tpot_observed_over_predicted"]


def test_a_one_token_answer_teaches_the_ttft_correction_its_whole_time() -> None:
    s = PredictedLatencyScorer(clock=Clock())
    e = make_endpoint("a")
    ttft, _ = pick(s, req("x" * 4000, "q"), e)
    s.observe_answer("q", 1.25 * ttft / 1000, 1)  # a quarter more than expected
    assert factors(s) == pytest.approx((1.25, 1.0))


def test_a_short_answer_after_a_long_prompt_teaches_the_ttft_correction_what_decode_leaves() -> None:
    s = PredictedLatencyScorer(clock=Clock())
    e = make_endpoint("a")
    ttft, tpot = pick(s, req("x" * 16000, "q"), e)  # 4,000 prompt tokens: ~110 ms to the first
    assert ttft > 4 * tpot
    s.observe_answer("q", (1.2 * ttft + 4 * tpot) / 1000, 5)  # decode as expected, prefill 1.2x
    assert factors(s) == pytest.approx((1.2, 1.0))


def test_a_long_answer_teaches_the_tpot_correction_what_the_first_token_leaves() -> None:
    s = PredictedLatencyScorer(clock=Clock())
    e = make_endpoint("a")
    ttft, tpot = pick(s, req("hi", "q"), e)
    s.observe_answer("q", (ttft + 100 * 2.0 * tpot) / 1000, 101)  # decode twice as slow as expected
    assert factors(s) == pytest.approx((1.0, 1 + 0.02 * (2.0 - 1)))


def test_the_split_uses_what_was_learnt_of_the_other_part() -> None:
    """Once the endpoint is known to decode twice as slow, a long answer that took exactly that
    long teaches the TPOT correction nothing new, and a short one whose decode took that long
    teaches the TTFT correction that its first token came as expected."""
    clock = Clock()
    s = PredictedLatencyScorer(clock=clock)
    e = make_endpoint("a")
    for n in range(400):
        clock.t += 1.0  # each answer done before the next pick: no backlog builds up
        ttft, tpot = pick(s, req("hi", f"w{n}"), e)
        s.observe_answer(f"w{n}", (ttft + 100 * 2.0 * tpot) / 1000, 101)
    _, learnt = factors(s)
    assert learnt == pytest.approx(2.0, rel=1e-3)
    clock.t += 1.0
    ttft, tpot = pick(s, req("hi", "long"), e)
    s.observe_answer("long", (ttft + 100 * learnt * tpot) / 1000, 101)
    assert factors(s)[1] == pytest.approx(learnt)
    clock.t += 1.0
    ttft, tpot = pick(s, req("x" * 16000, "short"), e)
    s.observe_answer("short", (ttft + 4 * learnt * tpot) / 1000, 5)
    assert factors(s) == pytest.approx((1.0, learnt))


def test_an_answer_is_learnt_once_and_not_without_its_time_or_tokens() -> None:
    s = PredictedLatencyScorer(clock=Clock())
    e = make_endpoint("a")
    for rid, seconds, tokens in (("t", None, 10), ("n", 1.0, None), ("z", 1.0, 0)):
        pick(s, req("hi", rid), e)
        s.observe_answer(rid, seconds, tokens)  # forgotten: nothing to learn from
        s.observe_answer(rid, 1.0, 10)
        s.observe_ttft(rid, 1.0)
        s.observe_tpot(rid, 1.0)
    s.observe_answer("unknown", 1.0, 10)
    assert factors(s) == (1.0, 1.0)
    ttft, _ = pick(s, req("hi", "q"), e)
    s.observe_answer("q", 2 * ttft / 1000, 1)
    s.observe_answer("q", 4 * ttft / 1000, 1)  # already learnt from
    assert factors(s) == pytest.approx((1.5, 1.0))  # 2x, within ttftCorrectionLimit


def test_what_an_answer_teaches_is_exported_to_the_other_workers() -> None:
    s = PredictedLatencyScorer(clock=Clock())
    e = make_endpoint("a")
    sent: list[AccountingRecord] = []
    s.export_accounting(sent.append)
    ttft, tpot = pick(s, req("hi", "long"), e)
    s.observe_answer("long", (ttft + 100 * 2.0 * tpot) / 1000, 101)
    ttft, _ = pick(s, req("x" * 4000, "one"), e)
    s.observe_answer("one", 1.25 * ttft / 1000, 1)
    learnt = [r for r in sent if isinstance(r, (TtftRecord, TpotRecord))]
    assert [(type(r).__name__, r.endpoint) for r in learnt] == [
        ("TpotRecord", "a:8000"),
        ("TtftRecord", "a:8000"),
    ]
    assert [r.ratio for r in learnt] == pytest.approx([2.0, 1.25])


class StreamOnly:
    """An observer of streamed answers only (a plugin written before ``observe_answer``)."""

    def __init__(self) -> None:
        self.told: list[tuple[str, str, float | None]] = []

    def observe_ttft(self, request_id: str, ttft_seconds: float | None) -> None:
        self.told.append(("ttft", request_id, ttft_seconds))

    def observe_tpot(self, request_id: str, tpot_seconds: float | None) -> None:
        self.told.append(("tpot", request_id, tpot_seconds))


def test_the_scheduler_gives_answers_to_their_observers_and_none_to_the_others() -> None:
    text = """
plugins:
- type: predicted-latency-scorer
schedulingProfiles:
- name: default
  plugins: [{pluginRef: predicted-latency-scorer}]
"""
    built = build_scheduler(parse_picker_config(text), clock=Clock())
    scorer = built.plugin("predicted-latency-scorer")
    assert isinstance(scorer, PredictedLatencyScorer)
    old = StreamOnly()
    sched = Scheduler(built.profile, plugins={"predicted-latency-scorer": scorer, "old": old})
    e = make_endpoint("a")
    sched.schedule(req("x" * 4000, "q"), [e])
    ttft = scorer._pending["q"][1]
    sched.observe_answer("q", 1.25 * ttft / 1000, 1)
    assert factors(scorer) == pytest.approx((1.25, 1.0))
    assert old.told == [("ttft", "q", None), ("tpot", "q", None)]
