"""Routing quality with several gateway workers, in the twin: SLO rates with 1 and N workers.

With ``proxy.workers`` = N the gateway runs N independent schedulers that share the scraped
snapshot, each with its own in-flight counts, flow control and prefix index (credits shared unless
``--no-share``) and predicted-latency scorer (its per-pick accounting shared unless
``--no-share-latency``). The twin models exactly that (``TwinConfig.gateway_workers``): arrivals
go to the workers in turn. For each workload the SLO rate of the ``default`` strategy (p90 TTFT < 1 s, p90
TPOT < 50 ms, >= 99 % success; see ``bench_regret.py``) is searched with 1 worker and with N, and
the table gives N workers' rate as a fraction of one worker's, with the prefix hit rates at the
highest rate both met.

    nice -n 10 .venv/bin/python bench/bench_twin_workers.py --quick \\
        --workloads many-tenants,agentic-sessions,multi-tenant-chat --workers 2 --jobs 3

A full search per (workload, worker count) costs tens of points. ``--at W=RATE,...`` is the cheap
check instead: one point with 1 worker at RATE (a known SLO rate of one worker, e.g. the regret
table's), and points with N workers at RATE and at 0.98 × RATE; N workers meeting the SLO at
0.98 × RATE is what "within 2 % of one worker" asks. ``--counts 1,2,3`` runs several worker
counts in one go.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from infergate.bench.steady import SteadyPlan, SteadyRunner, plan_for, resolve_pool, unloaded_e2e
from infergate.bench.workloads import load_workload

STRATEGY = "default"  # --strategy
DURATION: float | None = None  # --duration (set before the process pool forks)


def plan_of(workload: str, *, quick: bool) -> SteadyPlan:
    """bench_regret.py's plans: ``quick`` = 20 s windows (5 s warm-up) at least, or ``--duration``."""
    spec = load_workload(workload)
    unloaded = unloaded_e2e(spec, resolve_pool(spec))
    if quick or DURATION is not None:
        window = DURATION if DURATION is not None else max(20.0, 8.0 * unloaded)
        return plan_for(unloaded, duration=window, warmup=min(max(5.0, 2 * unloaded), 20.0))
    return plan_for(unloaded)


def search(
    workload: str, workers: int, share: bool, quick: bool, tolerance: float, seed: int, share_latency: bool
) -> dict[str, Any]:
    cpu0 = time.process_time()
    spec = load_workload(workload)
    runner = SteadyRunner(spec, resolve_pool(spec), plan=plan_of(workload, quick=quick), seed=seed)
    runner.config = replace(
        runner.config, gateway_workers=workers, share_prefix=share, share_latency=share_latency
    )
    rate = runner.slo_rate("default", tolerance=tolerance)
    points = {round(p.rate, 6): p for p in runner.points_of("default")}
    return {
        "workload": workload,
        "workers": workers,
        "share": share,
        "slo_rate_qps": rate.qps,
        "failing_qps": rate.failing,
        "probes": rate.probes,
        "hit_rate": {q: p.prefix_hit_rate for q, p in points.items()},
        "cpu_s": time.process_time() - cpu0,
    }


def at_rate(
    workload: str, workers: int, rate: float, quick: bool, seed: int, share_latency: bool = True
) -> dict[str, Any]:
    spec = load_workload(workload)
    runner = SteadyRunner(spec, resolve_pool(spec), plan=plan_of(workload, quick=quick), seed=seed)
    runner.config = replace(runner.config, gateway_workers=workers, share_latency=share_latency)
    p = runner.point(STRATEGY, rate)
    return {
        "workload": workload,
        "workers": workers,
        "rate": rate,
        "met": p.met,
        "stopped_early": p.stopped_early,
        "slo_attainment": p.summary.slo_attainment,
        "ttft_p90": p.summary.ttft_p90,
        "tpot_p90": p.summary.tpot_p90,
        "hit_rate": p.prefix_hit_rate,
        "cpu_s": p.cpu_s,
    }


