"""Paired comparison in the digital twin: several schedulers on the very same request streams.

A bisected SLO rate moves by a step when one stream near capacity flips its verdict, so two
strategies one step apart may not differ at all (docs/benchmarks.md, "What the bisection can and
cannot tell apart"). This script runs every strategy on the same streams, at fixed rates × seeds,
and counts the points where each met the SLO (p90 TTFT < 1 s, p90 TPOT < 50 ms, ≥ 99 % served;
other bounds with ``--slo-ttft``/``--slo-tpot``, told to infergate unless ``--untold``).
A strategy is a name from ``infergate bench --strategies`` (``default``, ``default+nofc``, …) or
``NAME=FILE`` with an EndpointPickerConfig YAML (run with flow control, as ``default``)::

    .venv/bin/python bench/bench_twin_paired.py --workload prefill-decode-mix --around 62 \\
        --strategies default,limit4=limit4.yaml --seeds 0,1,2 --jobs 2

where ``limit4.yaml`` is the default profile with ``ttftCorrectionLimit: 4``. Prints a line per
point and a summary per strategy; ``--out FILE`` appends every point as JSON lines.
``--closed-loop`` makes every rate a count of closed-loop clients (``bench_regret.py
--closed-loop``): the seeds then draw the clients' request lists, and the warm-up is at least
8 unloaded latencies and the length-weighted duration of the workload's requests at the SLO's
bounds (``steady.held_at_bounds``) unless ``--warmup`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from infergate.bench.procs import exit_on_sigterm, process_pool
from infergate.bench.stats import Slo, add_slo_arguments
from infergate.bench.steady import (
    SteadyPlan,
    SteadyRunner,
    closed_loop_warmup,
    held_at_bounds,
    resolve_pool,
    unloaded_e2e,
)
from infergate.bench.workloads import load_workload
from infergate.config.picker import EndpointPickerConfig, parse_picker_config


def _point(
    job: tuple[str, str, str | None, float, int, float, float | None, Slo, bool, bool],
) -> dict[str, object]:
    workload, name, config_path, rate, seed, duration, warmup, slo, tell, closed = job
    spec = load_workload(workload)
    picker: EndpointPickerConfig | None = None
    strategy = name
    if config_path is not None:
        picker = parse_picker_config(Path(config_path).read_text(), source=config_path)
        strategy = "default"  # the given profile, with flow control as the product runs it
    unloaded = 1.0
    if closed:
        # clients start one after another over one unloaded latency, and settle over several
        # (and over one of the long requests they sit in at the SLO's bounds)
        unloaded = unloaded_e2e(spec, resolve_pool(spec))
        if warmup is None:
            warmup = closed_loop_warmup(unloaded, 5.0, held_at_bounds(spec, slo))
    plan = SteadyPlan(
        unloaded_e2e_s=unloaded,
        warmup_s=5.0 if warmup is None else warmup,
        duration_s=duration,
        cooldown_s=1.0,
    )
    runner = SteadyRunner(
        spec,
        resolve_pool(spec),
        seed=seed,
        plan=plan,
        picker=picker,
        slo=slo,
        tell_slo=tell,
        closed_loop=closed,
    )
    point = runner.point(strategy, rate)
    s = point.summary
    return {
        "workload": workload,
        "strategy": name,
        "rate": rate,
        "seed": seed,
        "met": point.met,
        "ttft_p90": s.ttft_p90,
        "tpot_ms": s.tpot_p90 * 1000.0,
        "served": s.succeeded,
        "requests": s.requests,
        "cpu_s": point.cpu_s,
    }


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()  # a killed run stops its pool's workers too (process_pool)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", required=True, help="corpus workload name or YAML file")
    ap.add_argument("--strategies", required=True, help="comma-separated names or NAME=PICKER.yaml")
    rates = ap.add_mutually_exclusive_group(required=True)
    rates.add_argument("--rates", help="comma-separated QPS")
    rates.add_argument("--around", type=float, help="QPS; rates = this × --fractions")
    ap.add_argument("--fractions", default="0.97,1.03", help="with --around (default 0.97,1.03)")
    ap.add_argument("--seeds", default="0,1,2", help="stream seeds (default 0,1,2)")
    ap.add_argument("--duration", type=float, default=15.0, help="measured virtual seconds (default 15)")
    ap.add_argument(
        "--warmup",
        type=float,
        help="warm-up virtual seconds (default 5; with --closed-loop, at least 8 unloaded latencies and "
        "the length-weighted duration of its requests at the SLO's bounds)",
    )
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, help="append every point here as JSON lines")
    ap.add_argument("--closed-loop", action="store_true", help="rates are counts of closed-loop clients")
    add_slo_arguments(ap)
    a = ap.parse_args(argv)
    slo, tell = Slo.of_arguments(a)
    strategies: list[tuple[str, str | None]] = []
    for item in a.strategies.split(","):
        name, eq, path = item.partition("=")
        strategies.append((name, path if eq else None))
    if a.rates:
        qps = [float(r) for r in a.rates.split(",")]
    else:
        qps = [round(a.around * float(f), 3) for f in a.fractions.split(",")]
    if a.closed_loop:
        qps = [float(max(1, round(q))) for q in qps]
    unit = "clients" if a.closed_loop else "QPS"
    jobs = [
        (a.workload, name, path, rate, int(seed), a.duration, a.warmup, slo, tell, a.closed_loop)
        for rate in qps
        for seed in a.seeds.split(",")
        for name, path in strategies
    ]
    met: dict[str, int] = {name: 0 for name, _ in strategies}
    with process_pool(a.jobs) as pool:
        for r in pool.map(_point, jobs):
            met[str(r["strategy"])] += bool(r["met"])
            print(
                f"{r['strategy']:>16s} {r['rate']:8.2f} {unit} seed {r['seed']}: "
                f"{'met ' if r['met'] else 'miss'} p90 TTFT {r['ttft_p90']:.3f} s, "
                f"p90 TPOT {r['tpot_ms']:.1f} ms, {r['served']}/{r['requests']} served",
                flush=True,
            )
            if a.out is not None:
                with a.out.open("a") as fh:
                    fh.write(json.dumps(r) + "\n")
    points = len(qps) * len(a.seeds.split(","))
    for name, count in met.items():
        print(f"{name}: met the SLO at {count} of {points} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
