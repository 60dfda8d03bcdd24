"""The online corrections remember seconds, not answers, once they have learnt an endpoint."""

from __future__ import annotations

import pytest

from infergate.scheduling.plugins.latency import PredictedLatencyScorer, TtftRecord
from infergate.scheduling.plugins.latency_state import (
    CORRECTION_MEMORY_SECONDS,
    TTFT_ALPHA,
    learning_weight,
)
from infergate.scheduling.sdk.framework import CycleState
from infergate.scheduling.sdk.testing import make_endpoint
from infergate.types import Endpoint, InferenceRequest, SchedulingResult

# ratios beyond the limit (1.5) are clamped: observing these teaches exactly 1.5 or 1 / 1.5
SLOW_S, FAST_S = 10.0, 1e-4


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t


def _observe(s: PredictedLatencyScorer, e: Endpoint, rid: str, seconds: float) -> None:
    request = InferenceRequest(request_id=rid, model="base", target_model="base", prompt="x" * 400)
    state = CycleState()
    s.score(request, [e], state)
    s.post_pick(request, SchedulingResult(profile="p", targets=(e,)), state)
    s.observe_ttft(rid, seconds)


def _factor(s: PredictedLatencyScorer) -> float:
    return s.debug_state()["a:8000"]["ttft_observed_over_predicted"]


@pytest.mark.parametrize(
    ("learnt", "gap", "weight"),
    [
        (1, 0.0, TTFT_ALPHA),  # a new endpoint learns per answer, however close together
        (100, 0.0, TTFT_ALPHA),  # 5 / alpha answers: its start still weighs over 1 %
        (101, 0.0, 0.0),  # then the same moment again adds nothing
        (101, 0.1, 0.1 / CORRECTION_MEMORY_SECONDS),  # a tenth of a second: that share of the memory
        (101, 60.0, TTFT_ALPHA),  # never more than per answer
        (101, -1.0, 0.0),  # observed before the last one learnt (another worker's, late)
    ],
)
def test_the_weight_of_an_answer_is_per_answer_then_bounded_by_time(
    learnt: int, gap: float, weight: float
) -> None:
    assert learning_weight(TTFT_ALPHA, learnt, gap) == pytest.approx(weight)


def test_ttfts_observed_close_together_teach_the_factor_as_one_moment() -> None:
    """At ~200 answers a second a factor learnt per answer would follow each passing queue; bounded
    by time it moves by what the second they span is worth, and as before when answers are
    seconds apart."""
    clock = Clock()
    s = PredictedLatencyScorer(clock=clock)
    e = make_endpoint("a")
    for n in range(100):  # learnt as before: seconds apart, all faster than predicted
        clock.t += 1.0
        _observe(s, e, f"w{n}", FAST_S)
    assert _factor(s) == pytest.approx(1 / 1.5, abs=1e-4)
    for n in range(200):  # one second of slow answers, 5 ms apart
        clock.t += 0.005
        _observe(s, e, f"b{n}", SLOW_S)
    # per answer (5 %) it would be 1.5 to four digits; one second of ten moves it under a tenth
    assert _factor(s) < 1 / 1.5 + 0.1
    for n in range(40):  # slow answers a second apart: 5 % each, as before
        clock.t += 1.0
        _observe(s, e, f"s{n}", SLOW_S)
    assert _factor(s) > 1.35


def test_another_workers_late_ttft_teaches_by_when_it_was_observed() -> None:
    """Records carry their observer's clock and are weighed by it, not by when they are applied: once
    the start is learnt, one older than the last learnt adds nothing, and one half a second newer
    weighs half a second."""
    clock = Clock()
    a, b = PredictedLatencyScorer(clock=clock), PredictedLatencyScorer(clock=clock)
    e = make_endpoint("a")
    for _ in range(101):
        clock.t += 1.0
        b.apply_accounting(TtftRecord(endpoint="a:8000", ratio=1.0, at=clock.t))
    assert b.debug_state()["a:8000"]["ttft_observed_over_predicted"] == pytest.approx(1.0)
    b.apply_accounting(TtftRecord(endpoint="a:8000", ratio=1.5, at=clock.t - 0.5))
    assert b.debug_state()["a:8000"]["ttft_observed_over_predicted"] == pytest.approx(1.0)
    b.apply_accounting(TtftRecord(endpoint="a:8000", ratio=1.5, at=clock.t + 0.5))
    assert b.debug_state()["a:8000"]["ttft_observed_over_predicted"] == pytest.approx(1.025, abs=1e-4)
    out: list[object] = []
    a.export_accounting(out.append)
    clock.t += 2.0
    _observe(a, e, "r", SLOW_S)
    assert out[-1] == TtftRecord(endpoint="a:8000", ratio=1.5, at=clock.t)
