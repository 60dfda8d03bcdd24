"""Replicas whose GPUs slow down during a twin run (``pool.slow``): thermal throttling, a neighbour
on the GPU, a degraded card. The gateway is not told; it sees only the answers."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from infergate.bench.loadgen import arrival_offsets
from infergate.bench.steady import SteadyPlan, SteadyRunner, resolve_pool
from infergate.bench.twin import TwinConfig, run_twin
from infergate.bench.workloads import WorkloadError, generate, load_workload

pytestmark = pytest.mark.timeout(900)  # virtual-time runs: CPU-bound, slow on a loaded machine

_SLOWING = """
name: slowing
seed: 5
workload:
  type: mix
  requests: 200
  prompt: {kind: fixed, mean: 100}
  answer: {kind: fixed, mean: 40}
  models:
    - {name: meta-llama/Llama-3.1-8B-Instruct}
pool:
  replicas: 2
  adapters: []
  slow: [{at: 0.25, replica: 1, factor: 3}, {at: 0.75, replica: 1, factor: 1}]
"""


def _workload(tmp_path: Path, text: str = _SLOWING) -> Path:
    path = tmp_path / "slowing.yaml"
    path.write_text(text)
    return path


def test_a_slowed_replica_decodes_that_much_slower_from_then_on(tmp_path: Path) -> None:
    """One replica at a light load, its steps four times as long from 5 s: the time per output
    token of what it serves after that is four times what it was (the batch barely changes)."""
    requests = generate(load_workload(str(_workload(tmp_path))))[:120]
    offsets = arrival_offsets(requests, 8.0, seed=1)  # 15 s
    cfg = TwinConfig(replicas=1, adapters=(), slow=((5.0, 0, 4.0),))
    out = run_twin(requests, offsets, strategy="round-robin", config=cfg)
    assert all(r.ok for r in out.records)
    ended = [(r.sent_at, r.sent_at + r.e2e, r.tpot) for r in out.records if r.e2e and r.tpot]
    before = [tpot for _, end, tpot in ended if end < 5.0]
    after = [tpot for sent, _, tpot in ended if sent > 5.5]
    assert len(before) > 20 and len(after) > 20
    ratio = statistics.median(after) / statistics.median(before)
    assert 3.5 < ratio < 4.5


def test_the_default_sends_less_to_a_replica_that_slowed_down() -> None:
    """Two H100s, one of them three times slower from 1 s on: round-robin keeps splitting evenly,
    the default shifts the load to the one that kept its pace."""
    requests = generate(load_workload("sharegpt-like"))[:600]
    offsets = arrival_offsets(requests, 20.0, seed=2)  # 30 s
    cfg = TwinConfig(replicas=2, adapters=(), slow=((1.0, 1, 3.0),))
    fast, slow = "10.0.0.1:8000", "10.0.0.2:8000"
    even = run_twin(requests, offsets, strategy="round-robin", config=cfg).per_endpoint_requests
    assert abs(even[fast] - even[slow]) <= 1
    shifted = run_twin(requests, offsets, strategy="default", config=cfg).per_endpoint_requests
    assert shifted[slow] < 0.8 * shifted[fast]


def test_slow_events_are_placed_in_the_measured_window(tmp_path: Path) -> None:
    spec = load_workload(str(_workload(tmp_path)))
    shape = resolve_pool(spec)
    assert shape.slow == ((0.25, 1, 3.0), (0.75, 1, 1.0))
    assert "replica 1 steps ×3 at 25%, replica 1 steps ×1 at 75%" in shape.describe()
    plan = SteadyPlan(unloaded_e2e_s=1.0, warmup_s=2.0, duration_s=8.0, cooldown_s=0.5)
    runner = SteadyRunner(spec, shape, plan=plan)
    assert runner.config.slow == ((4.0, 1, 3.0), (8.0, 1, 1.0))  # seconds after the first arrival


@pytest.mark.parametrize(
    ("slow", "message"),
    [
        ("[{at: 0.5, replica: 0, factor: 0}]", "greater than 0"),
        ("[{at: 0.5, replica: -1, factor: 2}]", "greater than or equal to 0"),
        ("[{at: 0.6, replica: 0, factor: 2}, {at: 0.2, replica: 0, factor: 1}]", "in order of 'at'"),
    ],
)
def test_a_bad_slow_event_is_refused_naming_it(tmp_path: Path, slow: str, message: str) -> None:
    text = _SLOWING.replace("[{at: 0.25, replica: 1, factor: 3}, {at: 0.75, replica: 1, factor: 1}]", slow)
    with pytest.raises(WorkloadError, match=message):
        load_workload(str(_workload(tmp_path, text)))


def test_a_slow_event_for_a_replica_that_never_runs_is_refused(tmp_path: Path) -> None:
    spec = load_workload(str(_workload(tmp_path)))
    with pytest.raises(ValueError, match=r"pool\.slow names replica 1, but only 1 start or join"):
        resolve_pool(spec, replicas=1)
    requests = generate(spec)[:5]
    with pytest.raises(ValueError, match="slow event for replica 2 of 2"):
        run_twin(
            requests, [0.0] * 5, strategy="round-robin", config=TwinConfig(replicas=2, slow=((1.0, 2, 2.0),))
        )


def test_runs_without_a_window_refuse_a_slowing_pool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As with ``pool.scale``: no window to place the events in (``--limit``), real replicas the
    bench cannot slow (``--matrix``, ``--url``)."""
    from infergate.bench.cli import main

    path = str(_workload(tmp_path))
    out = ["--no-plots", "--out", str(tmp_path / "out")]
    assert main(["--twin", "--workload", path, "--limit", "20", "--qps", "2", *out]) == 2
    assert "changes its pool during the run (pool.slow)" in capsys.readouterr().err
    assert main(["--matrix", "--workload", path, "--limit", "20", *out]) == 2
    assert "(pool.slow), which --matrix cannot do" in capsys.readouterr().err
    assert main(["--url", "http://127.0.0.1:9", "--workload", path, *out]) == 2
    assert "(pool.slow), which the pool behind --url does not do on cue" in capsys.readouterr().err
