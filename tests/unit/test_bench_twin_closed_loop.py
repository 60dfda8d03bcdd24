"""The twin's closed loop (``--twin --concurrency N --limit M``): N clients, each sending its next
request when its last one ends, as ``run_closed_loop`` does against a real target."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from infergate.bench.cli import main
from infergate.bench.stats import Slo
from infergate.bench.steady import (
    CLOSED_LOOP_WARMUP_LATENCIES,
    SteadyPlan,
    SteadyRunner,
    held_at_bounds,
    plan_for,
    resolve_pool,
    unloaded_e2e,
)
from infergate.bench.twin import run_twin
from infergate.bench.workloads import generate, load_workload, stream
from tests.support import session_workload

HOLDOUT = Path(__file__).resolve().parents[2] / "bench" / "holdout"

pytestmark = pytest.mark.timeout(600)  # virtual time, CPU-bound: slow on a loaded machine, never hung


def test_each_request_after_the_first_n_is_sent_when_one_ends() -> None:
    requests = generate(load_workload("tutorial-mix"))[:40]
    out = run_twin(requests, None, strategy="round-robin", concurrency=3)
    recs = out.records
    assert all(r.ok for r in recs)
    assert [r.sent_at for r in recs[:3]] == [0.0, 0.0, 0.0]
    ends = sorted(r.sent_at + (r.e2e or 0.0) for r in recs)
    # the k-th request (k >= 3, in order) goes at the (k - 2)-th end: the client that finished first
    for k in range(3, len(recs)):
        assert recs[k].sent_at == pytest.approx(ends[k - 3], abs=1e-9)
    # never more than three at once, and three most of the time
    events = sorted([(r.sent_at, 1) for r in recs] + [(r.sent_at + (r.e2e or 0.0), -1) for r in recs])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 3


def test_a_ramp_starts_the_clients_one_after_another() -> None:
    requests = generate(load_workload("tutorial-mix"))[:40]
    recs = run_twin(requests, None, strategy="round-robin", concurrency=3, ramp=0.3).records
    assert min(r.e2e or 0.0 for r in recs[:3]) > 0.2  # no answer ends before the last client starts
    assert [r.sent_at for r in recs[:3]] == pytest.approx([0.0, 0.1, 0.2])
    # then each goes on as a closed loop: the fourth request when the first answer ends
    assert recs[3].sent_at == pytest.approx(min(r.sent_at + (r.e2e or 0.0) for r in recs[:3]))


def test_a_turn_waiting_for_its_answer_holds_its_client() -> None:
    spec = session_workload(turn_after_answer=True)
    requests = generate(spec)
    out = run_twin(requests, None, strategy="round-robin", concurrency=8)
    assert all(r.ok for r in out.records)
    for req, rec in zip(requests, out.records, strict=True):
        if req.after is not None:  # sent once its previous turn ended, whenever its client took it
            before = out.records[req.after]
            assert rec.sent_at >= before.sent_at + (before.e2e or 0.0) - 1e-9
    # eight clients, four sessions: the second turns were taken at once and waited for the first
    second = [out.records[i] for i in range(4, 8)]
    first_ends = [out.records[i].sent_at + (out.records[i].e2e or 0.0) for i in range(4)]
    assert [r.sent_at for r in second] == pytest.approx(first_ends, abs=1e-9)


def test_more_clients_carry_more_requests_per_second_on_an_idle_pool() -> None:
    requests = generate(load_workload("tutorial-mix"))[:60]
    spans = {}
    for n in (1, 4):
        recs = run_twin(requests, None, strategy="round-robin", concurrency=n).records
        spans[n] = max(r.sent_at + (r.e2e or 0.0) for r in recs)
    assert spans[4] < spans[1] / 2.5


def test_open_and_closed_loop_are_exclusive() -> None:
    requests = generate(load_workload("tutorial-mix"))[:3]
    with pytest.raises(ValueError, match="not both"):
        run_twin(requests, [0.0] * 3, strategy="round-robin", concurrency=2)
    with pytest.raises(ValueError, match="not both"):
        run_twin(requests, None, strategy="round-robin")
    with pytest.raises(ValueError, match="at least 1"):
        run_twin(requests, None, strategy="round-robin", concurrency=0)


def test_cli_twin_concurrency_sweeps_client_counts(tmp_path: Path) -> None:
    argv = ["--twin", "--workload", "tutorial-mix", "--limit", "30", "--concurrency", "2,6"]
    argv += ["--strategies", "round-robin", "--no-plots", "--out", str(tmp_path)]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [(r["load"], r["load_kind"]) for r in rows] == [(2.0, "concurrent"), (6.0, "concurrent")]
    assert rows[1]["summary"]["requests_per_s"] > rows[0]["summary"]["requests_per_s"]


def _small_runner() -> SteadyRunner:
    spec = load_workload("tutorial-mix")
    plan = SteadyPlan(unloaded_e2e_s=1.0, warmup_s=3.0, duration_s=6.0, cooldown_s=1.0)
    return SteadyRunner(spec, resolve_pool(spec, replicas=2), plan=plan, closed_loop=True)


def test_a_closed_loop_point_measures_what_was_sent_in_the_window() -> None:
    runner = _small_runner()
    requests, out = runner._closed_loop_run("round-robin", 5)
    point = runner.point("round-robin", 5.0)
    sent = [r for r in out.records if r.sent_at < math.inf]
    in_window = [r for r in sent if 3.0 <= r.sent_at < 9.0]
    assert point.measured == len(in_window) > 10
    assert point.closed_loop and point.load == "5 clients" and "5 clients" in point.describe()
    # each was waited for, and the clients went on sending after the window
    assert all(r.e2e is not None for r in in_window)
    assert max(r.sent_at for r in sent) >= 9.0
    assert len(requests) == len(out.records) == point.total


def test_a_list_that_runs_out_before_the_window_ends_is_drawn_again_longer() -> None:
    # an unloaded latency far above the real one: the first list is a handful of requests
    spec = load_workload("tutorial-mix")
    plan = SteadyPlan(unloaded_e2e_s=200.0, warmup_s=3.0, duration_s=6.0, cooldown_s=1.0)
    runner = SteadyRunner(spec, resolve_pool(spec, replicas=2), plan=plan, closed_loop=True)
    first = 4 + math.ceil(1.25 * 4 * 10.0 / 200.0)
    requests, out = runner._closed_loop_run("round-robin", 4)
    assert len(requests) >= 4 * first
    assert out.records[-1].sent_at >= 9.0  # the list outlasted the window


def test_the_slo_concurrency_is_a_whole_number_of_clients() -> None:
    runner = _small_runner()
    found = runner.slo_rate("round-robin", start=4.0, tolerance=0.1, scout=False)
    assert found.qps >= 4 and found.qps == int(found.qps)
    assert all(load == int(load) for load, _ in found.probes)
    assert found.failing is not None and found.failing > found.qps


def test_cli_slo_concurrency_reports_clients(tmp_path: Path) -> None:
    argv = ["--twin", "--workload", "tutorial-mix", "--replicas", "2", "--concurrency", "3"]
    argv += ["--strategies", "round-robin", "--duration", "4", "--warmup", "2"]
    assert main([*argv, "--no-plots", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["load"] == "clients"
    (point,) = data["strategies"]["round-robin"]["points"]
    assert point["clients"] == 3.0 and point["measured_requests"] > 0
    text = (tmp_path / "results.md").read_text()
    assert "| strategy | clients |" in text and "| round-robin | 3 |" in text


def test_cli_load_flags_that_do_not_go_together_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--workload", "tutorial-mix", "--no-plots"]
    for extra, says in (
        (["--twin", "--concurrency", "2.5", "--limit", "3"], "expected whole numbers"),
        (["--twin", "--slo-concurrency", "--qps", "4"], "give --concurrency, not --qps"),
        (["--twin", "--slo-rate", "--concurrency", "4"], "give --qps, not --concurrency"),
        (["--twin", "--slo-rate", "--slo-concurrency"], "are exclusive"),
        (["--twin", "--slo-concurrency", "--limit", "3"], "need steady-state runs"),
        (["--url", "http://127.0.0.1:9", "--slo-concurrency"], "--slo-concurrency only apply to --twin"),
    ):
        assert main([*base, *extra]) == 2
        assert says in capsys.readouterr().err


def test_the_regret_table_searches_and_prints_client_counts() -> None:
    from tests.support import load_bench_script

    regret = load_bench_script("bench_regret")
    plan = SteadyPlan(unloaded_e2e_s=1.0, warmup_s=3.0, duration_s=6.0, cooldown_s=1.0)
    task = regret.Task(
        workload="tutorial-mix",
        strategy="round-robin",
        plan=plan,
        start=4.0,
        tolerance=0.2,
        factor=1.5,
        seed=0,
        scout=False,
        closed_loop=True,
    )
    found = regret.run_task(task)
    assert found.rate.qps == int(found.rate.qps) >= 1
    assert all(pt.closed_loop for pt in found.points)
    table = regret.regret_markdown(
        {"tutorial-mix": {"round-robin": found.rate}},
        {"tutorial-mix": "3 replicas"},
        ["round-robin"],
        closed_loop=True,
    )
    assert f"**{found.rate.qps:g}** · 1.00 · 1.00×rr" in table


def test_paired_runs_take_client_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support import load_bench_script

    paired = load_bench_script("bench_twin_paired")
    out = tmp_path / "points.jsonl"
    argv = ["--workload", "tutorial-mix", "--strategies", "round-robin", "--rates", "3.4", "--seeds", "0"]
    argv += ["--duration", "4", "--warmup", "2", "--jobs", "1", "--closed-loop", "--out", str(out)]
    assert paired.main(argv) == 0
    (point,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert point["rate"] == 3.0 and point["requests"] > 0  # a whole number of clients
    assert "3.00 clients seed 0" in capsys.readouterr().out


def test_a_closed_loop_warms_up_for_several_unloaded_latencies() -> None:
    # clients started together settle into the mix they keep in flight only after several
    # latencies; an open loop keeps its own rule, and a warm-up the caller gives is kept
    assert plan_for(2.0).warmup_s == 10.0
    assert plan_for(2.0, closed_loop=True).warmup_s == 2.0 * CLOSED_LOOP_WARMUP_LATENCIES
    assert plan_for(0.5, closed_loop=True).warmup_s == 10.0  # the open loop's floor still holds
    assert plan_for(2.0, warmup=3.0, closed_loop=True).warmup_s == 3.0
    spec = load_workload("tutorial-mix")
    shape = resolve_pool(spec)
    unloaded = unloaded_e2e(spec, shape)
    runner = SteadyRunner(spec, shape, closed_loop=True)
    assert (
        runner.plan.warmup_s
        == max(10.0, CLOSED_LOOP_WARMUP_LATENCIES * unloaded, held_at_bounds(spec, Slo()))
        > plan_for(unloaded).warmup_s
    )


def test_the_held_duration_weighs_requests_by_their_length() -> None:
    # a client is found in a request in proportion to its length: E[D²]/E[D] of the durations at
    # the SLO's bounds, not their mean; with answers all one length it is that one duration
    fixed = load_workload(str(HOLDOUT / "classify.yaml"))  # 2-token answers
    assert held_at_bounds(fixed, Slo()) == pytest.approx(1.0 + 0.050)
    assert held_at_bounds(fixed, Slo(ttft_s=2.0, tpot_s=0.1)) == pytest.approx(2.1)
    spec = load_workload(str(HOLDOUT / "bimodal-answers.yaml"))  # ~10 or ~1,500 tokens
    held = held_at_bounds(spec, Slo())
    durations = [1.0 + 0.05 * (r.max_tokens - 1) for r in stream(spec, 2000)[:2000]]
    mean = sum(durations) / len(durations)
    assert held == pytest.approx(sum(d * d for d in durations) / sum(durations))
    assert held > 2 * mean and held > 60.0


def test_a_closed_loop_warms_up_through_one_held_request() -> None:
    # bimodal-answers' long answers last ~75 s near the TPOT bound: 8 unloaded latencies (36 s)
    # left the KV caches still filling with them, and the SLO concurrency measured that start
    assert plan_for(2.0, closed_loop=True, held=40.0).warmup_s == 40.0
    assert plan_for(2.0, closed_loop=True, held=1.0).warmup_s == 2.0 * CLOSED_LOOP_WARMUP_LATENCIES
    assert plan_for(2.0, held=40.0).warmup_s == 10.0  # an open loop has no such start
    assert plan_for(2.0, warmup=3.0, closed_loop=True, held=40.0).warmup_s == 3.0
    spec = load_workload(str(HOLDOUT / "bimodal-answers.yaml"))
    shape = resolve_pool(spec)
    held = held_at_bounds(spec, Slo())
    assert SteadyRunner(spec, shape, closed_loop=True).plan.warmup_s == pytest.approx(held)
    slower = SteadyRunner(spec, shape, closed_loop=True, slo=Slo(tpot_s=0.1))
    assert slower.plan.warmup_s == pytest.approx(held_at_bounds(spec, Slo(tpot_s=0.1)))
    assert slower.plan.warmup_s > 1.9 * held  # the bound it is judged by sets how long answers last


def test_the_regret_tables_closed_loop_plan_warms_up_longer() -> None:
    from tests.support import load_bench_script

    regret = load_bench_script("bench_regret")
    unloaded = unloaded_e2e(
        load_workload("prefill-decode-mix"), resolve_pool(load_workload("prefill-decode-mix"))
    )
    open_plan = regret.plan_of("prefill-decode-mix", quick=True, duration=15.0)
    closed = regret.plan_of("prefill-decode-mix", quick=True, duration=15.0, closed_loop=True)
    assert open_plan.warmup_s == pytest.approx(max(5.0, 2 * unloaded))
    held = held_at_bounds(load_workload("prefill-decode-mix"), Slo())
    assert held > CLOSED_LOOP_WARMUP_LATENCIES * unloaded > 20.0  # its 700-token answers hold clients
    assert closed.warmup_s == pytest.approx(held)
    tight = regret.plan_of(
        "prefill-decode-mix", quick=True, duration=15.0, closed_loop=True, slo=Slo(tpot_s=0.03)
    )
    assert tight.warmup_s == pytest.approx(
        held_at_bounds(load_workload("prefill-decode-mix"), Slo(tpot_s=0.03))
    )
    assert regret.plan_of("prefill-decode-mix", quick=True, warmup=4.0, closed_loop=True).warmup_s == 4.0


def test_paired_closed_loop_points_warm_up_by_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support import load_bench_script

    paired = load_bench_script("bench_twin_paired")
    plans: list[SteadyPlan] = []

    class Stop(Exception):
        pass

    class Runner:
        def __init__(self, *args: object, plan: SteadyPlan, **kwargs: object) -> None:
            plans.append(plan)
            raise Stop

    monkeypatch.setattr(paired, "SteadyRunner", Runner)
    slo = paired.Slo()
    for closed, warmup in ((True, None), (True, 2.0), (False, None)):
        with pytest.raises(Stop):
            paired._point(("tutorial-mix", "round-robin", None, 3.0, 0, 4.0, warmup, slo, True, closed))
    spec = load_workload("tutorial-mix")
    unloaded = unloaded_e2e(spec, resolve_pool(spec))
    rule = max(CLOSED_LOOP_WARMUP_LATENCIES * unloaded, held_at_bounds(spec, slo))
    assert [p.warmup_s for p in plans] == [pytest.approx(rule), 2.0, 5.0]
    assert plans[0].unloaded_e2e_s == pytest.approx(unloaded)  # the ramp: one unloaded latency


@pytest.mark.parametrize(("workload", "clients"), [("tutorial-mix", 3.0), ("mixed-priorities", 8.0)])
def test_the_regret_table_takes_the_judged_rate_sent_at_the_slo_concurrency(
    workload: str, clients: float
) -> None:
    # the requests the SLO judges, per second of the window: a sheddable request the gateway
    # turns away frees its client at once, and counting it would credit a router for shedding
    from tests.support import load_bench_script

    regret = load_bench_script("bench_regret")
    spec = load_workload(workload)
    plan = SteadyPlan(unloaded_e2e_s=1.0, warmup_s=2.0, duration_s=4.0, cooldown_s=1.0)
    runner = SteadyRunner(spec, resolve_pool(spec, replicas=2), plan=plan, closed_loop=True)
    point = runner.point("round-robin", clients)
    sheddable = any(o.priority < 0 for o in spec.objectives)
    assert 0 < point.summary.requests <= point.measured
    assert (point.summary.requests < point.measured) is sheddable
    assert regret.sent_per_s([point], clients) == point.summary.requests / 4.0
    assert regret.sent_per_s([point], clients + 1) is None  # no point at that load
