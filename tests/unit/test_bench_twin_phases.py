"""Workloads whose requests change during a twin run (``phases``): a batch job starts, the popular
adapters change, new tenants arrive. The pool and the arrival process stay; each phase's
requests arrive from its point of the measured window on."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from infergate.bench.steady import SteadyPlan, SteadyRunner, resolve_pool
from infergate.bench.workloads import (
    BenchRequest,
    WorkloadError,
    WorkloadSpec,
    generate,
    load_workload,
    stream,
    stream_phases,
)

pytestmark = pytest.mark.timeout(900)  # virtual-time runs: CPU-bound, slow on a loaded machine

_BASE = "meta-llama/Llama-3.1-8B-Instruct"
_SHIFTING = f"""
name: shifting
seed: 7
workload:
  type: mix
  requests: 100
  prompt: {{kind: fixed, mean: 50}}
  answer: {{kind: fixed, mean: 10}}
  models: [{{name: {_BASE}}}]
phases:
  - at: 0.25
    workload:
      type: mix
      prompt: {{kind: fixed, mean: 80}}
      answer: {{kind: fixed, mean: 20}}
      models: [{{name: lora-0}}]
  - at: 0.75
    workload:
      type: shared_prefix
      tenants: 2
      system_prompt_tokens: 30
      question: {{kind: fixed, mean: 5}}
      answer: {{kind: fixed, mean: 5}}
      turns: 3
      sessions: 4
      turn_after_answer: true
pool:
  replicas: 2
  adapters: [lora-0]
"""


def _spec(tmp_path: Path, text: str = _SHIFTING) -> WorkloadSpec:
    path = tmp_path / "shifting.yaml"
    path.write_text(text)
    return load_workload(str(path))


def _phases_by_time(sent: Iterable[tuple[BenchRequest, float]]) -> list[str]:
    """The kinds of request sent, in order of time, each checked against the phase of its time
    (with the plan of the tests below: the adapter phase from 4 s, the sessions' from 8 s)."""
    kinds: dict[str, None] = {}
    for r, at in sorted(sent, key=lambda pair: pair[1]):
        kind = "session" if r.messages else "base" if r.model == _BASE else "lora"
        assert kind == ("base" if at < 4.0 else "lora" if at < 8.0 else "session"), (kind, at)
        kinds[kind] = None
    return list(kinds)


def test_each_phase_gives_its_count_in_order_numbered_as_one_stream(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    requests = stream_phases(spec, [3, 4, 9], seed=11)
    assert [r.index for r in requests] == list(range(16))
    assert [r.model for r in requests[:3]] == [_BASE] * 3
    assert [r.model for r in requests[3:7]] == ["lora-0"] * 4
    assert all(r.prompt is not None and len(r.prompt.split()) == 80 for r in requests[3:7])
    sessions = requests[7:]
    assert all(r.messages is not None for r in sessions)
    # a session's later turn waits for its previous one, whose index moved with the phase
    afters = [r.after for r in sessions if r.after is not None]
    assert afters and all(7 <= a < 16 for a in afters)
    for r in sessions:
        if r.after is not None:
            previous = requests[r.after]
            assert previous.messages is not None and r.messages is not None
            assert r.messages[: len(previous.messages)] == previous.messages


def test_a_later_phase_does_not_repeat_an_earlier_ones_text(tmp_path: Path) -> None:
    same = _SHIFTING.replace("prompt: {kind: fixed, mean: 80}", "prompt: {kind: fixed, mean: 50}")
    requests = stream_phases(_spec(tmp_path, same), [5, 5, 0], seed=3)
    assert not {r.prompt for r in requests[:5]} & {r.prompt for r in requests[5:]}


def test_without_times_each_phase_gets_its_share_of_the_window(tmp_path: Path) -> None:
    requests = stream(_spec(tmp_path), 100, seed=1)
    models = [r.model for r in requests]
    assert models[:25] == [_BASE] * 25
    assert models[25:75] == ["lora-0"] * 50
    assert all(r.messages is not None for r in requests[75:]) and len(requests) == 100


def test_a_phase_starts_at_its_point_of_the_measured_window(tmp_path: Path) -> None:
    """The warm-up and the window's first quarter ask the base model, the next half the adapter,
    the rest the sessions: each request's phase follows its arrival time, whatever the count."""
    spec = _spec(tmp_path)
    plan = SteadyPlan(unloaded_e2e_s=0.5, warmup_s=2.0, duration_s=8.0, cooldown_s=1.0)
    runner = SteadyRunner(spec, resolve_pool(spec), plan=plan)
    requests, times = runner._stream(6.0)
    assert len(requests) == len(times) > 40
    assert _phases_by_time(zip(requests, times, strict=True)) == ["base", "lora", "session"]
    point = runner.point("default", 6.0)  # a light load: every phase served within the SLO
    assert point.met and point.summary.succeeded == point.summary.requests == point.measured > 30


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("at: 0.75", "at: 0.2"), "increasing order of 'at'"),
        (("at: 0.25", "at: 0"), "greater than 0"),
        (("at: 0.75", "at: 1"), "less than 1"),
        (("type: mix\n  requests: 100", "type: burst"), "cannot have phases"),
    ],
)
def test_bad_phases_are_refused_naming_them(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    with pytest.raises(WorkloadError, match=message):
        _spec(tmp_path, _SHIFTING.replace(*change))


def test_runs_that_do_not_place_requests_by_time_refuse_phases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fixed list (``--limit``, ``generate``) and real replicas (``--matrix``, ``--url``) have
    no measured window to switch in: each says so instead of running one phase."""
    from infergate.bench.cli import main

    path = tmp_path / "shifting.yaml"
    path.write_text(_SHIFTING)
    with pytest.raises(WorkloadError, match="phases switch at points of a measured window"):
        generate(load_workload(str(path)))
    out = ["--no-plots", "--out", str(tmp_path / "out")]
    assert main(["--twin", "--workload", str(path), "--limit", "20", "--qps", "2", *out]) == 2
    assert "changes what it asks during the run (phases)" in capsys.readouterr().err
    assert main(["--matrix", "--workload", str(path), "--limit", "20", *out]) == 2
    assert "only the twin's steady-state runs have" in capsys.readouterr().err
    assert main(["--url", "http://127.0.0.1:9", "--workload", str(path), *out]) == 2
    assert "only the twin's steady-state runs have" in capsys.readouterr().err


def test_closed_loop_clients_take_from_the_phase_of_the_moment(tmp_path: Path) -> None:
    """Each client, when free, takes the next request of the phase begun by then: what it sends
    follows the clock, not the position in a list; a phase's list that runs out is drawn again,
    twice as long, so no client ever idles for want of a request."""
    spec = _spec(tmp_path)
    plan = SteadyPlan(unloaded_e2e_s=0.5, warmup_s=2.0, duration_s=8.0, cooldown_s=1.0)
    runner = SteadyRunner(spec, resolve_pool(spec), plan=plan)
    requests, out = runner._closed_loop_run("default", 6)
    sent = [(r, rec.sent_at) for r, rec in zip(requests, out.records, strict=True) if rec.sent_at < 10.0]
    assert len(sent) > 60
    assert _phases_by_time(sent) == ["base", "lora", "session"]
    # the clients stayed busy through each switch: requests went out in every second of the window
    assert {int(at) for _, at in sent} >= set(range(2, 10))


def test_run_twin_takes_phases_for_closed_loops_only() -> None:
    from infergate.bench.twin import run_twin

    with pytest.raises(ValueError, match="phases place a closed loop's requests"):
        run_twin([], [], strategy="round-robin", phases=[(1.0, 0)])