def check_at(
    rates: dict[str, float],
    workers: int,
    quick: bool,
    seed: int,
    jobs: int,
    *,
    share_latency: bool = True,
    counts: tuple[int, ...] | None = None,
) -> list[dict[str, Any]]:
    ns = counts if counts is not None else (1, workers)
    tasks = [
        (w, n, q) for w, r in rates.items() for n in ns for q in ((r,) if n == 1 else (r, round(0.98 * r, 3)))
    ]
    with ProcessPoolExecutor(jobs) as pool:
        futures = [pool.submit(at_rate, w, n, q, quick, seed, share_latency) for w, n, q in tasks]
        results = [f.result() for f in futures]
    print("| workload | workers | QPS | SLO met | attainment | p90 TTFT (s) | p90 TPOT (ms) | prefix hits |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        hit = "–" if r["hit_rate"] is None else f"{100 * r['hit_rate']:.1f} %"
        print(
            f"| {r['workload']} | {r['workers']} | {r['rate']:g} | {'yes' if r['met'] else 'no'} | "
            f"{100 * r['slo_attainment']:.1f} % | {r['ttft_p90']:.3f} | {1000 * r['tpot_p90']:.1f} | {hit} |",
            flush=True,
        )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="many-tenants,agentic-sessions,multi-tenant-chat")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-share", action="store_true", help="each worker's prefix index learns alone")
    ap.add_argument(
        "--no-share-latency",
        action="store_true",
        help="each worker's predicted-latency scorer counts its own picks only (before issue #18)",
    )
    ap.add_argument("--counts", help="--at: the worker counts to run, e.g. 1,2,3 (default: 1 and --workers)")
    ap.add_argument("--quick", action="store_true", help="bench_regret's --quick windows")
    ap.add_argument("--tolerance", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--at", help="W=RATE,...: points at a known 1-worker SLO rate instead of searches")
    ap.add_argument("--strategy", default="default", help="strategy of the --at points")
    ap.add_argument("--duration", type=float, help="measured window per point (s), as bench_regret.py's")
    a = ap.parse_args()
    global DURATION, STRATEGY
    DURATION = a.duration
    STRATEGY = a.strategy
    if a.at:
        rates = {w: float(r) for w, r in (item.split("=") for item in a.at.split(","))}
        counts = tuple(int(n) for n in a.counts.split(",")) if a.counts else None
        results = check_at(
            rates, a.workers, a.quick, a.seed, a.jobs, share_latency=not a.no_share_latency, counts=counts
        )
        print(f"\nCPU: {sum(r['cpu_s'] for r in results):.0f} s")
        if a.json:
            a.json.write_text(json.dumps(results, indent=2, default=str))
        return
    names = [w for w in a.workloads.split(",") if w]
    tasks = [(w, n, not a.no_share or n == 1) for w in names for n in (1, a.workers)]
    with ProcessPoolExecutor(a.jobs) as pool:
        futures = [
            pool.submit(search, w, n, sh, a.quick, a.tolerance, a.seed, not a.no_share_latency)
            for w, n, sh in tasks
        ]
        results = [f.result() for f in futures]
    n = a.workers
    print(f"| workload | SLO rate, 1 worker | SLO rate, {n} workers | ratio | prefix hit rate 1 / {n} |")
    print("|---|---|---|---|---|")
    for w in names:
        one = next(r for r in results if r["workload"] == w and r["workers"] == 1)
        many = next(r for r in results if r["workload"] == w and r["workers"] == a.workers)
        ratio = many["slo_rate_qps"] / one["slo_rate_qps"] if one["slo_rate_qps"] else float("nan")
        both = [
            q
            for q in one["hit_rate"]
            if q in many["hit_rate"] and q <= min(one["slo_rate_qps"], many["slo_rate_qps"])
        ]
        hits = "–"
        if both:
            q = max(both)
            h1, hn = one["hit_rate"][q], many["hit_rate"][q]
            if h1 is not None and hn is not None:
                hits = f"{100 * h1:.1f} % / {100 * hn:.1f} % at {q:g} QPS"
        print(f"| {w} | {one['slo_rate_qps']:g} | {many['slo_rate_qps']:g} | {ratio:.3f} | {hits} |")
    print(f"\nCPU: {sum(r['cpu_s'] for r in results):.0f} s")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
