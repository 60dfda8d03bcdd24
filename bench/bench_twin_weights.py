"""Sweep the default profile's scorer weights in the digital twin and print goodput and p90 TTFT.

The gateway's default weights are chosen from this sweep (docs/benchmarks.md shows it). Each
combination replays the same seeded request stream on the simulated tutorial pool (3 replicas,
LoRA with 2 slots), at a rate near round-robin's capacity where routing matters most. With
``--slo-rate`` each combination's SLO rate (highest rate whose run meets p90 TTFT < 1 s and p90 TPOT
< 50 ms, bisected to 2 %, searched from ``--qps``) is added: the figure the SLO is stated in.

    .venv/bin/python bench/bench_twin_weights.py --workload multi-tenant-chat --qps 40 [--slo-rate]
"""

from __future__ import annotations

import argparse
import itertools
import time

from infergate.bench.loadgen import arrival_offsets
from infergate.bench.stats import Summary, find_slo_rate, summarise
from infergate.bench.twin import run_twin
from infergate.bench.workloads import generate, load_workload
from infergate.config.picker import EndpointPickerConfig, PluginRef, PluginSpec, ProfileSpec


def profile(queue: float, kv: float, prefix: float, lora: float, inflight: float) -> EndpointPickerConfig:
    weights = [
        ("queue-scorer", queue),
        ("kv-cache-utilization-scorer", kv),
        ("prefix-cache-scorer", prefix),
        ("lora-affinity-scorer", lora),
        ("least-in-flight-scorer", inflight),
    ]
    used = [(t, w) for t, w in weights if w > 0]
    plugins = [PluginSpec(type=t) for t, _ in used] + [PluginSpec(type="max-score-picker")]
    refs = [PluginRef(plugin_ref=t, weight=w) for t, w in used] + [PluginRef(plugin_ref="max-score-picker")]
    return EndpointPickerConfig(
        plugins=plugins, scheduling_profiles=[ProfileSpec(name="default", plugins=refs)]
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workload", default="multi-tenant-chat")
    p.add_argument("--qps", type=float, default=40.0)
    p.add_argument("--limit", type=int, default=600)
    p.add_argument(
        "--grid",
        default="queue=1,2;kv=1,2;prefix=0,1,3,5;lora=0,1;inflight=0,1",
        help="weights to try per scorer, e.g. 'queue=2;kv=2;prefix=0,3;lora=0,1,2;inflight=0,1'",
    )
    p.add_argument("--slo-rate", action="store_true", help="also bisect each combination's SLO rate")
    args = p.parse_args()
    requests = generate(load_workload(args.workload))[: args.limit]
    offsets = arrival_offsets(requests, args.qps, seed=0)

    def slo_rate(strategy: str, picker: EndpointPickerConfig | None = None) -> str:
        """``| <SLO rate> `` for the table, or nothing without ``--slo-rate``."""
        if not args.slo_rate:
            return ""

        def met_at(q: float) -> bool:
            out = run_twin(requests, arrival_offsets(requests, q, seed=0), strategy=strategy, picker=picker)
            return summarise(out.records).meets_slo

        rate = find_slo_rate(met_at, start=args.qps)
        return f"| {rate.qps:.1f} " if rate.bounded else f"| ≥ {rate.qps:.1f} "

    def row(s: Summary) -> str:
        return f"| {s.goodput_per_s:.2f} | {s.ttft_p90:.3f} | {s.tpot_p90 * 1000:.1f} "

    axes = dict(part.split("=") for part in args.grid.split(";"))
    grid = itertools.product(
        *([float(x) for x in axes[name].split(",")] for name in ("queue", "kv", "prefix", "lora", "inflight"))
    )
    print(f"workload {args.workload}, {len(requests)} requests at {args.qps:g} QPS")
    extra = ("| SLO rate (QPS) ", "|---") if args.slo_rate else ("", "")
    print(
        "| queue | kv | prefix | lora | in-flight | goodput/s | TTFT p90 (s) | TPOT p90 (ms) "
        f"{extra[0]}| prefix hit |"
    )
    print(f"|---|---|---|---|---|---|---|---{extra[1]}|---|")
    rr = summarise(run_twin(requests, offsets, strategy="round-robin").records)
    print(f"| round-robin | | | | {row(rr)}{slo_rate('round-robin')}| |", flush=True)
    started = time.process_time()
    for q, kv, prefix, lora, inflight in grid:
        picker = profile(q, kv, prefix, lora, inflight)
        out = run_twin(requests, offsets, strategy="default", picker=picker)
        s = summarise(out.records)
        hit = f"{out.prefix_hit_rate:.1%}" if out.prefix_hit_rate is not None else "-"
        print(
            f"| {q:g} | {kv:g} | {prefix:g} | {lora:g} | {inflight:g} {row(s)}"
            f"{slo_rate('default', picker)}| {hit} |",
            flush=True,
        )
    print(f"sweep CPU time: {time.process_time() - started:.1f} s")


if __name__ == "__main__":
    main()
