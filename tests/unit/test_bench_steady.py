"""Steady-state twin runs: arrivals, pool shape, strategy names, the early verdict, the CLI's JSON."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import statistics
from pathlib import Path

import pytest

from infergate.bench.arrivals import ArrivalProcess, RateProfile, arrival_times, parse_arrival
from infergate.bench.loadgen import RequestRecord
from infergate.bench.stats import Slo, percentile
from infergate.bench.steady import (
    PoolShape,
    SteadyPlan,
    SteadyRunner,
    _fails_at,
    _Verdict,
    map_models,
    plan_for,
    resolve_pool,
    unloaded_e2e,
)
from infergate.bench.strategies import BASE_MODEL, GREEDY, resolve_strategy
from infergate.bench.workloads import OBJECTIVE_HEADER, builtin_workloads, load_workload, stream

# Virtual-time runs: CPU-bound, they cannot hang on I/O, and on a loaded 2-core machine they take
# minutes; the suite-wide 120 s hang guard would cut them short.
pytestmark = pytest.mark.timeout(900)


def test_gamma_arrivals_have_the_rate_and_the_cv_of_their_shape() -> None:
    for shape in (0.25, 1.0, 4.0):
        times = arrival_times(ArrivalProcess("gamma", shape), 50.0, 2000.0, random.Random(1))
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(times) / 2000.0 == pytest.approx(50.0, rel=0.05)
        assert statistics.pstdev(gaps) / statistics.mean(gaps) == pytest.approx(1 / math.sqrt(shape), rel=0.1)
    assert parse_arrival("gamma:0.25") == ArrivalProcess("gamma", 0.25)
    assert parse_arrival("poisson") == ArrivalProcess()
    for bad in ("gamma:0", "gamma:x", "uniform"):
        with pytest.raises(ValueError, match="poisson' or 'gamma:SHAPE"):
            parse_arrival(bad)


def test_a_rate_profile_keeps_the_mean_rate_and_shapes_the_density() -> None:
    profile = RateProfile((0.5, 1.5))  # linear from 0.5 to 1.5 before rescaling: mean already 1
    assert profile.multiplier(0.0) == pytest.approx(0.5) and profile.multiplier(1.0) == pytest.approx(1.5)
    assert RateProfile((1.0, 3.0)).multiplier(0.0) == pytest.approx(0.5)  # rescaled to mean 1
    times = arrival_times(ArrivalProcess(), 40.0, 1000.0, random.Random(2), profile=profile)
    first = sum(1 for t in times if t < 100.0)  # rate ~0.55x at the start
    last = sum(1 for t in times if t >= 900.0)  # ~1.45x at the end
    assert len(times) / 1000.0 == pytest.approx(40.0, rel=0.05)
    assert first / 100.0 == pytest.approx(40.0 * 0.55, rel=0.15)
    assert last / 100.0 == pytest.approx(40.0 * 1.45, rel=0.1)


def test_strategy_names_resolve_flow_control() -> None:
    assert resolve_strategy("default").flow_control is True
    assert resolve_strategy("default+nofc").flow_control is False
    assert resolve_strategy("round-robin").flow_control is None
    assert resolve_strategy("prefix-only+fc").flow_control is True
    assert resolve_strategy(GREEDY).greedy
    for bad, message in (("oracle", "unknown strategy"), ("round-robin+x", "unknown suffix")):
        with pytest.raises(ValueError, match=message):
            resolve_strategy(bad)


def test_workload_pool_defaults_and_flags_override() -> None:
    rag = load_workload("long-context-rag")
    shape = resolve_pool(rag)
    assert (shape.replicas, shape.adapters, str(shape.arrival)) == (4, (), "gamma:0.25")
    over = resolve_pool(rag, replicas=9, adapters=["x"], max_loras=1, arrival="poisson")
    assert (over.replicas, over.adapters, over.max_loras, str(over.arrival)) == (9, ("x",), 1, "poisson")
    assert resolve_pool(load_workload("multi-tenant-chat")).adapters == (
        "food-review",
        "cad-fabricator",
        "legal-summarizer",
    )


def test_model_names_map_onto_the_pools_adapters() -> None:
    zipf = stream(load_workload("lora-zipf"), 400)
    mapping = map_models(zipf, PoolShape(adapters=("a", "b")))
    assert set(mapping.values()) == {"a", "b"} and len(mapping) == 8
    assert map_models(zipf, PoolShape(adapters=()))["lora-3"] == BASE_MODEL
    tutorial = stream(load_workload("tutorial-mix"), 200)
    assert all(k == v for k, v in map_models(tutorial, PoolShape()).items())  # served names stay


def test_the_corpus_covers_the_issue_kinds_with_pools_of_3_to_16() -> None:
    names = set(builtin_workloads())
    assert len(names) >= 10
    pools = {resolve_pool(load_workload(n)).replicas for n in names}
    assert min(pools) == 3 and max(pools) == 16
    prio = stream(load_workload("mixed-priorities"), 1000)
    shares = {o: sum(r.objective == o for r in prio) / 1000 for o in ("critical", "standard", "sheddable")}
    assert shares == pytest.approx({"critical": 0.2, "standard": 0.5, "sheddable": 0.3}, abs=0.05)
    assert prio[0].headers == {OBJECTIVE_HEADER: prio[0].objective}
    agent = stream(load_workload("agentic-sessions"), 600)
    first, later = agent[0], agent[25 * 3]  # the same session three turns later carries more context
    assert first.messages is not None and later.messages is not None
    assert later.messages[: len(first.messages)] == first.messages and len(later.messages) == 8
    mix = stream(load_workload("prefill-decode-mix"), 400)
    long_prompts = [r for r in mix if r.group == "prefill-heavy"]
    assert all(r.max_tokens == 20 for r in long_prompts) and 120 < len(long_prompts) < 280


def test_the_p90_failure_count_surely_moves_the_p90() -> None:
    for n in (1, 2, 9, 10, 11, 57, 100, 1001):
        k = _fails_at(n)
        assert percentile([0.0] * (n - k) + [5.0] * k, 90) >= 1.0
        assert k <= n // 10 + 2  # and it is no more than one or two above the 10 %
    assert percentile([0.0] * 90 + [5.0] * 10, 90) < 1.0 and _fails_at(100) == 11


def test_the_verdict_stops_only_when_the_slo_is_surely_missed() -> None:
    records = [RequestRecord(index=i, model="m", group="", sent_at=0.0) for i in range(100)]
    verdict = _Verdict(range(100), records, Slo(), [10] * 100)
    for r in records[:11]:  # 11 of 100 with TTFT 2 s: one of them could be the 1 % allowed to fail
        r.status, r.ttft, r.e2e, r.completion_tokens = 200, 2.0, 2.5, 10
    assert not verdict(1.0, records)
    records[11].status, records[11].ttft, records[11].e2e, records[11].completion_tokens = 200, 2.0, 2.5, 10
    assert verdict(1.0, records) and "TTFT" in (verdict.reason or "")
    # unfinished requests past TTFT bound + 9 x TPOT bound (1.45 s) miss one bound or the other
    late = [RequestRecord(index=i, model="m", group="", sent_at=0.0) for i in range(100)]
    watch = _Verdict(range(100), late, Slo(), [10] * 100)
    assert not watch(1.4, late)
    assert watch(1.5, late) and "overdue" in (watch.reason or "")


def _tiny_runner(name: str, **shape: object) -> SteadyRunner:
    spec = load_workload(name)
    plan = SteadyPlan(unloaded_e2e_s=1.0, warmup_s=2.0, duration_s=4.0, cooldown_s=0.5)
    return SteadyRunner(spec, resolve_pool(spec, replicas=2, **shape), plan=plan)  # type: ignore[arg-type]


def test_points_measure_the_window_only_with_fresh_streams_per_rate() -> None:
    runner = _tiny_runner("tutorial-mix")
    a = runner.point("round-robin", 10.0)
    b = runner.point("least-in-flight", 10.0)
    runner.point("round-robin", 12.0)
    times = arrival_times(runner.shape.arrival, 10.0, 6.5, random.Random(f"tutorial-mix:0:{10.0:.9g}"))
    assert a.measured == sum(1 for t in times if 2.0 <= t < 6.0) < a.total == len(times)
    assert a.summary.requests == a.measured  # warm-up and cool-down are not in the statistics
    assert a.total == b.total  # same stream for every strategy at one rate
    requests_a, _ = runner._stream(10.0)
    requests_c, _ = runner._stream(12.0)
    assert requests_a[0].messages != requests_c[0].messages or requests_a[0].prompt != requests_c[0].prompt
    assert not a.flow_control and runner.point("default", 10.0).flow_control
    assert runner.point("round-robin+fc", 10.0).flow_control


def test_a_run_far_above_capacity_stops_early_and_misses() -> None:
    runner = _tiny_runner("long-context-rag")
    point = runner.point("round-robin", 200.0)
    assert not point.met and point.stopped_early is not None
    assert point.virtual_s < runner.plan.warmup_s + runner.plan.duration_s + 10.0


def test_plan_follows_the_unloaded_latency() -> None:
    assert plan_for(0.5).duration_s == 60.0 and plan_for(0.5).warmup_s == 10.0
    long = plan_for(5.0)
    assert (long.duration_s, long.warmup_s, long.cooldown_s) == (100.0, 25.0, 10.0)


def test_cli_twin_slo_rate_writes_rates_by_strategy(tmp_path: Path) -> None:
    from infergate.bench.cli import main

    out = tmp_path / "r"
    argv = ["--twin", "--workload", "lora-zipf", "--replicas", "2", "--adapters", "a,b,c", "--max-loras", "1"]
    argv += ["--arrival", "gamma:2", "--slo-rate", "--tolerance", "0.2", "--duration", "6", "--warmup", "2"]
    argv += ["--strategies", "round-robin,lora-only", "--no-plots", "--out", str(out)]
    assert main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["pool"] == {
        "replicas": 2,
        "adapters": ["a", "b", "c"],
        "max_loras": 1,
        "arrival": "gamma:2",
        "rate_profile": None,
    }
    for name in ("round-robin", "lora-only"):
        entry = data["strategies"][name]
        assert entry["slo_rate_qps"] > 0 and entry["points"]
        assert {p["duration_s"] for p in entry["points"]} == {6.0}
        passed = [p["qps"] for p in entry["points"] if p["meets_slo"]]
        assert max(passed) == entry["slo_rate_qps"]
    assert "SLO rate (QPS)" in (out / "results.md").read_text()


def test_cli_rejects_unknown_arrivals_and_strategies(capsys: pytest.CaptureFixture[str]) -> None:
    from infergate.bench.cli import main

    assert main(["--twin", "--workload", "bursts", "--arrival", "weibull", "--slo-rate"]) == 2
    assert "weibull" in capsys.readouterr().err
    assert main(["--twin", "--workload", "bursts", "--strategies", "oracle"]) == 2
    assert "unknown strategy 'oracle'" in capsys.readouterr().err
    assert main(["--url", "http://127.0.0.1:9", "--workload", "bursts", "--arrival", "poisson"]) == 2
    assert "only apply to --twin" in capsys.readouterr().err


def test_matrix_replicas_serve_the_workloads_pool(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The matrix loads the workload's adapters (lora-zipf: lora-0..7, 2 slots) and sends requests
    that name them, as the twin does; before, it loaded the tutorial's three and every request
    got a 404."""
    from infergate.bench import cli
    from infergate.bench.matrix import MatrixOutcome

    seen: dict[str, object] = {}

    def fake_sweep(
        requests: object, *, workload: str, args: object, slo: object, shape: PoolShape
    ) -> MatrixOutcome:
        seen["requests"], seen["shape"] = requests, shape
        return MatrixOutcome()

    monkeypatch.setattr(cli, "run_matrix_sweep", fake_sweep)
    args = ["--matrix", "--workload", "lora-zipf", "--limit", "40", "--no-plots", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    shape = seen["shape"]
    assert isinstance(shape, PoolShape)
    assert shape.adapters == tuple(f"lora-{i}" for i in range(8)) and shape.max_loras == 2
    assert shape.replicas == 4
    models = {r.model for r in seen["requests"]}  # type: ignore[attr-defined]
    assert models and models <= set(shape.adapters)
    assert cli.main([*args, "--adapters", "a,b", "--max-loras", "1"]) == 0
    shape = seen["shape"]
    assert isinstance(shape, PoolShape) and shape.adapters == ("a", "b") and shape.max_loras == 1
    assert {r.model for r in seen["requests"]} == {"a", "b"}  # type: ignore[attr-defined]
    capsys.readouterr()
    assert cli.main(["--url", "http://127.0.0.1:9", "--workload", "bursts", "--adapters", "a"]) == 2
    assert "only apply to --twin or --matrix" in capsys.readouterr().err


def test_help_lists_workloads_strategies_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from infergate.bench.cli import main

    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())  # undo the help's wrapping
    assert "long-context-rag" in text and GREEDY in text and "+fc" in text and "default 0.02" in text


