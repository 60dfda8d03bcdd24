"""Requests that carry their own latency bounds (``x-llm-d-slo-ttft-ms``/``-tpot-ms``), in the twin.

A ``classes`` workload whose classes set ``slo_ttft``/``slo_tpot`` sends each request with its
class's bounds as headers. Every variant below runs on the very same request streams (rate ×
seed) and is judged per class by that class's own bounds:

* ``round-robin``: the baseline router (headers or not, it reads none);
* ``untold``: infergate's default strategy with the headers stripped, so every request is scored
  against the pool's SLO (``--pool-ttft``/``--pool-tpot``, what the operator configured);
* ``headers``: the default strategy reading the headers (the predicted-latency scorer weighs each
  request's TTFT against its TPOT by its own bounds);
* any further ``NAME=KEY=VALUE,...`` (``--variant``): ``headers`` with gateway settings changed
  (dotted names, e.g. ``deadline=flow_control.ordering=slo-deadline``).

Per point and class: the share of requests that met their class's bounds (served, TTFT and mean
TPOT under them), the p90 TTFT and TPOT, and whether the class as a whole met its SLO (p90s under
the bounds, ≥ 99 % served); a point is met when every class is. ::

    .venv/bin/python bench/bench_slo_headers.py --workload bench/slo-classes.yaml \\
        --rates 20,24,28 --seeds 0,1,2 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import replace
from pathlib import Path

from infergate.bench.arrivals import arrival_times
from infergate.bench.loadgen import RequestRecord
from infergate.bench.procs import exit_on_sigterm, process_pool
from infergate.bench.stats import Slo, summarise
from infergate.bench.steady import PoolShape, map_models, resolve_pool
from infergate.bench.twin import run_twin
from infergate.bench.workloads import BenchRequest, ClassesWorkload, WorkloadSpec, load_workload, stream
from infergate.config.settings import Settings


def _requests(
    spec: WorkloadSpec, shape: PoolShape, rate: float, seed: int, seconds: float
) -> tuple[list[BenchRequest], list[float]]:
    rng = random.Random(f"{spec.name}:{seed}:{rate:.9g}")
    times = arrival_times(shape.arrival, rate, seconds, rng)
    requests = stream(spec, len(times), seed=rng.randrange(1 << 30) + 1)[: len(times)]
    mapping = map_models(requests, shape)
    return [replace(r, index=i, model=mapping[r.model], offset=None) for i, r in enumerate(requests)], times


def _judge(
    records: list[RequestRecord], requests: list[BenchRequest], measured: list[int]
) -> dict[str, object]:
    classes: dict[str, dict[str, object]] = {}
    default = Slo()  # a class that sends no bound is judged by the default SLO
    met = True
    for group in sorted({requests[i].group for i in measured}):
        idx = [i for i in measured if requests[i].group == group]
        r0 = requests[idx[0]]
        slo = Slo(ttft_s=r0.slo_ttft or default.ttft_s, tpot_s=r0.slo_tpot or default.tpot_s)
        recs = [records[i] for i in idx]
        s = summarise(recs, slo)
        ok = slo.sustained(s)
        met = met and ok
        classes[group] = {
            "requests": len(recs),
            "attained": sum(slo.met(r) for r in recs) / len(recs),
            "ttft_p90": s.ttft_p90,
            "tpot_p90_ms": s.tpot_p90 * 1000.0,
            "met": ok,
        }
    return {"met": met, "classes": classes}


def _point(job: tuple[str, str, dict[str, object], float, int, float, float, Settings]) -> dict[str, object]:
    workload, variant, overrides, rate, seed, warmup, duration, pool = job
    spec = load_workload(workload)
    shape = resolve_pool(spec)
    requests, times = _requests(spec, shape, rate, seed, warmup + duration + 1.0)
    sent = requests
    strategy = "round-robin" if variant == "round-robin" else "default"
    if variant == "untold":
        sent = [replace(r, slo_ttft=None, slo_tpot=None) for r in requests]
    settings = pool.replace(overrides) if overrides else pool
    config = shape.twin_config(seed=seed, settings=settings)
    out = run_twin(sent, times, strategy=strategy, config=config)
    measured = [i for i, t in enumerate(times) if warmup <= t < warmup + duration]
    return {"variant": variant, "rate": rate, "seed": seed, **_judge(out.records, requests, measured)}


def _variant(text: str) -> tuple[str, dict[str, object]]:
    name, _, rest = text.partition("=")
    return name, dict(pair.partition("=")[::2] for pair in rest.split(","))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", default="bench/slo-classes.yaml")
    ap.add_argument("--rates", required=True, help="comma-separated requests per second")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--warmup", type=float, default=20.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--pool-ttft", type=float, default=1.0, help="the pool's TTFT SLO told the gateway, s")
    ap.add_argument("--pool-tpot", type=float, default=0.05, help="the pool's TPOT SLO told the gateway, s")
    ap.add_argument("--variant", action="append", default=[], help="NAME=KEY=VALUE[,KEY=VALUE]")
    ap.add_argument("--skip", default="", help="comma-separated built-in variants to leave out")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    exit_on_sigterm()
    spec = load_workload(args.workload)
    if not isinstance(spec.workload, ClassesWorkload):
        raise SystemExit(f"{args.workload}: a classes workload is needed (its classes carry the bounds)")
    pool = Settings().replace(
        {"flow_control.ttft_slo": args.pool_ttft, "flow_control.tpot_slo": args.pool_tpot}
    )
    skip = set(filter(None, args.skip.split(",")))
    variants: list[tuple[str, dict[str, object]]] = [
        (v, {}) for v in ("round-robin", "untold", "headers") if v not in skip
    ]
    variants += [_variant(v) for v in args.variant]
    rates = [float(r) for r in args.rates.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [
        (args.workload, name, overrides, rate, seed, args.warmup, args.duration, pool)
        for rate in rates
        for seed in seeds
        for name, overrides in variants
    ]
    rows: list[dict[str, object]] = []
    with process_pool(args.jobs) as pool_exec:
        for row in pool_exec.map(_point, jobs):
            rows.append(row)
            classes = row["classes"]
            assert isinstance(classes, dict)
            parts = " ".join(
                f"{g}: {c['attained']:.1%} p90 {c['ttft_p90']:.2f}s/{c['tpot_p90_ms']:.0f}ms"
                for g, c in classes.items()
            )
            print(
                f"{row['variant']:>12} {row['rate']:>6g} QPS seed {row['seed']}: "
                f"{'met   ' if row['met'] else 'missed'} {parts}",
                flush=True,
            )
            if args.out is not None:
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    print("\npoints met per variant (every class within its own bounds), and each class's mean attainment:")
    for name, _ in variants:
        mine = [r for r in rows if r["variant"] == name]
        shares: dict[str, list[float]] = {}
        for r in mine:
            for group, c in r["classes"].items():  # type: ignore[attr-defined]
                shares.setdefault(group, []).append(float(c["attained"]))
        means = ", ".join(f"{g} {sum(v) / len(v):.1%}" for g, v in sorted(shares.items()))
        print(f"  {name:>12}: {sum(bool(r['met']) for r in mine)} of {len(mine)}; {means}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
