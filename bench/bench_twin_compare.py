"""Compare every routing strategy in the digital twin: goodput at fixed loads and the SLO rate.

Two figures per strategy, on the identical seeded request stream, simulated tutorial pool
(3 replicas, H100 profile, LoRA with 2 GPU slots):

- per-request **goodput** and p90 TTFT at 50, 80, 100, 150 and 200 % of round-robin's capacity;
- the **SLO rate**: the highest request rate at which the run still meets the SLO as a whole
  (p90 TTFT < 1 s, p90 TPOT < 50 ms, ≥ 99 % success), found by stepping ×1.25 from a start rate and
  bisecting to ``--tolerance`` (2 %). Round-robin's SLO rate *is* its capacity; round-robin starts
  at 4 QPS, every other strategy at round-robin's capacity.

Output in --out: results.md (tables ready for the docs), results.json (runs at the fixed loads),
slo_rates.json (per strategy, with every probe), probes.json (summary of every probe run) and a
latency-vs-load plot. Exactly reproducible: fixed seeds, virtual time, deterministic probe rates.

    .venv/bin/python bench/bench_twin_compare.py --out bench-results/twin
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from infergate.bench.loadgen import arrival_offsets
from infergate.bench.report import (
    RunResult,
    StrategySloRate,
    plot_latency_vs_load,
    to_markdown,
    write_json,
    write_slo_rates_json,
)
from infergate.bench.stats import Slo, SloRate, find_slo_rate, slo_rate_of_sweep, summarise
from infergate.bench.strategies import strategy_names
from infergate.bench.twin import TwinConfig, run_twin
from infergate.bench.workloads import (
    BenchRequest,
    MixWorkload,
    SharedPrefixWorkload,
    WorkloadSpec,
    generate,
    load_workload,
)

SCALE = {"multi-tenant-chat": {"sessions": 700}, "tutorial-mix": {"requests": 2000}}
SHARES = (0.5, 0.8, 1.0, 1.5, 2.0)
BASELINE = "round-robin"
BOUND = "greedy-true-state"


def scaled(name: str) -> WorkloadSpec:
    """The built-in workload with enough requests for a steady state at high rates."""
    spec = load_workload(name)
    body = spec.workload
    if isinstance(body, SharedPrefixWorkload | MixWorkload) and name in SCALE:
        body = body.model_copy(update=SCALE[name])
    return spec.model_copy(update={"workload": body})


class Runner:
    """Runs one workload in the twin, once per (strategy, rate): probes and table share runs."""

    def __init__(self, name: str, requests: Sequence[BenchRequest], slo: Slo, seed: int = 0) -> None:
        self.name = name
        self.requests = requests
        self.slo = slo
        self.seed = seed
        self.runs: dict[tuple[str, float], RunResult] = {}

    def run(self, strategy: str, qps: float) -> RunResult:
        key = (strategy, qps)
        if key not in self.runs:
            offsets = arrival_offsets(self.requests, qps, seed=self.seed)
            out = run_twin(self.requests, offsets, strategy=strategy, config=TwinConfig(seed=self.seed))
            self.runs[key] = RunResult(
                workload=self.name,
                strategy=strategy,
                load=qps,
                load_kind="qps",
                summary=summarise(out.records, self.slo),
                prefix_hit_rate=out.prefix_hit_rate,
                lora_swaps=out.lora_swaps,
                per_endpoint_requests=out.per_endpoint_requests,
                mode="twin",
            )
        return self.runs[key]

    def slo_rate(self, strategy: str, *, start: float, tolerance: float) -> SloRate:
        rate = find_slo_rate(
            lambda q: self.run(strategy, q).summary.meets_slo, start=start, tolerance=tolerance
        )
        tpot = self.run(strategy, rate.qps).summary.tpot_p90 if rate.qps else float("nan")
        print(
            f"  {strategy}: SLO rate {rate.qps:.2f} QPS (first miss {rate.failing}, "
            f"{len(rate.probes)} probes, TPOT p90 there {tpot * 1000:.1f} ms)",
            flush=True,
        )
        return rate

    def evidence(self, strategy: str) -> SloRate:
        """The SLO rate from every run of ``strategy`` so far (probes and fixed loads together), so
        a fixed load that passes above the first miss marks the rate as not monotone."""
        return slo_rate_of_sweep(
            (qps, r.summary.meets_slo) for (st, qps), r in self.runs.items() if st == strategy
        )


def _seconds(v: float) -> str:
    return f"{v:.3f}" if v < 1 else f"{v:.3g}"


def docs_table(
    name: str,
    capacity: float,
    runs: Sequence[RunResult],
    rates: dict[str, SloRate],
    strategies: Sequence[str],
) -> str:
    """The docs' table: goodput / p90 TTFT per load share, then SLO rate and its two ratios."""
    loads = [f"{share:.0%} ({capacity * share:.1f})" for share in SHARES]
    head = f"| strategy | {' | '.join(loads)} | SLO rate (QPS) | × {BASELINE} | × {BOUND} |\n"
    head += "|---" * (len(SHARES) + 4) + "|\n"
    by = {(r.strategy, r.load): r for r in runs}
    base, bound = rates.get(BASELINE), rates.get(BOUND)
    rows = []
    for st in strategies:
        cells = []
        for share in SHARES:
            s = by[(st, capacity * share)].summary
            cells.append(f"{s.goodput_per_s:.2f} / {_seconds(s.ttft_p90)}")
        rate = rates[st]
        text = f"{rate.qps:.1f}" if rate.bounded else f"≥ {rate.qps:.1f}"
        text += "" if rate.monotone else " †"
        ratio_rr = f"{rate.qps / base.qps:.2f}×" if base and base.qps else "-"
        ratio_or = f"{rate.qps / bound.qps:.2f}×" if bound and bound.qps else "-"
        label = f"{BOUND} (twin only)" if st == BOUND else ("infergate default" if st == "default" else st)
        rows.append(f"| {label} | {' | '.join(cells)} | {text} | {ratio_rr} | {ratio_or} |")
    note = (
        "\n† not monotone: a run above the first miss met the SLO again; the rate is the last one "
        "met before the first miss.\n"
        if any(not rates[st].monotone for st in strategies)
        else ""
    )
    title = f"**{name}**: goodput (req/s within SLO) / p90 TTFT (s); SLO rate bisected to 2 %\n\n"
    return title + head + "\n".join(rows) + "\n" + note


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workloads", default="multi-tenant-chat,tutorial-mix")
    p.add_argument("--out", type=Path, default=Path("bench-results/twin"))
    p.add_argument("--strategies", default=",".join(strategy_names(twin=True)))
    p.add_argument("--tolerance", type=float, default=0.02, help="bisect SLO rates to this relative width")
    p.add_argument("--limit", type=int, help="only the first N requests (quick checks, not for the docs)")
    args = p.parse_args()
    slo = Slo()
    strategies = args.strategies.split(",")
    if BASELINE not in strategies:
        strategies.insert(0, BASELINE)
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    probes: list[RunResult] = []
    slo_rates: list[StrategySloRate] = []
    tables: list[str] = []
    cpu_start = time.process_time()
    for name in args.workloads.split(","):
        runner = Runner(name, generate(scaled(name))[: args.limit], slo)
        print(f"{name}: {len(runner.requests)} requests", flush=True)
        rates = {BASELINE: runner.slo_rate(BASELINE, start=4.0, tolerance=args.tolerance)}
        capacity = rates[BASELINE].qps
        for st in strategies:
            if st != BASELINE:
                rates[st] = runner.slo_rate(st, start=capacity, tolerance=args.tolerance)
        table_runs = [runner.run(st, capacity * share) for share in SHARES for st in strategies]
        for r in table_runs:
            s = r.summary
            print(
                f"  {r.load / capacity:.0%} ({r.load:.1f} QPS) {r.strategy}: goodput {s.goodput_per_s:.2f}/s "
                f"TTFT p90 {s.ttft_p90:.3f}s TPOT p90 {s.tpot_p90 * 1000:.1f}ms",
                flush=True,
            )
        rates = {st: runner.evidence(st) for st in strategies}
        results.extend(table_runs)
        probes.extend(runner.runs.values())
        slo_rates.extend(StrategySloRate(workload=name, strategy=st, rate=rates[st]) for st in strategies)
        tables.append(docs_table(name, capacity, table_runs, rates, strategies))
    cpu = time.process_time() - cpu_start
    simulated = sum(r.summary.requests for r in probes)
    write_json(results, args.out / "results.json")
    write_json(probes, args.out / "probes.json")
    write_slo_rates_json(slo_rates, args.out / "slo_rates.json")
    md = "\n".join(tables) + "\n" + to_markdown(results, slo_rates)
    (args.out / "results.md").write_text(md)
    plot_latency_vs_load(results, args.out / "ttft_p90_vs_load.png")
    print(md)
    print(f"{simulated} simulated requests in {cpu:.1f} CPU-s = {simulated / cpu * 60:,.0f} per CPU-minute")
    (args.out / "cpu.json").write_text(json.dumps({"simulated_requests": simulated, "cpu_s": cpu}) + "\n")


if __name__ == "__main__":
    main()
