"""The twin's closed loop (``--twin --concurrency N --limit M``): N clients, each sending its next
request when its last one ends, as ``run_closed_loop`` does against a real target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infergate.bench.cli import main
from infergate.bench.twin import run_twin
from infergate.bench.workloads import WorkloadSpec, generate, load_workload

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


def test_a_turn_waiting_for_its_answer_holds_its_client() -> None:
    spec = WorkloadSpec.model_validate(
        {
            "name": "s",
            "seed": 3,
            "workload": {
                "type": "shared_prefix",
                "tenants": 2,
                "system_prompt_tokens": 40,
                "question": {"mean": 20},
                "answer": {"mean": 30},
                "turns": 3,
                "sessions": 4,
                "turn_after_answer": True,
            },
            "pool": {"replicas": 2},
        }
    )
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


def test_cli_twin_concurrency_needs_a_fixed_list_and_whole_clients(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--twin", "--workload", "tutorial-mix", "--concurrency", "4", "--no-plots"]) == 2
    assert "--twin --concurrency replays a fixed request list: give --limit N" in capsys.readouterr().err
    assert main(["--twin", "--workload", "tutorial-mix", "--concurrency", "2.5", "--limit", "3"]) == 2
    assert "expected whole numbers" in capsys.readouterr().err
