"""Sessions whose turns wait for the previous answer (``turn_after_answer``) and sessions that start
at every depth (``staggered``): the generator's order, the twin and the SLO search's refusal of a
rate the sessions could not send (the load generators: tests/integration/test_bench_session_turns.py)."""

from __future__ import annotations

import pytest

from infergate.bench.loadgen import RequestRecord
from infergate.bench.steady import _sessions_behind
from infergate.bench.twin import run_twin
from infergate.bench.workloads import generate, stream
from tests.support import session_workload as _spec


def test_interleaved_sessions_name_their_previous_turn_only_when_turns_wait() -> None:
    overlapping = generate(_spec())
    waiting = generate(_spec(turn_after_answer=True))
    assert [r.after for r in overlapping] == [None] * 12
    # every session's first turn, then every second turn: a turn follows its session's by 4
    assert [r.after for r in waiting] == [None] * 4 + list(range(8))
    # the requests themselves are the same
    assert [r.messages for r in waiting] == [r.messages for r in overlapping]


def test_staggered_sessions_start_at_every_depth_and_follow_each_other_in_their_slot() -> None:
    requests = stream(_spec(staggered=True, turn_after_answer=True), 14)
    assert [r.index for r in requests] == list(range(len(requests)))
    # slot k's first session starts at turn k mod 3: its history (system, then question and answer
    # pairs) is already there, and nothing before it was sent
    assert [len(r.messages or ()) for r in requests[:4]] == [2, 4, 6, 2]
    assert [r.after for r in requests[:4]] == [None] * 4
    # slot 2's session ends with its first request (its third turn); a fresh one takes the slot
    assert len(requests[6].messages or ()) == 2 and requests[6].after is None
    # slot 0 and 1 go on with the same session, four arrivals later
    for i in (4, 5, 8):
        prev, cur = requests[i - 4], requests[i]
        assert cur.after == prev.index
        assert cur.messages is not None and prev.messages is not None
        assert cur.messages[: len(prev.messages)] == prev.messages
        assert len(cur.messages) == len(prev.messages) + 2


def test_the_twin_sends_a_waiting_turn_when_its_previous_answer_ends() -> None:
    requests = generate(_spec(turn_after_answer=True))
    offsets = [0.0] * len(requests)  # every turn due at once: the later ones must wait
    out = run_twin(requests, offsets, strategy="round-robin")
    assert all(r.ok for r in out.records)
    for req, rec in zip(requests, out.records, strict=True):
        if req.after is None:
            assert rec.sent_at == 0.0
        else:
            before = out.records[req.after]
            assert before.e2e is not None
            # timed from the moment the previous answer ended, not from the due time
            assert rec.sent_at == pytest.approx(before.sent_at + before.e2e, abs=0.05)
            assert rec.sent_at > 0.0


def test_a_rate_the_sessions_could_not_send_is_not_met() -> None:
    window = (10.0, 110.0)

    def records(shifts: dict[int, float]) -> list[RequestRecord]:
        # 100 turns due in the window, one a second; ``shifts`` holds some back for their answers
        return [
            RequestRecord(index=i, model="m", group="g", sent_at=10.0 + i + shifts.get(i, 0.0))
            for i in range(100)
        ]

    assert _sessions_behind(100, records({}), window) is None
    # turns held a few seconds are only sent later, still in the window
    assert _sessions_behind(100, records({i: 3.0 for i in range(0, 90, 2)}), window) is None
    # two pushed past the window's end: within the 2 % a boundary moves
    assert _sessions_behind(100, records({98: 5.0, 99: 5.0}), window) is None
    reason = _sessions_behind(100, records({i: 8.0 for i in range(90, 100)}), window)
    assert reason is not None and "sent 92 of the 100 turns" in reason
