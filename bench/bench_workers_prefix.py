"""Prefix affinity with gateway worker processes, in real time: the replicas' prefix-cache hit rate
with ``infergate serve --workers 1`` and ``--workers N`` on the same request stream.

Fresh simulated replicas (``infergate simulate``) and a fresh gateway per run (the matrix rig,
``infergate.bench.matrix``), the ``default`` strategy, the first ``--requests`` of a corpus
workload at ``--qps`` with seeded arrival times; the hit rate is read from the replicas' own
``vllm:prefix_cache_*`` counters, so it measures what the cache saw, whichever worker routed.

    nice -n 10 .venv/bin/python bench/bench_workers_prefix.py --workload many-tenants \\
        --requests 400 --qps 4 --workers 2 --reps 2
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from dataclasses import replace
from pathlib import Path

from infergate.bench.matrix import MatrixConfig, run_matrix
from infergate.bench.steady import map_models, resolve_pool
from infergate.bench.workloads import generate, load_workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", default="many-tenants")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--qps", type=float, default=4.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1, help="runs per worker count, interleaved")
    ap.add_argument("--time-scale", type=float, default=1.0)
    a = ap.parse_args()
    spec = load_workload(a.workload)
    shape = resolve_pool(spec)
    requests = generate(spec)[: a.requests]
    mapping = map_models(requests, shape)
    requests = [replace(r, model=mapping[r.model]) for r in requests]
    rows = []
    for rep in range(a.reps):
        for n in (1, a.workers):
            cfg = MatrixConfig(
                replicas=shape.replicas,
                strategies=["default"],
                loads=[a.qps],
                adapters=shape.adapters,
                max_loras=shape.max_loras,
                time_scale=a.time_scale,
                gateway_workers=n,
                workdir=Path(tempfile.mkdtemp(prefix=f"workers-prefix-{n}-")),
                sample_interval=0.0,
            )
            out = asyncio.run(run_matrix(requests, workload=a.workload, config=cfg))
            if out.skipped:
                raise SystemExit(f"run failed: {out.skipped}")
            for r in out.results:
                s = r.summary
                hit = "–" if r.prefix_hit_rate is None else f"{100 * r.prefix_hit_rate:.1f} %"
                rows.append(
                    f"| {n} | {rep} | {hit} | {100 * s.slo_attainment:.1f} % | {s.ttft_p90:.3f} | "
                    f"{s.succeeded}/{s.requests} |"
                )
                print(rows[-1], flush=True)
    print(
        f"\n{a.workload}, {a.requests} requests at {a.qps:g} QPS, {shape.replicas} replicas, default strategy"
    )
    print("| workers | rep | prefix hit rate | SLO attainment | p90 TTFT (s) | ok |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
