"""``bench/corpus_random.py``: workloads drawn at random from what a workload file can say."""

from __future__ import annotations

import random
from pathlib import Path

from infergate.bench.steady import resolve_pool
from infergate.bench.workloads import BurstWorkload, SharedPrefixWorkload, load_workload
from tests.support import load_bench_script


def test_a_seed_draws_the_same_loadable_files_and_another_seed_other_ones(tmp_path: Path) -> None:
    script = load_bench_script("corpus_random")
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert script.main(["--count", "6", "--seed", seed, "--out", str(tmp_path / name)]) == 0
    files = sorted(p.name for p in (tmp_path / "a").glob("*.yaml"))
    assert files == [f"random-1-{i:02d}.yaml" for i in range(6)]
    for f in files:
        assert (tmp_path / "a" / f).read_text() == (tmp_path / "b" / f).read_text()
        spec = load_workload(str(tmp_path / "a" / f))  # the loader the bench uses accepts it
        assert resolve_pool(spec).replicas >= 2
    drawn_a = [(tmp_path / "a" / f).read_text().split("\n", 1)[1] for f in files]
    drawn_c = [p.read_text().split("\n", 1)[1] for p in sorted((tmp_path / "c").glob("*.yaml"))]
    assert drawn_a != drawn_c


def test_draws_cover_every_kind_of_workload_and_pool() -> None:
    script = load_bench_script("corpus_random")
    specs = [script.draw(random.Random(f"7/{i}"), f"w{i}") for i in range(120)]
    kinds = {s["workload"]["type"] for s in specs}
    assert kinds == {"mix", "shared_prefix", "burst", "classes"}
    pools = [s["pool"] for s in specs]
    assert any(p["adapters"] for p in pools) and any(not p["adapters"] for p in pools)
    assert any("profiles" in p for p in pools)
    assert any("slow" in p for p in pools) and any("scale" in p for p in pools)
    assert any("objectives" in s for s in specs)
    assert any(s.get("max_tokens") == "none" for s in specs)
    bursts = [s for s in specs if s["workload"]["type"] == "burst"]
    assert any(b["workload"]["samples"] > 1 for b in bursts)
    assert all(b["workload"]["period_s"] <= 10.0 for b in bursts)  # a 15 s window holds a burst
    assert BurstWorkload.model_validate(bursts[0]["workload"])
    sessions = [s for s in specs if s["workload"]["type"] == "shared_prefix"]
    assert SharedPrefixWorkload.model_validate(sessions[0]["workload"])
