"""The twin's gateway workers: independent schedulers on one shared scrape. Sharing the prefix
credits keeps affinity as with one worker; without it the many-tenants hit rate drops."""

from __future__ import annotations

from infergate.bench.twin import TwinConfig, run_twin
from infergate.bench.workloads import generate, load_workload


def test_two_workers_sharing_prefix_credits_keep_one_workers_affinity() -> None:
    requests = generate(load_workload("many-tenants"))[:200]
    offsets = [i / 8 for i in range(len(requests))]

    def hit_rate(workers: int, share: bool = True) -> float:
        cfg = TwinConfig(gateway_workers=workers, share_prefix=share)
        out = run_twin(requests, offsets, strategy="default", config=cfg)
        assert all(r.status == 200 for r in out.records)
        assert out.prefix_hit_rate is not None
        return out.prefix_hit_rate

    one = hit_rate(1)
    assert hit_rate(2) >= one - 0.01
    assert hit_rate(2, share=False) < one - 0.05