@pytest.mark.parametrize(
    ("strategy", "matrix_flow_control", "expected"),
    [("default", False, True), ("default+nofc", True, False), ("round-robin+fc", False, True),
     ("round-robin", False, False), ("round-robin", True, True)],
)  # fmt: skip
def test_matrix_routers_run_the_flow_control_the_strategy_names(
    tmp_path: Path, strategy: str, matrix_flow_control: bool, expected: bool
) -> None:
    """``default+nofc`` in the matrix starts the gateway with --no-flow-control (it ran with flow
    control before: the suffix was dropped); a bare name follows the matrix's setting."""
    from infergate.bench.matrix import MatrixConfig, _Stack

    stack = _Stack(MatrixConfig(flow_control=matrix_flow_control), tmp_path)
    assert stack._flow_control(strategy) is expected


@pytest.mark.parametrize(
    ("strategy", "message"),
    [("default+xyz", "unknown suffix '+xyz'"), ("bogus+nofc", "unknown strategy 'bogus+nofc'"),
     ("sglang-router:cache_aware+nofc", "unknown strategy")],
)  # fmt: skip
def test_matrix_refuses_bad_strategy_suffixes_before_starting_anything(
    tmp_path: Path, strategy: str, message: str
) -> None:
    import asyncio

    from infergate.bench.matrix import MatrixConfig, run_matrix

    config = MatrixConfig(strategies=["default+nofc", strategy], workdir=tmp_path)
    with pytest.raises(ValueError, match=re.escape(message)):
        asyncio.run(run_matrix([], workload="w", config=config))
    assert not any(tmp_path.iterdir())


