"""The twin-vs-matrix agreement check (``bench/bench_twin_agreement.py``): its machinery, not the 20 %.

The twin side here; the real side (a tiny matrix of child processes) is
``tests/e2e/test_bench_agreement_real.py``. The 20 % figure itself needs the full sweep under the
bench lock.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from infergate.bench.loadgen import arrival_offsets
from infergate.bench.twin import TwinConfig, run_twin
from infergate.bench.workloads import BenchRequest, WorkloadSpec, generate
from tests.support import load_bench_script

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture(scope="module")
def agreement() -> ModuleType:
    return load_bench_script("bench_twin_agreement")


def tiny(requests: int = 20) -> list[BenchRequest]:
    spec = WorkloadSpec.model_validate(
        {
            "name": "tiny",
            "seed": 9,
            "workload": {
                "type": "mix",
                "requests": requests,
                "prompt": {"mean": 64},
                "answer": {"mean": 10},
                "models": [{"name": MODEL}, {"name": "food-review"}],
            },
        }
    )
    return generate(spec)


def test_verdict_needs_same_ranking_and_twenty_percent(agreement: ModuleType) -> None:
    real = {("a", 1.0): 1.0, ("b", 1.0): 2.0}
    ok = agreement.compare("w", real, {("a", 1.0): 1.1, ("b", 1.0): 1.7})
    assert ok.passed
    assert ok.ranking(1.0, "real") == ok.ranking(1.0, "twin") == ["a", "b"]
    too_far = agreement.compare("w", real, {("a", 1.0): 1.25, ("b", 1.0): 2.0})
    assert not too_far.passed and too_far.same_ranking(1.0)
    flipped = agreement.compare("w", real, {("a", 1.0): 1.15, ("b", 1.0): 1.1})
    assert not flipped.passed and not flipped.same_ranking(1.0)
    assert "FAIL" in agreement.to_markdown(flipped) and "DIFFERENT" in agreement.to_markdown(flipped)
    # a point present on one side only is not compared
    assert len(agreement.compare("w", real, {("a", 1.0): 1.0}).points) == 1


def test_twin_time_scale_stretches_every_step_and_the_frontend() -> None:
    requests = tiny(1)
    one = run_twin(requests, [0.0], strategy="round-robin").records[0]
    slow = run_twin(requests, [0.0], strategy="round-robin", config=TwinConfig(time_scale=3.0)).records[0]
    assert one.ttft is not None and slow.ttft is not None and one.e2e is not None and slow.e2e is not None
    assert slow.ttft == pytest.approx(3 * one.ttft, rel=1e-9)
    assert slow.e2e == pytest.approx(3 * one.e2e, rel=1e-9)
    assert slow.completion_tokens == one.completion_tokens == requests[0].max_tokens


def test_twin_default_time_scale_is_unchanged() -> None:
    requests = tiny(40)
    offsets = arrival_offsets(requests, 20.0, seed=1)
    a = run_twin(requests, offsets, strategy="default")
    b = run_twin(requests, offsets, strategy="default", config=TwinConfig(time_scale=1.0))
    assert [r.ttft for r in a.records] == [r.ttft for r in b.records]


def test_twin_flow_control_queues_in_the_gateway_under_overload() -> None:
    # far beyond 3 replicas' capacity (their frontends take in ~100 a second each): more than
    # the quarter-second each may hold (frontend_wait) piles up within the window
    requests = tiny(400)
    offsets = arrival_offsets(requests, 1200.0, seed=2)
    config = TwinConfig(flow_control=True, max_loras=1)
    with_fc = run_twin(requests, offsets, strategy="round-robin", config=config)
    without = run_twin(requests, offsets, strategy="round-robin", config=TwinConfig(max_loras=1))
    assert with_fc.gateway_queued > 0 and without.gateway_queued == 0
    assert all(r.ok for r in with_fc.records), [r.error for r in with_fc.records if not r.ok][:3]
    assert [r.completion_tokens for r in with_fc.records] == [q.max_tokens for q in requests]
    again = run_twin(requests, offsets, strategy="round-robin", config=config)
    assert [r.ttft for r in again.records] == [r.ttft for r in with_fc.records]


def test_a_swap_between_statistical_ties_is_flagged_as_noise(agreement: ModuleType) -> None:
    real = {("a", 1.0): 1.0, ("b", 1.0): 1.05}
    twin = {("a", 1.0): 1.04, ("b", 1.0): 1.0}
    tied = agreement.compare("w", real, twin, real_ci={("a", 1.0): (0.9, 1.1), ("b", 1.0): (0.95, 1.2)})
    assert not tied.same_ranking(1.0) and tied.swaps_within_noise(1.0)
    apart = agreement.compare("w", real, twin, real_ci={("a", 1.0): (0.9, 0.99), ("b", 1.0): (1.0, 1.2)})
    assert not apart.swaps_within_noise(1.0)
    low, high = agreement.bootstrap_p90([float(x) for x in range(100)])
    assert low < 89.1 < high


def test_within_noise_reading_needs_the_real_value_inside_the_twin_spread(agreement: ModuleType) -> None:
    real = {("a", 1.0): 0.1, ("b", 1.0): 0.9}
    twin = {("a", 1.0): 0.1, ("b", 1.0): 0.4}
    inside = agreement.compare("w", real, twin, twin_range={("b", 1.0): (0.2, 1.5)})
    assert not inside.passed and inside.within_noise
    outside = agreement.compare("w", real, twin, twin_range={("b", 1.0): (0.2, 0.5)})
    assert not outside.within_noise
