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
    """many-tenants at its one-worker SLO rate (138.6 QPS over 6 replicas): a worker that counts
    only its own picks in the predicted-latency scorer's backlog sees every replica half as loaded
    as it is, and spreads tenants off their cached replicas (issue #18).

    Measured (640 requests): one worker 69.6 % hits, p90 TTFT 0.703 s; two sharing everything
    (accounting, TTFT corrections, in-flight counts) 68.8 %, 0.734 s; two sharing the accounting
    only (each worker correcting from its own answers and counting its own in-flight requests)
    65.1 %, 0.711 s; two sharing nothing of the scorer's 44.3 %, 1.566 s. The hit bound fails
    when the corrections and in-flight counts stay per worker; the latency bound and the
    unshared run fail by far without the accounting. Since answers report their time per token at
    their 33rd token (TPOT_REPORT_TOKENS) instead of their end: one worker 65.9 %, two 65.4 %,
    nothing shared 44.3 %, the same TTFTs; at the 17th token two workers fell to 63.4 % against
    one worker's 67.6 % and failed the hit bound. Since flow control counts requests seen to start
    (each worker its own): one worker 67.6 %, 0.702 s; two sharing everything 63.9 %, 0.805 s; two
    sharing the accounting only 60.8 %, 0.815 s; nothing shared 49.0 %, 1.434 s. This one stream
    from a cold pool moved more than the paired runs did (bench_twin_workers.py, many-tenants,
    24 seeds: one and two workers' hit rates within 0.6 points before and after, two workers
    meeting the SLO at 0.98 x the rate with 22 seeds against 20), so the bounds were 4.5 points
    (which the accounting alone still fails) and 1.2 x the TTFT. Since a miss is charged to the
    streams it delays: one worker 68.0 %, 0.746 s; two sharing everything 63.4 %, 0.876 s; the
    accounting only 62.6 %, 0.768 s; nothing shared 49.0 %, 1.434 s. Over 12 seeds
    (bench_twin_workers.py --seeds 0,...,11 --counts 1,2 --at many-tenants=138.6) one worker met
    the SLO with 9 seeds (7 before), two workers with 9 at the full rate and 12 at 0.98 x, hit
    rates 86.6 % and 86.1 %; so the hit bound is now 5 points, which the accounting alone fails."""
    requests = generate(load_workload("many-tenants"))
    offsets = [i / 138.6 for i in range(len(requests))]

    def run(workers: int, share: bool = True) -> tuple[float, float]:
        cfg = TwinConfig(replicas=6, adapters=(), gateway_workers=workers, share_latency=share)
        out = run_twin(requests, offsets, strategy="default", config=cfg)
        assert all(r.status == 200 for r in out.records)
        ttfts = sorted(r.ttft for r in out.records if r.ttft is not None)
        assert out.prefix_hit_rate is not None and len(ttfts) == len(requests)
        return out.prefix_hit_rate, ttfts[int(0.9 * len(ttfts))]

    one_hits, one_ttft = run(1)
    hits, ttft = run(2)
    assert hits >= one_hits - 0.05 and ttft <= 1.2 * one_ttft
    alone_hits, alone_ttft = run(2, share=False)
    assert alone_hits < one_hits - 0.1 and alone_ttft > 1.5 * one_ttft
