"""The SLO rate: the highest request rate whose run meets p90 TTFT/TPOT bounds (issue 7's goodput).

Table-driven checks of the pure computation (run verdict, sweep, search), the report, and a twin
check that bisection finds the capacity a brute-force sweep of a toy pool finds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from infergate.bench.loadgen import RequestRecord, arrival_offsets
from infergate.bench.report import (
    RunResult,
    StrategySloRate,
    slo_rate_markdown,
    slo_rates_from_runs,
    to_markdown,
    write_slo_rates_json,
)
from infergate.bench.stats import Slo, SloRate, find_slo_rate, slo_rate_of_sweep, summarise
from infergate.bench.strategies import BASE_MODEL
from infergate.bench.twin import TwinConfig, run_twin
from infergate.bench.workloads import (
    BenchRequest,
    LengthDist,
    MixWorkload,
    ModelShare,
    WorkloadSpec,
    generate,
)

# Virtual-time runs: CPU-bound, they cannot hang on I/O, and on a loaded 2-core machine they take
# minutes; the suite-wide 120 s hang guard would cut them short.
pytestmark = pytest.mark.timeout(900)


def _records(ttfts: list[float], tpot: float, *, failed: int = 0, tokens: int = 11) -> list[RequestRecord]:
    """One record per TTFT, each with ``tokens`` tokens at ``tpot`` apart, plus ``failed`` 503s."""
    ok = [
        RequestRecord(
            index=i,
            model="m",
            group="g",
            sent_at=float(i),
            status=200,
            ttft=t,
            e2e=t + tpot * (tokens - 1),
            completion_tokens=tokens,
        )
        for i, t in enumerate(ttfts)
    ]
    bad = [
        RequestRecord(index=len(ok) + i, model="m", group="g", sent_at=0.0, status=503, e2e=0.0)
        for i in range(failed)
    ]
    return ok + bad


FAST = [0.1] * 100  # p90 TTFT 0.1 s
SLOW_TAIL = [0.1] * 85 + [2.0] * 15  # p90 TTFT 2 s although 85 % of requests are fast


@pytest.mark.parametrize(
    ("ttfts", "tpot", "failed", "tokens", "sustained"),
    [
        (FAST, 0.02, 0, 11, True),
        (SLOW_TAIL, 0.02, 0, 11, False),  # p90 TTFT over 1 s
        ([0.1] * 91 + [2.0] * 9, 0.02, 0, 11, True),  # 9 % slow: p90 still fast
        (FAST, 0.06, 0, 11, False),  # p90 TPOT over 50 ms
        (FAST, 0.05, 0, 11, False),  # exactly on the bound is a miss (strict <)
        (FAST, 0.02, 1, 11, True),  # 100/101 served: 99.0 % success
        (FAST, 0.02, 2, 11, False),  # 100/102 served: 98.0 % success
        (FAST, 0.0, 0, 1, True),  # one-token answers have no TPOT: that bound holds
        ([], 0.0, 3, 11, False),  # nothing served
    ],
)
def test_a_run_meets_the_slo_on_its_p90s_and_success_rate(
    ttfts: list[float], tpot: float, failed: int, tokens: int, sustained: bool
) -> None:
    s = summarise(_records(ttfts, tpot, failed=failed, tokens=tokens), Slo())
    assert s.meets_slo is sustained
    assert Slo().sustained(s) is sustained


def test_per_request_goodput_and_the_p90_verdict_differ() -> None:
    # 85 % of requests meet the bounds: goodput counts them, but the run misses the p90 SLO
    s = summarise(_records(SLOW_TAIL, 0.02), Slo())
    assert s.slo_attainment == pytest.approx(0.85)
    assert not s.meets_slo
    # a looser SLO stored with the summary is the one applied
    assert summarise(_records(SLOW_TAIL, 0.02), Slo(ttft_s=3.0)).meets_slo


@pytest.mark.parametrize(
    ("points", "qps", "failing", "monotone"),
    [
        ([(4, True), (8, True), (16, True)], 16, None, True),  # never failed: a lower bound
        ([(4, True), (8, True), (16, False)], 8, 16, True),
        ([(16, False), (4, True), (8, True)], 8, 16, True),  # order does not matter
        ([(4, False), (8, False)], 0, 4, True),  # even the lowest rate failed
        ([(4, True), (8, False), (16, True)], 4, 8, False),  # a lucky pass above a failure is ignored
        ([(4, True), (4, True), (8, False)], 4, 8, True),  # repeats collapse
    ],
)
def test_slo_rate_of_a_sweep_is_the_last_pass_before_the_first_miss(
    points: list[tuple[float, bool]], qps: float, failing: float | None, monotone: bool
) -> None:
    rate = slo_rate_of_sweep(points)
    assert (rate.qps, rate.failing, rate.monotone) == (qps, failing, monotone)
    assert rate.bounded is (failing is not None)


def test_a_rate_that_both_met_and_missed_is_an_error() -> None:
    with pytest.raises(ValueError, match="both met and missed"):
        slo_rate_of_sweep([(4, True), (4, False)])


@pytest.mark.parametrize(
    ("capacity", "start", "tolerance"),
    [(37.3, 4.0, 0.02), (37.3, 100.0, 0.02), (5.0, 4.0, 0.01), (0.5, 4.0, 0.02), (1234.0, 4.0, 0.05)],
)
def test_search_brackets_the_capacity_to_the_tolerance(
    capacity: float, start: float, tolerance: float
) -> None:
    calls: list[float] = []

    def met_at(q: float) -> bool:
        calls.append(q)
        return q < capacity

    rate = find_slo_rate(met_at, start=start, tolerance=tolerance)
    assert rate.failing is not None
    assert rate.qps < capacity <= rate.failing
    assert rate.precision is not None and rate.precision <= tolerance
    assert len(calls) == len(set(calls)) == len(rate.probes)  # no rate run twice
    # the same search probes the same rates: reproducible
    assert find_slo_rate(lambda q: q < capacity, start=start, tolerance=tolerance) == rate


def test_search_without_tolerance_stops_at_the_coarse_bracket() -> None:
    rate = find_slo_rate(lambda q: q < 20.0, start=4.0, tolerance=None)
    assert (rate.qps, rate.failing) == (4.0 * 1.25**7, 4.0 * 1.25**8)
    # nothing fails below max_rate: only a lower bound
    unbounded = find_slo_rate(lambda q: True, start=4.0, max_rate=10.0)
    assert not unbounded.bounded and unbounded.qps == 4.0 * 1.25**4
    with pytest.raises(ValueError):
        find_slo_rate(lambda q: True, start=0.0)


def _rate(qps: float, failing: float | None) -> SloRate:
    return slo_rate_of_sweep([(qps, True), *([(failing, False)] if failing else [])])


def test_report_shows_ratios_to_round_robin_and_greedy_true_state(tmp_path: Path) -> None:
    rates = [
        StrategySloRate(workload="w", strategy="round-robin", rate=_rate(20.0, 20.4)),
        StrategySloRate(workload="w", strategy="default", rate=_rate(30.0, 30.5)),
        StrategySloRate(workload="w", strategy="greedy-true-state", rate=_rate(40.0, 40.6)),
        StrategySloRate(workload="w", strategy="random", rate=_rate(50.0, None)),
    ]
    md = slo_rate_markdown(rates)
    assert "| w | default | 30.0 | 30.5 | 2 | 1.50× | 0.75× |" in md
    assert "| w | round-robin | 20.0 | 20.4 | 2 | 1.00× | 0.50× |" in md
    assert "| w | random | ≥ 50.0 | - | 1 | ≥ 2.50× | ≥ 1.25× |" in md
    write_slo_rates_json(rates, tmp_path / "r.json")
    data = {d["strategy"]: d for d in json.loads((tmp_path / "r.json").read_text())}
    assert data["default"]["ratio_to_round-robin"] == pytest.approx(1.5)
    assert data["default"]["ratio_to_greedy-true-state"] == pytest.approx(0.75)
    assert data["random"]["bounded"] is False


def test_markdown_report_derives_slo_rates_from_a_sweep() -> None:
    def run(strategy: str, load: float, ttft: float) -> RunResult:
        s = summarise(_records([ttft] * 10, 0.01), Slo())
        return RunResult(workload="w", strategy=strategy, load=load, load_kind="qps", summary=s)

    results = [
        run("round-robin", 4, 0.1),
        run("round-robin", 8, 1.5),
        run("default", 4, 0.1),
        run("default", 8, 0.2),
    ]
    rates = {r.strategy: r.rate for r in slo_rates_from_runs(results)}
    assert (rates["round-robin"].qps, rates["round-robin"].failing) == (4, 8)
    assert not rates["default"].bounded
    md = to_markdown(results)
    assert "SLO rate" in md and "| w | default | ≥ 8.0 | - | 2 | ≥ 2.00× | - |" in md
    # a single load point per strategy is not a sweep: no SLO-rate table
    assert "SLO rate" not in to_markdown(results[:1])


def _toy() -> list[BenchRequest]:
    """Base-model requests of fixed length: no prefix or adapter effects, only compute."""
    body = MixWorkload(
        type="mix",
        requests=200,
        prompt=LengthDist(mean=1024),
        answer=LengthDist(mean=32),
        models=(ModelShare(name=BASE_MODEL),),
    )
    return generate(WorkloadSpec(name="toy", workload=body))


def test_twin_bisection_finds_the_capacity_a_brute_force_sweep_finds() -> None:
    requests = _toy()

    def met_at(q: float, replicas: int = 1) -> bool:
        offsets = arrival_offsets(requests, q, seed=0)
        config = TwinConfig(replicas=replicas, adapters=())
        return summarise(run_twin(requests, offsets, strategy="round-robin", config=config).records).meets_slo

    found = find_slo_rate(met_at, start=4.0, tolerance=0.02)
    assert found.bounded and found.monotone and 10 < found.qps < 100
    # brute force: every 0.5 QPS around it, the first miss of the dense sweep
    grid = [round(found.qps * 0.85 + 0.5 * i, 2) for i in range(int(found.qps * 0.3 / 0.5) + 1)]
    dense = slo_rate_of_sweep((q, met_at(q)) for q in grid)
    assert dense.bounded and dense.qps > grid[0]
    assert math.isclose(found.qps, dense.qps, rel_tol=0.02, abs_tol=0.5)
    # a pool twice as large carries at least twice the rate (batching helps, never hurts)
    double = find_slo_rate(lambda q: met_at(q, replicas=2), start=found.qps, tolerance=0.02)
    assert double.qps >= 1.9 * found.qps
