"""Compare every routing strategy in the digital twin at 50-200 % of round-robin's capacity.

Round-robin's capacity is the highest rate of a sweep at which its p90 TTFT and p90 TPOT still meet
the SLO (1 s, 50 ms). Each strategy then replays the identical seeded request stream at the three
rates on the simulated tutorial pool (3 replicas, H100 profile, LoRA with 2 GPU slots). Output: a
Markdown table, results.json and a latency-vs-load plot in --out.

    .venv/bin/python bench/bench_twin_compare.py --out bench-results/twin
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from infergate.bench.cli import run_twin_sweep
from infergate.bench.loadgen import arrival_offsets
from infergate.bench.report import RunResult, plot_latency_vs_load, to_markdown, write_json
from infergate.bench.stats import Slo, Summary, summarise
from infergate.bench.strategies import strategy_names
from infergate.bench.twin import run_twin
from infergate.bench.workloads import MixWorkload, SharedPrefixWorkload, WorkloadSpec, generate, load_workload

SCALE = {"multi-tenant-chat": {"sessions": 700}, "tutorial-mix": {"requests": 2000}}


def scaled(name: str) -> WorkloadSpec:
    """The built-in workload with enough requests for a steady state at high rates."""
    spec = load_workload(name)
    body = spec.workload
    if isinstance(body, SharedPrefixWorkload | MixWorkload) and name in SCALE:
        body = body.model_copy(update=SCALE[name])
    return spec.model_copy(update={"workload": body})


def meets(s: Summary, slo: Slo) -> bool:
    return s.succeeded == s.requests and s.ttft_p90 < slo.ttft_s and s.tpot_p90 < slo.tpot_s


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workloads", default="multi-tenant-chat,tutorial-mix")
    p.add_argument("--out", type=Path, default=Path("bench-results/twin"))
    p.add_argument("--strategies", default=",".join(strategy_names(twin=True)))
    args = p.parse_args()
    slo = Slo()
    results: list[RunResult] = []
    args.out.mkdir(parents=True, exist_ok=True)
    simulated = 0
    cpu_start = time.process_time()
    for name in args.workloads.split(","):
        requests = generate(scaled(name))
        capacity = 0.0
        rate = 4.0
        while rate <= 512:
            out = run_twin(requests, arrival_offsets(requests, rate, seed=0), strategy="round-robin")
            simulated += len(requests)
            if not meets(summarise(out.records, slo), slo):
                break
            capacity = rate
            rate *= 1.25
        print(f"{name}: {len(requests)} requests; round-robin capacity {capacity:.1f} QPS", flush=True)
        strategies = args.strategies.split(",")
        for share in (0.5, 0.8, 1.0, 1.5, 2.0):
            qps = round(capacity * share, 2)
            runs = run_twin_sweep(
                requests, workload=name, strategies=strategies, qps=[qps], replicas=3, slo=slo, seed=0
            )
            simulated += len(requests) * len(runs)
            results.extend(runs)
            for r in runs:
                s = r.summary
                print(
                    f"  {share:.0%} ({qps} QPS) {r.strategy}: goodput {s.goodput_per_s:.2f}/s "
                    f"TTFT p90 {s.ttft_p90:.3f}s TPOT p90 {s.tpot_p90 * 1000:.1f}ms",
                    flush=True,
                )
    cpu = time.process_time() - cpu_start
    write_json(results, args.out / "results.json")
    (args.out / "results.md").write_text(to_markdown(results))
    plot_latency_vs_load(results, args.out / "ttft_p90_vs_load.png")
    print(to_markdown(results))
    print(f"{simulated} simulated requests in {cpu:.1f} CPU-s = {simulated / cpu * 60:,.0f} per CPU-minute")


if __name__ == "__main__":
    main()
