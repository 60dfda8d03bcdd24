"""The regret table: every corpus workload × every strategy, SLO rates at steady state, in the twin.

For each workload (its own pool: the ``pool:`` section of its file) and each strategy, the SLO rate
(the highest rate whose measured window meets p90 TTFT < 1 s, p90 TPOT < 50 ms and ≥ 99 % success;
other bounds with ``--slo-ttft``/``--slo-tpot``, told to the gateway unless ``--untold``) is
bracketed and bisected to ``--tolerance``; the table gives each strategy's rate, its fraction of the
best strategy's rate on that workload, and its ratio to round-robin. Round-robin runs first on
every workload; every other strategy's search starts from round-robin's rate, which saves probes.
(workload, strategy) pairs run in parallel processes (``--jobs``, default 2).

    nice -n 10 .venv/bin/python bench/bench_regret.py --quick --out bench-results/regret-quick
    nice -n 10 .venv/bin/python bench/bench_regret.py --out bench-results/regret     # full size

``--resume FILE``: searches already recorded in FILE (the ``partial.jsonl`` of an interrupted run
of the same command on the same code) are taken from it instead of run again; their load points are
then not in ``results.json``.

``--warmup S`` sets the virtual seconds before each measured window: the rule's few seconds leave
a prefix index, the model servers' caches and a pool of sessions short of a long-running pool's
state, which moves some workloads' rates (docs/benchmarks.md, "The regret table's windows against
a longer warm-up").

``--closed-loop``: each cell is a strategy's SLO concurrency instead, the most clients (each
sending its next request when its last one ended) whose requests sent in the window meet the SLO.
Its warm-up is at least 8 unloaded latencies (``steady.CLOSED_LOOP_WARMUP_LATENCIES``) and the
length-weighted duration of the workload's requests at the SLO's bounds (``steady.held_at_bounds``):
clients started together take that long to settle into the mix of requests they keep in flight.
Each cell also gives the requests per second the clients sent at that concurrency that the SLO
judges (sheddable ones left out): at one count of clients a router that answers sooner is sent
more, so the concurrency alone can rank a router that keeps its own load down ahead of one that
serves more.

``--quick``: 20 s measured windows (5 s warm-up) and 5 % bisection instead of max(60 s, 20 × the
unloaded e2e latency) and 2 %: a smoke-level table in a fraction of the CPU. Full-size searches
scout first on short runs (see ``SteadyRunner.slo_rate``). Output in ``--out``:
``regret.md`` (the table, wall and CPU time), ``regret.json`` (rates and probes) and
``results.json`` / ``results.md`` (every point of every workload).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from infergate.bench.procs import exit_on_sigterm, process_pool
from infergate.bench.stats import Slo, SloRate, add_slo_arguments
from infergate.bench.steady import (
    PointResult,
    SteadyPlan,
    SteadyRunner,
    closed_loop_warmup,
    held_at_bounds,
    plan_for,
    resolve_pool,
    unloaded_e2e,
)
from infergate.bench.steady_report import SteadyReport, write_steady_reports
from infergate.bench.workloads import builtin_workloads, load_workload

STRATEGIES = (
    "default",
    "round-robin",
    "least-in-flight",
    "prefix-only",
    "lora-only",
    "random",
    "greedy-true-state",
)
BASELINE = "round-robin"
DEFAULT_SLO = Slo()


@dataclass(frozen=True, slots=True, kw_only=True)
class Task:
    workload: str
    strategy: str
    plan: SteadyPlan
    start: float | None
    tolerance: float
    factor: float
    seed: int
    scout: bool
    slo: Slo = DEFAULT_SLO
    tell_slo: bool = True
    closed_loop: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    task: Task
    rate: SloRate
    points: list[PointResult]
    cpu_s: float
    scout_requests: int
    sent_per_s: float | None = None
    """Closed loop: the judged requests per second the clients sent in the measured window at the
    SLO concurrency (None: open loop, nothing met, or taken from a record without it)."""


def sent_per_s(points: Sequence[PointResult], load: float) -> float | None:
    """Requests per second sent in the measured window of the point run at ``load`` that the SLO
    judges (sheddable ones left out), None if no point ran there. At one client count a router
    that answers sooner is sent more, and one that sheds a sheddable request at once frees its
    client for the next: the SLO concurrency alone ranks a slower router that keeps its own load
    down ahead of one serving more."""
    for p in points:
        if p.rate == load:
            return p.summary.requests / p.plan.duration_s
    return None


def run_task(task: Task) -> Outcome:
    """One strategy's SLO-rate search on one workload (in a worker process)."""
    cpu0 = time.process_time()
    spec = load_workload(task.workload)
    runner = SteadyRunner(
        spec,
        resolve_pool(spec),
        plan=task.plan,
        seed=task.seed,
        slo=task.slo,
        tell_slo=task.tell_slo,
        closed_loop=task.closed_loop,
    )
    rate = runner.slo_rate(
        task.strategy, start=task.start, tolerance=task.tolerance, factor=task.factor, scout=task.scout
    )
    points = runner.points_of(task.strategy)
    return Outcome(
        task=task,
        rate=rate,
        points=points,
        cpu_s=time.process_time() - cpu0,
        scout_requests=runner.scout_requests,
        sent_per_s=sent_per_s(points, rate.qps) if task.closed_loop and rate.qps > 0 else None,
    )


