"""Precise prefix routing in the digital twin: ``precise-prefix`` (the reference profile with the
precise scorer) against ``gie-default`` (the same profile with the approximate scorer),
``prefix-only`` (infergate's load-aware approximate scorer alone) and ``default`` (predicted
latency), on workloads whose prefix caches churn.

``--num-gpu-blocks`` sets every replica's KV cache (the H100 profile's default holds ~420k tokens,
so a pool of 6 keeps all of many-tenants' 480k tokens of system prompts once they are spread;
smaller caches make them churn). Each point replays ``--duration`` virtual seconds of Poisson
arrivals (the first 20 % not counted) and reports p50/p90 TTFT, p90 TPOT, whether the SLO holds
(p90 TTFT < 1 s, p90 TPOT < 50 ms, 99 % served) and the engines' prefix-cache hit rate:

    .venv/bin/python bench/bench_twin_precise.py --workloads many-tenants,agentic-sessions \
        --qps 10,20,30 --num-gpu-blocks 8000

``--slo-rate`` instead bisects each strategy's SLO rate at steady state (the ``infergate bench
--twin --slo-rate`` machinery: a measured window after a warm-up) on the same pool, and prints it
with the probes and the CPU time the search took.
"""

from __future__ import annotations

import argparse
import functools
import random
import sys
import time

from infergate.bench.stats import Slo, summarise
from infergate.bench.steady import PointResult, SteadyRunner, plan_for, resolve_pool, unloaded_e2e
from infergate.bench.twin import TwinConfig, run_twin
from infergate.bench.workloads import load_workload, stream

STRATEGIES = ("precise-prefix", "gie-default", "prefix-only", "default")


def _log_point(label: str, point: PointResult) -> None:
    """Every load point the search runs, on stderr, as the evidence behind the rate."""
    print(f"  {label} @ {point.describe()}", file=sys.stderr, flush=True)


def slo_rates(
    workload: str, strategies: list[str], num_gpu_blocks: int | None, tolerance: float, duration: float | None
) -> None:
    """Each strategy's SLO rate on ``workload`` (steady state, bisected to ``tolerance``)."""
    spec = load_workload(workload)
    shape = resolve_pool(spec, adapters=())
    overrides = {"num_gpu_blocks": num_gpu_blocks} if num_gpu_blocks else {}
    plan = plan_for(unloaded_e2e(spec, shape), duration=duration) if duration else None
    blocks = num_gpu_blocks or "profile default"
    window = f", {duration:g} s measured per point" if duration else ""
    print(f"\n### {workload}: SLO rate ({shape.describe()}, num_gpu_blocks {blocks}{window})\n")
    print("| strategy | SLO rate (QPS) | first failing (QPS) | probes | CPU (s) |")
    print("|---|---|---|---|---|")
    for strategy in strategies:
        cpu0 = time.process_time()
        runner = SteadyRunner(spec, shape, seed=1, plan=plan, pool_overrides=overrides)
        runner.on_point = functools.partial(_log_point, strategy)
        rate = runner.slo_rate(strategy, tolerance=tolerance)
        failing = f"{rate.failing:.2f}" if rate.failing is not None else "none"
        print(
            f"| {strategy} | **{rate.qps:.2f}** | {failing} | {len(rate.probes)} | "
            f"{time.process_time() - cpu0:.0f} |",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="many-tenants,agentic-sessions")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--qps", default="10,20,30")
    p.add_argument("--duration", type=float, default=120.0)
    p.add_argument("--num-gpu-blocks", type=int, default=None)
    p.add_argument("--slo-rate", action="store_true", help="bisect each strategy's SLO rate at steady state")
    p.add_argument("--tolerance", type=float, default=0.05, help="relative precision of --slo-rate")
    p.add_argument("--window", type=float, default=None, help="--slo-rate: measured seconds per point")
    a = p.parse_args()
    for workload in a.workloads.split(","):
        if a.slo_rate:
            slo_rates(workload, a.strategies.split(","), a.num_gpu_blocks, a.tolerance, a.window)
            continue
        spec = load_workload(workload)
        replicas = spec.pool.replicas if spec.pool and spec.pool.replicas else 3
        print(
            f"\n### {workload} ({replicas} replicas, num_gpu_blocks {a.num_gpu_blocks or 'profile default'}, "
            f"{a.duration:g} s per point)\n"
        )
        print("| strategy | QPS | TTFT p50 (s) | TTFT p90 (s) | TPOT p90 (ms) | SLO | prefix hit | served |")
        print("|---|---|---|---|---|---|---|---|")
        for qps in (float(q) for q in a.qps.split(",")):
            rng = random.Random(int(qps * 1000))
            offsets: list[float] = []
            t = rng.expovariate(qps)
            while t < a.duration:
                offsets.append(t)
                t += rng.expovariate(qps)
            requests = stream(spec, len(offsets), seed=int(qps))[: len(offsets)]
            for strategy in a.strategies.split(","):
                cfg = TwinConfig(replicas=replicas, adapters=(), num_gpu_blocks=a.num_gpu_blocks, seed=1)
                result = run_twin(requests, offsets, strategy=strategy, config=cfg)
                measured = [
                    r for r, off in zip(result.records, offsets, strict=True) if off >= 0.2 * a.duration
                ]
                s = summarise(measured, Slo())
                hit = result.prefix_hit_rate or 0.0
                slo = "yes" if s.meets_slo else "no"
                print(
                    f"| {strategy} | {qps:g} | {s.ttft_p50:.3f} | {s.ttft_p90:.3f} | "
                    f"{s.tpot_p90 * 1000:.1f} | {slo} | {hit:.1%} | {s.succeeded}/{s.requests} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
