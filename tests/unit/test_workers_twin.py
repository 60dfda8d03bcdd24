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


def test_two_workers_sharing_latency_accounting_keep_one_workers_routing_near_capacity() -> None:
    """many-tenants around its one-worker SLO rate (138.6 QPS over 6 replicas): a worker that
    counts only its own picks in the predicted-latency scorer's backlog sees every replica half as
    loaded as it is, and spreads tenants off their cached replicas (issue #18).

    One cold stream of 640 requests decides little: at 138.6 QPS alone two workers' hit rate was
    4.5 to 5.6 points below one worker's as the scorer changed, while at 130, 134, 142 and 146
    QPS it was -0.8 to 3.6 points below, and over 24 seeded steady-state runs
    (bench_twin_workers.py) the two stayed within 0.6 points. So the hit rates are averaged over
    three rates (130, 138.6, 146 QPS). Measured (6 December 2026, with shared prefixes that
    crowd each other out kept on their holders, docs/benchmarks.md): one worker 69.4 %, two
    sharing everything 68.1 % (before that change 67.3 % and 64.7 %); nothing of the scorer's
    shared 51.3 %, with a p90 TTFT at 138.6 QPS of 1.06 s against one worker's 0.72 s (before:
    ~49 %, 1.5 s against 0.75 s). Sharing the
    accounting without the corrections and in-flight counts gave 64.3 % on this average, within
    half a point of sharing everything, so it is not asserted on here; bench_twin_workers.py
    --accounting-only measures it at steady state."""
    requests = generate(load_workload("many-tenants"))

    def run(workers: int, rate: float, share: bool = True) -> tuple[float, float]:
        cfg = TwinConfig(replicas=6, adapters=(), gateway_workers=workers, share_latency=share)
        offsets = [i / rate for i in range(len(requests))]
        out = run_twin(requests, offsets, strategy="default", config=cfg)
        assert all(r.status == 200 for r in out.records)
        ttfts = sorted(r.ttft for r in out.records if r.ttft is not None)
        assert out.prefix_hit_rate is not None and len(ttfts) == len(requests)
        return out.prefix_hit_rate, ttfts[int(0.9 * len(ttfts))]

    rates = (130.0, 138.6, 146.0)
    one = [run(1, rate) for rate in rates]
    two = [run(2, rate) for rate in rates]
    one_hits, two_hits = (sum(h for h, _ in runs) / len(rates) for runs in (one, two))
    assert two_hits >= one_hits - 0.04 and two[1][1] <= 1.2 * one[1][1]
    alone_hits, alone_ttft = run(2, 138.6, share=False)
    assert alone_hits < one_hits - 0.1 and alone_ttft > 1.3 * one[1][1]