def test_a_mixed_pool_names_its_profiles_and_the_matrix_starts_each_replica_on_its_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """mixed-gpus: two H100 and two A100 replicas; the matrix's replicas get ``--profile`` in turn."""
    from infergate.bench import cli, matrix

    shape = resolve_pool(load_workload("mixed-gpus"))
    assert (shape.replicas, shape.profiles) == (4, ("llama3.1-8b-h100", "llama3.1-8b-a100"))
    assert "profiles llama3.1-8b-h100,llama3.1-8b-a100 (cycled)" in shape.describe()
    seen: list[matrix.MatrixConfig] = []

    async def fake_run(requests: object, *, config: matrix.MatrixConfig, **_: object) -> matrix.MatrixOutcome:
        seen.append(config)
        return matrix.MatrixOutcome()

    monkeypatch.setattr(matrix, "run_matrix", fake_run)
    args = ["--matrix", "--workload", "mixed-gpus", "--limit", "8", "--no-plots", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    (config,) = seen
    profiles = []
    for i in range(config.replicas):
        argv = matrix.replica_argv(config, i, 8000 + i)
        profiles.append(argv[argv.index("--profile") + 1])
    assert profiles == ["llama3.1-8b-h100", "llama3.1-8b-a100"] * 2
    plain = matrix.replica_argv(matrix.MatrixConfig(), 0, 8000)
    assert "--profile" not in plain  # a pool without profiles leaves the simulator's default


def test_a_mixed_pools_unloaded_latency_is_its_slowest_profiles() -> None:
    spec = load_workload("mixed-gpus")
    h100 = unloaded_e2e(spec, PoolShape(adapters=(), profiles=("llama3.1-8b-h100",)))
    a100 = unloaded_e2e(spec, PoolShape(adapters=(), profiles=("llama3.1-8b-a100",)))
    assert a100 > 1.2 * h100
    assert unloaded_e2e(spec, resolve_pool(spec)) == a100


def test_an_unknown_profile_is_an_error_naming_it(tmp_path: Path) -> None:
    from infergate.bench.workloads import WorkloadError

    bad = tmp_path / "w.yaml"
    bad.write_text(
        "name: x\nworkload: {type: mix, requests: 4, models: [{name: m}]}\n"
        "pool: {replicas: 2, profiles: [llama3.1-8b-h100, llama3.1-8b-b200]}\n"
    )
    with pytest.raises(WorkloadError, match=r"pool\.profiles.*llama3\.1-8b-b200.*known: llama3\.1-8b-a100"):
        load_workload(bad)