def plan_of(
    workload: str,
    *,
    quick: bool,
    duration: float | None = None,
    warmup: float | None = None,
    closed_loop: bool = False,
    slo: Slo = DEFAULT_SLO,
) -> SteadyPlan:
    """The load points' plan; ``warmup`` (virtual s before the window) overrides the rule's, which
    for a closed loop is at least ``CLOSED_LOOP_WARMUP_LATENCIES`` unloaded latencies and the
    length-weighted duration of its requests at ``slo``'s bounds (``steady.held_at_bounds``)."""
    spec = load_workload(workload)
    unloaded = unloaded_e2e(spec, resolve_pool(spec))
    held = held_at_bounds(spec, slo) if closed_loop else 0.0
    if quick or duration is not None:
        window = duration if duration is not None else max(20.0, 8.0 * unloaded)
        if warmup is None:
            warmup = min(max(5.0, 2 * unloaded), 20.0)
            if closed_loop:
                warmup = closed_loop_warmup(unloaded, warmup, held)
        return plan_for(unloaded, duration=window, warmup=warmup)
    return plan_for(unloaded, warmup=warmup, closed_loop=closed_loop, held=held)


def warmup_seconds(text: str) -> float:
    """``--warmup``: virtual seconds, finite and 0 or more (refused before any file is touched)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--warmup must be virtual seconds, not {text!r}") from None
    if not (seconds >= 0 and math.isfinite(seconds)):
        raise argparse.ArgumentTypeError(f"--warmup must be 0 or more virtual seconds, not {text}")
    return seconds


Recorded = dict[tuple[str, str], tuple[SloRate, float, float | None]]


def _recorded(path: Path | None) -> Recorded:
    """(workload, strategy) → (SLO rate, CPU seconds, requests sent per second at a closed loop's
    SLO concurrency) from a ``partial.jsonl``."""
    found: Recorded = {}
    if path is None:
        return found
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        d = json.loads(line)
        probes = tuple((float(q), bool(met)) for q, met in d["probes"])
        rate = SloRate(qps=float(d["qps"]), failing=d["failing"], probes=probes)
        sent = d.get("sent_per_s")
        found[(d["workload"], d["strategy"])] = (
            rate,
            float(d["cpu_s"]),
            None if sent is None else float(sent),
        )
    return found


def _run_all(
    tasks: Sequence[Task],
    jobs: int,
    partial: Path,
    recorded: Recorded | None = None,
) -> list[Outcome]:
    done = recorded or {}
    out: list[Outcome] = []
    for t in tasks:
        if (t.workload, t.strategy) in done:
            rate, cpu, sent = done[(t.workload, t.strategy)]
            out.append(Outcome(task=t, rate=rate, points=[], cpu_s=cpu, scout_requests=0, sent_per_s=sent))
            _log(out[-1], partial)
    todo = [t for t in tasks if (t.workload, t.strategy) not in done]
    return out + _run_tasks(todo, jobs, partial)


def _run_tasks(tasks: Sequence[Task], jobs: int, partial: Path) -> list[Outcome]:
    if jobs <= 1:
        out = []
        for t in tasks:
            out.append(run_task(t))
            _log(out[-1], partial)
        return out
    with process_pool(jobs) as pool:
        results = []
        for o in pool.map(run_task, tasks):
            results.append(o)
            _log(o, partial)
        return results


def _log(o: Outcome, partial: Path) -> None:
    """One line on stderr and one JSON line in ``partial`` per finished search (a run cut short
    still leaves every rate it found)."""
    with partial.open("a") as f:
        f.write(
            json.dumps(
                {
                    "workload": o.task.workload,
                    "strategy": o.task.strategy,
                    "cpu_s": o.cpu_s,
                    **o.rate.as_dict(),
                    **({} if o.sent_per_s is None else {"sent_per_s": o.sent_per_s}),
                }
            )
            + "\n"
        )
    load = f"{o.rate.qps:g} clients" if o.task.closed_loop else f"{o.rate.qps:.2f} QPS"
    if o.sent_per_s is not None:
        load += f" sending {o.sent_per_s:.1f} req/s"
    print(
        f"  {o.task.workload} {o.task.strategy}: {load} ({len(o.rate.probes)} probes, {o.cpu_s:.0f} CPU-s)",
        file=sys.stderr,
        flush=True,
    )


def regret_markdown(
    rates: dict[str, dict[str, SloRate]],
    pools: dict[str, str],
    strategies: Sequence[str],
    *,
    closed_loop: bool = False,
    sent: dict[str, dict[str, float | None]] | None = None,
) -> str:
    """Per workload: each strategy's SLO rate, its fraction of the best, and × round-robin; a
    closed loop's cells also give the requests per second its clients sent there (``sent``)."""
    head = "| workload (pool) | " + " | ".join(strategies) + " |\n" + "|---" * (len(strategies) + 1) + "|\n"
    rows = []
    for workload, by in rates.items():
        best = max(r.qps for r in by.values())
        base = by.get(BASELINE)
        cells = []
        for st in strategies:
            r = by.get(st)
            if r is None:
                cells.append("-")
                continue
            frac = r.qps / best if best > 0 else 0.0
            rr = f"{r.qps / base.qps:.2f}×rr" if base is not None and base.qps > 0 else "-"
            mark = "**" if r.qps == best else ""
            value = f"{r.qps:g}" if closed_loop else f"{r.qps:.1f}"
            per_s = (sent or {}).get(workload, {}).get(st)
            if closed_loop and per_s is not None:
                value += f" ({per_s:.0f}/s)"
            cells.append(f"{mark}{value}{mark} · {frac:.2f} · {rr}")
        rows.append(f"| {workload} ({pools[workload]}) | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def main() -> None:
    exit_on_sigterm()  # a killed run stops its pool's workers too (process_pool)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--workloads", default="all", help="comma-separated workload names or files (default: corpus)"
    )
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--quick", action="store_true", help="20 s windows, 5 %% bisection")
    p.add_argument("--tolerance", type=float, help="bisection width (default 0.02, quick 0.05)")
    p.add_argument("--duration", type=float, help="measured window per point, virtual s (overrides the rule)")
    p.add_argument(
        "--warmup",
        type=warmup_seconds,
        help="virtual s before each window (overrides the rule): a prefix index, caches and sessions "
        "filled as in a long-running pool",
    )
    p.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes (default 2)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench-results/regret"))
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--resume", type=Path, help="a partial.jsonl of the same command: its searches are not run again"
    )
    p.add_argument(
        "--closed-loop",
        action="store_true",
        help="search each strategy's SLO concurrency (closed-loop clients) instead of its SLO rate",
    )
    add_slo_arguments(p)
    args = p.parse_args()
    slo, tell = Slo.of_arguments(args)
    workloads = sorted(builtin_workloads()) if args.workloads == "all" else args.workloads.split(",")
    strategies = args.strategies.split(",")
    tolerance = args.tolerance if args.tolerance is not None else (0.05 if args.quick else 0.02)
    wall0 = time.perf_counter()
    cpu0 = time.process_time()
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "partial.jsonl"
    recorded = _recorded(args.resume)  # read before ``partial`` is emptied: it may be the same file
    partial.write_text("")
    plans = {
        w: plan_of(
            w,
            quick=args.quick,
            duration=args.duration,
            warmup=args.warmup,
            closed_loop=args.closed_loop,
            slo=slo,
        )
        for w in workloads
    }
    first = [
        Task(
            workload=w,
            strategy=BASELINE,
            plan=plans[w],
            start=None,
            tolerance=tolerance,
            factor=1.5,
            seed=args.seed,
            scout=not args.quick,
            slo=slo,
            tell_slo=tell,
            closed_loop=args.closed_loop,
        )
        for w in workloads
    ]
    print(f"round-robin on {len(workloads)} workloads", file=sys.stderr, flush=True)
    outcomes = _run_all(first, args.jobs, partial, recorded)  # its rate starts the other searches
    rr = {o.task.workload: o.rate.qps for o in outcomes}
    rest = [
        Task(
            workload=w,
            strategy=st,
            plan=plans[w],
            start=rr[w] or None,
            tolerance=tolerance,
            factor=1.25,
            seed=args.seed,
            scout=not args.quick,
            slo=slo,
            tell_slo=tell,
            closed_loop=args.closed_loop,
        )
        for w in workloads
        for st in strategies
        if st != BASELINE
    ]
    print(f"{len(rest)} more (workload, strategy) searches", file=sys.stderr, flush=True)
    outcomes += _run_all(rest, args.jobs, partial, recorded)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0 + sum(o.cpu_s for o in outcomes)
    simulated = sum(pt.total for o in outcomes for pt in o.points) + sum(o.scout_requests for o in outcomes)

    rates: dict[str, dict[str, SloRate]] = {w: {} for w in workloads}
    points: dict[str, dict[str, list[PointResult]]] = {w: {} for w in workloads}
    sent: dict[str, dict[str, float | None]] = {w: {} for w in workloads}
    for o in outcomes:
        if o.task.strategy in strategies:
            rates[o.task.workload][o.task.strategy] = o.rate
            points[o.task.workload][o.task.strategy] = o.points
            sent[o.task.workload][o.task.strategy] = o.sent_per_s
    shapes = {w: resolve_pool(load_workload(w)) for w in workloads}
    pools = {
        w: s.replicas_label()
        + (f", {len(s.adapters)} adapters/{s.max_loras} slots" if s.adapters else "")
        + ("" if str(s.arrival) == "poisson" else f", {s.arrival}")
        for w, s in shapes.items()
    }
    reports = [
        SteadyReport(
            workload=load_workload(w).name,
            shape=shapes[w],
            plan=plans[w],
            slo=slo,
            points=points[w],
            rates=rates[w],
            closed_loop=args.closed_loop,
        )
        for w in workloads
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    write_steady_reports(reports, args.out, plots=not args.no_plots)
    table = regret_markdown(rates, pools, strategies, closed_loop=args.closed_loop, sent=sent)
    sizes = ", ".join(f"{w} {plans[w].duration_s:.0f}+{plans[w].warmup_s:.0f} s" for w in workloads)
    md = (
        f"SLO: p90 TTFT < {slo.ttft_s:g} s, p90 TPOT < {slo.tpot_s * 1000:g} ms, "
        + ("the gateway told it. " if tell else "the gateway left at its default SLO. ")
        + (
            "Cells: SLO concurrency (closed-loop clients; in brackets the judged requests per second "
            "they sent in the window) · "
            if args.closed_loop
            else "Cells: SLO rate (QPS) · "
        )
        + "fraction of the best strategy on the workload · × round-robin. "
        "Best in bold.\n\n"
        + table
        + f"\nMeasured window + warm-up per point (virtual time): {sizes}. Bisection to {tolerance:.0%}."
        + f"\n\n{simulated:,} simulated requests; wall {wall / 60:.1f} min, CPU {cpu / 60:.1f} min "
        f"({simulated / cpu * 60:,.0f} simulated requests per CPU-minute), {args.jobs} processes.\n"
    )
    (args.out / "regret.md").write_text(md)
    found_key = "slo_clients" if args.closed_loop else "slo_rate_qps"
    (args.out / "regret.json").write_text(
        json.dumps(
            {
                "tolerance": tolerance,
                "quick": args.quick,
                "wall_s": wall,
                "cpu_s": cpu,
                "simulated_requests": simulated,
                "workloads": {
                    w: {
                        st: r.as_dict()
                        | {found_key: r.qps}
                        | ({"sent_per_s": sent[w][st]} if sent[w].get(st) is not None else {})
                        for st, r in by.items()
                    }
                    for w, by in rates.items()
                },
            },
            indent=2,
        )
        + "\n"
    )
    print(md)


if __name__ == "__main__":
    main()
