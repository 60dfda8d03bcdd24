"""Routing quality with several gateway workers, in the twin: SLO rates with 1 and N workers.

With ``proxy.workers`` = N the gateway runs N independent schedulers that share the scraped
snapshot, each with its own in-flight counts, flow control and prefix index (credits shared unless
``--no-share``) and predicted-latency scorer (its per-pick accounting shared unless
``--no-share-latency``); the TTFT corrections and, for scheduling, the in-flight counts are shared
too unless ``--accounting-only``. The twin models exactly that (``TwinConfig.gateway_workers``): arrivals
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

One arrival seed decides little at the edge (p90 TPOT sits at the SLO and the verdict flips from
one stream to the next), so ``--seeds 0,1,2,3`` runs every point with each seed: the streams of a
(seed, rate) are the same for every worker count, so the comparison is paired. A summary follows
the per-point lines: per (workload, workers, rate) the seeds that met the SLO and the means over
seeds; the "vs 1 worker" columns are the mean paired differences from one worker at the same rate
and seed (points at 0.98 × RATE are compared with one worker at RATE). ``--full`` runs every point
to the end of its window instead of stopping once the verdict is settled, so a missed point's
attainment and p90s are the whole window's (they are otherwise those of the part that ran);
``--one-at-98`` adds one worker's points at 0.98 × RATE::

    nice -n 19 .venv/bin/python bench/bench_twin_workers.py --duration 15 --jobs 1 --full \
        --seeds 0,1,2,3 --counts 1,2,3 --at many-tenants=138.6,agentic-sessions=103.1
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from infergate.bench.procs import exit_on_sigterm, process_pool
from infergate.bench.steady import SteadyPlan, SteadyRunner, plan_for, resolve_pool, unloaded_e2e
from infergate.bench.workloads import load_workload

STRATEGY = "default"  # --strategy
DURATION: float | None = None  # --duration (set before the process pool forks)
ACCOUNTING_ONLY = False  # --accounting-only (likewise)


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
        runner.config,
        gateway_workers=workers,
        share_prefix=share,
        share_latency=share_latency,
        share_ttft=not ACCOUNTING_ONLY,
        share_in_flight=not ACCOUNTING_ONLY,
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
    workload: str,
    workers: int,
    rate: float,
    quick: bool,
    seed: int,
    share_latency: bool = True,
    full: bool = False,
) -> dict[str, Any]:
    spec = load_workload(workload)
    runner = SteadyRunner(spec, resolve_pool(spec), plan=plan_of(workload, quick=quick), seed=seed)
    runner.config = replace(
        runner.config,
        gateway_workers=workers,
        share_latency=share_latency,
        share_ttft=not ACCOUNTING_ONLY,
        share_in_flight=not ACCOUNTING_ONLY,
    )
    runner.early_stop = not full
    p = runner.point(STRATEGY, rate)
    return {
        "workload": workload,
        "workers": workers,
        "rate": rate,
        "seed": seed,
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
    seeds: tuple[int, ...],
    jobs: int,
    *,
    share_latency: bool = True,
    counts: tuple[int, ...] | None = None,
    full: bool = False,
    one_at_98: bool = False,
) -> list[dict[str, Any]]:
    ns = counts if counts is not None else (1, workers)
    tasks = [
        (w, n, q, s)
        for s in seeds
        for w, r in rates.items()
        for n in ns
        for q in ((r,) if n == 1 and not one_at_98 else (r, round(0.98 * r, 3)))
    ]
    print(
        "| workload | workers | QPS | seed | SLO met | attainment | p90 TTFT (s) | p90 TPOT (ms) "
        "| prefix hits |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    results: list[dict[str, Any]] = []
    with process_pool(jobs) as pool:
        futures = [pool.submit(at_rate, w, n, q, quick, s, share_latency, full) for w, n, q, s in tasks]
        for f in futures:
            r = f.result()
            results.append(r)
            hit = "–" if r["hit_rate"] is None else f"{100 * r['hit_rate']:.1f} %"
            print(
                f"| {r['workload']} | {r['workers']} | {r['rate']:g} | {r['seed']} | "
                f"{'yes' if r['met'] else 'no'} | {100 * r['slo_attainment']:.1f} % | "
                f"{r['ttft_p90']:.3f} | {1000 * r['tpot_p90']:.1f} | {hit} |",
                flush=True,
            )
    if len(seeds) > 1:
        summarise_seeds(results, rates, len(seeds))
    return results


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def summarise_seeds(results: list[dict[str, Any]], rates: dict[str, float], n_seeds: int) -> None:
    """Per (workload, workers, rate): seeds met, means, and mean paired differences from one worker
    at the workload's RATE with the same seed."""
    one = {
        (r["workload"], r["seed"]): r
        for r in results
        if r["workers"] == 1 and r["rate"] == rates[r["workload"]]
    }
    print(
        f"\n| workload | workers | QPS | met (of {n_seeds}) | attainment | p90 TTFT (s) | p90 TPOT (ms) | "
        "prefix hits | vs 1 worker: attainment | p90 TTFT | p90 TPOT | hits |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    groups: dict[tuple[str, int, float], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["workload"], r["workers"], r["rate"]), []).append(r)
    for (w, n, q), rs in groups.items():
        hits = [r["hit_rate"] for r in rs if r["hit_rate"] is not None]
        pairs = [(r, one[(w, r["seed"])]) for r in rs if (w, r["seed"]) in one]
        if n == 1 and q == rates[w]:
            diff = "| | | |"
        else:
            d_att = _mean([100 * (a["slo_attainment"] - b["slo_attainment"]) for a, b in pairs])
            d_ttft = _mean([a["ttft_p90"] - b["ttft_p90"] for a, b in pairs])
            d_tpot = _mean([1000 * (a["tpot_p90"] - b["tpot_p90"]) for a, b in pairs])
            hp = [
                (a["hit_rate"], b["hit_rate"])
                for a, b in pairs
                if a["hit_rate"] is not None and b["hit_rate"] is not None
            ]
            d_hit = _mean([100 * (a - b) for a, b in hp])
            diff = f"{d_att:+.1f} pt | {d_ttft:+.3f} | {d_tpot:+.1f} | {d_hit:+.1f} pt |"
        print(
            f"| {w} | {n} | {q:g} | {sum(1 for r in rs if r['met'])} | "
            f"{_mean([100 * r['slo_attainment'] for r in rs]):.1f} % | "
            f"{_mean([r['ttft_p90'] for r in rs]):.3f} | "
            f"{_mean([1000 * r['tpot_p90'] for r in rs]):.1f} | "
            f"{_mean([100 * h for h in hits]):.1f} % | {diff}",
            flush=True,
        )


def main() -> None:
    exit_on_sigterm()  # a killed run stops its pool's workers too (process_pool)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="many-tenants,agentic-sessions,multi-tenant-chat")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-share", action="store_true", help="each worker's prefix index learns alone")
    ap.add_argument(
        "--no-share-latency",
        action="store_true",
        help="each worker's predicted-latency scorer counts its own picks only (before issue #18)",
    )
    ap.add_argument(
        "--accounting-only",
        action="store_true",
        help="workers share prefix credits and latency accounting only, not their TTFT corrections "
        "and in-flight counts (before 1617a20)",
    )
    ap.add_argument("--counts", help="--at: the worker counts to run, e.g. 1,2,3 (default: 1 and --workers)")
    ap.add_argument("--quick", action="store_true", help="bench_regret's --quick windows")
    ap.add_argument("--tolerance", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", help="--at: several arrival seeds, e.g. 0,1,2,3 (paired; a summary follows)")
    ap.add_argument("--full", action="store_true", help="--at: run every point to the end of its window")
    ap.add_argument("--one-at-98", action="store_true", help="--at: one worker at 0.98 x RATE too")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--at", help="W=RATE,...: points at a known 1-worker SLO rate instead of searches")
    ap.add_argument("--strategy", default="default", help="strategy of the --at points")
    ap.add_argument("--duration", type=float, help="measured window per point (s), as bench_regret.py's")
    a = ap.parse_args()
    global DURATION, STRATEGY, ACCOUNTING_ONLY
    DURATION = a.duration
    ACCOUNTING_ONLY = a.accounting_only
    STRATEGY = a.strategy
    if a.at:
        rates = {w: float(r) for w, r in (item.split("=") for item in a.at.split(","))}
        counts = tuple(int(n) for n in a.counts.split(",")) if a.counts else None
        seeds = tuple(int(x) for x in a.seeds.split(",")) if a.seeds else (a.seed,)
        results = check_at(
            rates,
            a.workers,
            a.quick,
            seeds,
            a.jobs,
            share_latency=not a.no_share_latency,
            counts=counts,
            full=a.full,
            one_at_98=a.one_at_98,
        )
        print(f"\nCPU: {sum(r['cpu_s'] for r in results):.0f} s")
        if a.json:
            a.json.write_text(json.dumps(results, indent=2, default=str))
        return
    names = [w for w in a.workloads.split(",") if w]
    tasks = [(w, n, not a.no_share or n == 1) for w in names for n in (1, a.workers)]
    with process_pool(a.jobs) as pool:
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
