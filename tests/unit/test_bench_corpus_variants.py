"""``bench/corpus_variants.py``: corpus workloads copied onto resized or growing pools."""

from __future__ import annotations

from pathlib import Path

from infergate.bench.steady import SteadyPlan, SteadyRunner, resolve_pool
from infergate.bench.workloads import builtin_workloads, load_workload
from tests.support import load_bench_script


def test_scale_up_copies_join_half_again_with_the_rate_stepping_in_proportion(tmp_path: Path) -> None:
    script = load_bench_script("corpus_variants")
    assert script.main(["--scale-up", "--out", str(tmp_path)]) == 0
    written = sorted(tmp_path.glob("*.yaml"))
    assert len(written) == len(builtin_workloads())
    many = load_workload(str(tmp_path / "many-tenants-scaleup.yaml"))
    shape = resolve_pool(many)
    assert shape.replicas_label() == "6→9 replicas"
    assert shape.rate_profile is not None
    assert shape.rate_profile.points == (1.0,) * 3 + (1.5,) * 7  # the step ends before 30 %
    assert many.workload == load_workload("many-tenants").workload  # the same requests
    ramp = resolve_pool(load_workload(str(tmp_path / "diurnal-ramp-scaleup.yaml")))
    assert ramp.rate_profile == resolve_pool(load_workload("diurnal-ramp")).rate_profile
    plan = SteadyPlan(unloaded_e2e_s=1.0, warmup_s=5.0, duration_s=10.0, cooldown_s=1.0)
    assert SteadyRunner(many, shape, plan=plan).config.scale == ((8.0, 3),)


def test_resized_copies_keep_at_least_one_replica(tmp_path: Path) -> None:
    script = load_bench_script("corpus_variants")
    assert script.main(["--resize", "0.2", "--workloads", "bursts,diurnal-ramp", "--out", str(tmp_path)]) == 0
    assert resolve_pool(load_workload(str(tmp_path / "bursts-x0.2.yaml"))).replicas == 1
    assert resolve_pool(load_workload(str(tmp_path / "diurnal-ramp-x0.2.yaml"))).replicas == 3
