"""Replicas joining and leaving a twin pool during a run (``pool.scale``), as an autoscaler or a
node drain changes an InferencePool's endpoints."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from infergate.bench.loadgen import arrival_offsets
from infergate.bench.steady import SteadyPlan, SteadyRunner, resolve_pool
from infergate.bench.twin import TwinConfig, run_twin
from infergate.bench.workloads import WorkloadError, generate, load_workload

pytestmark = pytest.mark.timeout(900)  # virtual-time runs: CPU-bound, slow on a loaded machine

_SCALING = """
name: scaling
seed: 5
workload:
  type: mix
  requests: 200
  prompt: {kind: fixed, mean: 100}
  answer: {kind: fixed, mean: 20}
  models:
    - {name: meta-llama/Llama-3.1-8B-Instruct}
pool:
  replicas: 2
  adapters: []
  scale: [{at: 0.25, replicas: 2}, {at: 0.75, replicas: -1}]
"""


def _keys(n: int) -> list[str]:
    return [f"10.0.0.{i + 1}:8000" for i in range(n)]


@pytest.mark.parametrize("strategy", ["round-robin", "default", "greedy-true-state"])
def test_a_replica_serves_only_while_it_is_in_the_pool(strategy: str) -> None:
    """2 replicas, 2 more at 5 s, the last of them gone at 10 s: the joiners get nothing before
    5 s and the one that left nothing after 10 s (it finishes what it runs); every request is
    served."""
    requests = generate(load_workload("sharegpt-like"))[:300]
    offsets = arrival_offsets(requests, 20.0, seed=1)  # 15 s
    cfg = TwinConfig(replicas=2, adapters=(), scale=((5.0, 2), (10.0, -1)))
    out = run_twin(requests, offsets, strategy=strategy, config=cfg, sample_interval=0.25)
    assert all(r.ok for r in out.records)
    first, second, third, fourth = _keys(4)
    assert set(out.per_endpoint_requests) == {first, second, third, fourth}
    assert out.per_endpoint_requests[third] > out.per_endpoint_requests[fourth] > 0
    for key in (third, fourth):
        assert all(load == 0.0 for t, load in out.load_series[key] if t < 5.0)
        assert any(load > 0.0 for t, load in out.load_series[key] if t >= 5.0)
    after = [load for t, load in out.load_series[fourth] if t >= 10.0]  # it only drains
    assert after[0] > 0.0 and after[-1] == 0.0
    assert all(b <= a for a, b in itertools.pairwise(after))


def test_a_pool_cannot_scale_below_one_replica_nor_join_without_a_role() -> None:
    requests = generate(load_workload("sharegpt-like"))[:5]
    with pytest.raises(ValueError, match="below one replica"):
        run_twin(requests, [0.0] * 5, strategy="round-robin", config=TwinConfig(scale=((1.0, -3),)))
    roles = TwinConfig(replicas=2, adapters=(), roles=("prefill", "decode"), scale=((1.0, 1),))
    with pytest.raises(ValueError, match="2 roles for 3 replicas"):
        run_twin(requests, [0.0] * 5, strategy="round-robin", config=roles)


def test_scale_events_are_placed_in_the_measured_window(tmp_path: Path) -> None:
    path = tmp_path / "scaling.yaml"
    path.write_text(_SCALING)
    spec = load_workload(str(path))
    shape = resolve_pool(spec)
    assert shape.scale == ((0.25, 2), (0.75, -1))
    assert shape.replicas_label() == "2→4→3 replicas"
    assert "+2 at 25% of the window, -1 at 75% of the window" in shape.describe()
    plan = SteadyPlan(unloaded_e2e_s=1.0, warmup_s=2.0, duration_s=8.0, cooldown_s=0.5)
    runner = SteadyRunner(spec, shape, plan=plan)
    assert runner.config.scale == ((4.0, 2), (8.0, -1))  # seconds after the first arrival
    point = runner.point("round-robin", 10.0)
    assert point.met and len(point.per_endpoint_requests) == 4


@pytest.mark.parametrize(
    ("scale", "message"),
    [
        ("[{at: 0.5, replicas: 0}]", "must be non-zero"),
        ("[{at: 1.5, replicas: 1}]", "less than or equal to 1"),
        ("[{at: 0.6, replicas: 1}, {at: 0.2, replicas: -1}]", "in order of 'at'"),
    ],
)
def test_a_bad_scale_event_is_refused_naming_it(tmp_path: Path, scale: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(_SCALING.replace("[{at: 0.25, replicas: 2}, {at: 0.75, replicas: -1}]", scale))
    with pytest.raises(WorkloadError, match=message):
        load_workload(str(path))


def test_a_pool_that_would_scale_below_one_replica_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shrink.yaml"
    path.write_text(_SCALING.replace("{at: 0.25, replicas: 2}, ", ""))
    spec = load_workload(str(path))
    assert resolve_pool(spec).replicas_label() == "2→1 replicas"
    with pytest.raises(ValueError, match="a pool of 1 would drop to 0 replicas at 75% of the window"):
        resolve_pool(spec, replicas=1)


def test_runs_without_a_window_refuse_a_scaling_pool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fixed-list twin replay (``--limit``) has no measured window to place the events in,
    ``--matrix`` starts real replicas it does not add or remove, and the pool behind ``--url`` is
    not the bench's to change: each says so instead of running a pool that never changes."""
    from infergate.bench.cli import main

    path = tmp_path / "scaling.yaml"
    path.write_text(_SCALING)
    out = ["--no-plots", "--out", str(tmp_path / "out")]
    assert main(["--twin", "--workload", str(path), "--limit", "20", "--qps", "2", *out]) == 2
    assert "changes its pool during the run (pool.scale)" in capsys.readouterr().err
    assert main(["--matrix", "--workload", str(path), "--limit", "20", *out]) == 2
    assert "--matrix cannot do" in capsys.readouterr().err
    assert main(["--url", "http://127.0.0.1:9", "--workload", str(path), *out]) == 2
    assert "the pool behind --url does not do on cue" in capsys.readouterr().err
