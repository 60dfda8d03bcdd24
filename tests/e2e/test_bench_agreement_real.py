"""The twin-vs-matrix agreement check end to end: a tiny matrix (3 fresh simulator replicas per
strategy, real HTTP) and the twin with the same settings; every run is paired, every request is
matched one to one, and the verdict follows the rule."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from tests.unit.test_bench_agreement import agreement, tiny

__all__ = ["agreement"]


def test_matrix_and_twin_are_paired_request_by_request(agreement: ModuleType, tmp_path: Path) -> None:
    requests = tiny(20)
    sweep = agreement.Sweep(time_scale=0.5, qps=(8.0,))
    strategies = ["round-robin", "default"]
    out = agreement.run_real(requests, "tiny", sweep, strategies, tmp_path / "real", 0)
    real_p90, real_records = agreement.read_real([out], "tiny")
    assert set(real_p90) == {("round-robin", 8.0), ("default", 8.0)}
    assert all(len(rows) == 20 for rows in real_records.values())
    twin_p90, twin_records = agreement.run_twin_side(requests, sweep, [8.0], strategies, 0)
    excess = {k: agreement.excess_of(real_records[k], twin_records[k]) for k in real_records}
    comparison = agreement.compare("tiny", real_p90, twin_p90, excess)
    assert len(comparison.points) == 2
    for point in comparison.points:
        assert len(point.excess) == 20
        assert point.real_p90 > 0 and point.twin_p90 > 0
        # the real first token cannot come before the modelled one by more than timer jitter
        assert min(point.excess) > -0.02, point.excess
    text = agreement.to_markdown(comparison)
    assert ("PASS" in text) == comparison.passed
    assert "round-robin" in text and "default" in text
