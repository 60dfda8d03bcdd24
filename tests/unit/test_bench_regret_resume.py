"""``bench/bench_regret.py --resume``: searches an interrupted run recorded are taken, not repeated."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from infergate.bench.stats import SloRate
from infergate.bench.steady import SteadyPlan
from tests.support import load_bench_script


@pytest.fixture(scope="module")
def regret() -> ModuleType:
    return load_bench_script("bench_regret")


PLAN = SteadyPlan(unloaded_e2e_s=1.0, warmup_s=5.0, duration_s=15.0, cooldown_s=2.0)


def _task(regret: ModuleType, workload: str, strategy: str, *, closed_loop: bool = False) -> object:
    return regret.Task(
        workload=workload,
        strategy=strategy,
        plan=PLAN,
        start=None,
        tolerance=0.05,
        factor=1.5,
        seed=0,
        scout=False,
        closed_loop=closed_loop,
    )


def test_recorded_searches_are_reused_and_only_the_others_run(
    regret: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / "old.jsonl"
    line = {
        "workload": "bursts",
        "strategy": "round-robin",
        "cpu_s": 4.5,
        "qps": 43.66,
        "failing": 45.56,
        "probes": [[43.66, True], [45.56, False]],
    }
    old.write_text(json.dumps(line) + "\n\n")
    recorded = regret._recorded(old)
    assert recorded == {
        ("bursts", "round-robin"): (
            SloRate(qps=43.66, failing=45.56, probes=((43.66, True), (45.56, False))),
            4.5,
            None,
        )
    }

    def task(workload: str, strategy: str) -> object:
        return _task(regret, workload, strategy)

    ran: list[tuple[str, str]] = []

    def fake_run(tasks: list[object], jobs: int, partial: Path) -> list[object]:
        ran.extend((t.workload, t.strategy) for t in tasks)  # type: ignore[attr-defined]
        return []

    monkeypatch.setattr(regret, "_run_tasks", fake_run)
    partial = tmp_path / "partial.jsonl"
    out = regret._run_all([task("bursts", "round-robin"), task("bursts", "default")], 1, partial, recorded)
    assert ran == [("bursts", "default")]  # only the search not recorded runs
    assert [(o.task.strategy, o.rate.qps, o.cpu_s) for o in out] == [("round-robin", 43.66, 4.5)]
    # the new partial.jsonl lists the reused search too, so it can itself be resumed from
    assert regret._recorded(partial) == recorded


def test_warmup_overrides_the_rules_and_keeps_the_window(regret: ModuleType) -> None:
    quick = regret.plan_of("bursts", quick=True, duration=15.0)
    long = regret.plan_of("bursts", quick=True, duration=15.0, warmup=60.0)
    assert quick.warmup_s < 60.0 and long.warmup_s == 60.0
    assert long.duration_s == quick.duration_s == 15.0
    assert regret.plan_of("bursts", quick=False, warmup=45.0).warmup_s == 45.0


@pytest.mark.parametrize("text", ["-1", "nan", "inf", "soon"])
def test_a_bad_warmup_is_refused_before_any_file_is_written(
    regret: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["bench_regret.py", "--warmup", text, "--out", str(out)])
    with pytest.raises(SystemExit) as exited:
        regret.main()
    assert exited.value.code == 2 and not out.exists()


def test_a_closed_loop_search_keeps_the_rate_its_clients_sent(regret: ModuleType, tmp_path: Path) -> None:
    # at one client count a router that answers sooner is sent more: the table gives that rate
    # beside the SLO concurrency, and a resumed run keeps it
    line = {
        "workload": "classify",
        "strategy": "default",
        "cpu_s": 9.0,
        "qps": 61.0,
        "failing": 64.0,
        "probes": [[61.0, True], [64.0, False]],
        "sent_per_s": 380.4,
    }
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps(line) + "\n")
    recorded = regret._recorded(old)
    assert recorded[("classify", "default")][2] == 380.4
    task = _task(regret, "classify", "default", closed_loop=True)
    partial = tmp_path / "partial.jsonl"
    (out,) = regret._run_all([task], 1, partial, recorded)
    assert out.sent_per_s == 380.4 and regret._recorded(partial) == recorded
    rates = {"classify": {"default": out.rate, "round-robin": SloRate(qps=40.0, failing=42.0, probes=())}}
    table = regret.regret_markdown(
        rates,
        {"classify": "4 replicas"},
        ["default", "round-robin"],
        closed_loop=True,
        sent={"classify": {"default": 380.4, "round-robin": None}},
    )
    assert "| classify (4 replicas) | **61 (380/s)** · 1.00 · 1.52×rr | 40 · 0.66 · 1.00×rr |" in table
