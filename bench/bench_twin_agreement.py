"""Does the digital twin agree with the real-time matrix? (issue 7)

The issue's check: on a small sweep the twin and the real-time bench rank the strategies the same
and their p90 TTFT differ by less than 20 %. Both sides get the SAME settings: the same workload
prefix (``--limit``), the same seeded arrival times, 3 replicas with the tutorial's LoRA flags, the
gateway's 50 ms scrape interval, and the same GPU slowdown (``--time-scale K`` on the real
replicas, ``TwinConfig.time_scale`` on the twin's engines), so the twin's virtual seconds are the
matrix's wall seconds.

The real side is either run here (``--run``; hold the bench lock) or read from earlier matrix runs
(``--real DIR``, the ``--out`` of ``infergate bench --matrix``; repeatable), which lets each locked
matrix run stay short. Where the matrix kept per-request records (``records-<load>.json``), the
comparison also matches requests one to one and reports how much later the real first token came
than the twin's (median and p90 of the difference): a constant excess is transport (HTTP, proxy),
an excess that grows with load is CPU contention on the benchmark machine.

    flock /tmp/infergate-bench.lock .venv/bin/python bench/bench_twin_agreement.py --run --out DIR
    .venv/bin/python bench/bench_twin_agreement.py --real DIR_A --real DIR_B     # compare only

Verdict per workload: PASS when, at every load point, the strategies' order by p90 TTFT is the
same on both sides and every |twin - real| / real < 20 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from infergate.bench.loadgen import RequestRecord, arrival_offsets
from infergate.bench.stats import Slo, percentile, summarise
from infergate.bench.twin import TwinConfig, run_twin
from infergate.bench.workloads import BenchRequest, generate, load_workload

TOLERANCE = 0.20


@dataclass(frozen=True)
class Sweep:
    """One workload's agreement sweep. ``qps`` are ~50 % and ~80 % of round-robin's capacity at
    this time scale (twin capacity at K=1 divided by K: (a) 46.6, (b) 19.1 QPS)."""

    time_scale: float
    qps: tuple[float, ...]


SWEEPS = {
    "multi-tenant-chat": Sweep(time_scale=4.0, qps=(5.83, 9.32)),
    "tutorial-mix": Sweep(time_scale=2.0, qps=(4.78, 7.64)),
}
STRATEGIES = ("default", "round-robin", "least-in-flight")


@dataclass
class Point:
    """One strategy at one load, both sides. ``excess`` is real - twin TTFT per matched request."""

    strategy: str
    load: float
    real_p90: float
    twin_p90: float
    excess: list[float] = field(default_factory=list)
    busy: float | None = None  # share of the machine's CPU in use during the real run
    real_ci: tuple[float, float] | None = None  # bootstrap 90 % interval of the real p90
    twin_range: tuple[float, float] | None = None  # twin p90 under arrival jitter: min, max

    @property
    def rel_diff(self) -> float:
        return (self.twin_p90 - self.real_p90) / self.real_p90 if self.real_p90 > 0 else math.inf


@dataclass
class Comparison:
    workload: str
    points: list[Point]

    def loads(self) -> list[float]:
        return sorted({p.load for p in self.points})

    def ranking(self, load: float, side: str) -> list[str]:
        pts = [p for p in self.points if p.load == load]
        return [p.strategy for p in sorted(pts, key=lambda p: getattr(p, f"{side}_p90"))]

    def same_ranking(self, load: float) -> bool:
        return self.ranking(load, "real") == self.ranking(load, "twin")

    def swaps_within_noise(self, load: float) -> bool:
        """Whether every pair the two sides order differently is a statistical tie: overlapping
        bootstrap intervals of the real p90s, or overlapping p90 ranges of the jittered twin runs
        (the twin itself cannot order them). Such a swap says nothing about the twin's model."""
        pts = {p.strategy: p for p in self.points if p.load == load}
        twin_order = self.ranking(load, "twin")
        real_rank = {s: i for i, s in enumerate(self.ranking(load, "real"))}
        for i, a in enumerate(twin_order):
            for b in twin_order[i + 1 :]:
                if real_rank[a] > real_rank[b]:  # swapped
                    pa, pb = pts[a], pts[b]
                    if not (_overlap(pa.real_ci, pb.real_ci) or _overlap(pa.twin_range, pb.twin_range)):
                        return False
        return True

    @property
    def within_noise(self) -> bool:
        """The weaker reading for a sweep whose p90 sits on a cliff of a bimodal distribution:
        every point off by 20 % or more has the real p90 inside the twin's jittered range or the
        twin's p90 inside the real bootstrap interval, and every rank swap is a statistical tie."""

        def inside(x: float, span: tuple[float, float] | None) -> bool:
            return span is not None and span[0] <= x <= span[1]

        return all(self.same_ranking(x) or self.swaps_within_noise(x) for x in self.loads()) and all(
            abs(p.rel_diff) < TOLERANCE or inside(p.real_p90, p.twin_range) or inside(p.twin_p90, p.real_ci)
            for p in self.points
        )

    @property
    def passed(self) -> bool:
        return all(self.same_ranking(x) for x in self.loads()) and all(
            abs(p.rel_diff) < TOLERANCE for p in self.points
        )


def _overlap(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    return a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]


def bootstrap_p90(values: Sequence[float], *, rounds: int = 400, seed: int = 0) -> tuple[float, float]:
    """90 % bootstrap interval of the p90 of ``values`` (resampling requests with replacement)."""
    rng = random.Random(seed)
    n = len(values)
    stats = sorted(percentile([values[rng.randrange(n)] for _ in range(n)], 90) for _ in range(rounds))
    return stats[int(0.05 * rounds)], stats[int(0.95 * rounds) - 1]


def compare(
    workload: str,
    real: Mapping[tuple[str, float], float],
    twin: Mapping[tuple[str, float], float],
    excess: Mapping[tuple[str, float], list[float]] | None = None,
    busy: Mapping[tuple[str, float], float] | None = None,
    real_ci: Mapping[tuple[str, float], tuple[float, float]] | None = None,
    twin_range: Mapping[tuple[str, float], tuple[float, float]] | None = None,
) -> Comparison:
    """Pair the p90 TTFTs of both sides by (strategy, load); points missing on a side are dropped."""
    points = [
        Point(
            s,
            load,
            real[(s, load)],
            twin[(s, load)],
            list((excess or {}).get((s, load), [])),
            (busy or {}).get((s, load)),
            (real_ci or {}).get((s, load)),
            (twin_range or {}).get((s, load)),
        )
        for (s, load) in sorted(real)
        if (s, load) in twin
    ]
    return Comparison(workload, points)


def to_markdown(c: Comparison) -> str:
    lines = [
        f"**{c.workload}** — {'PASS' if c.passed else 'FAIL'} (same ranking and |diff| < {TOLERANCE:.0%}); "
        f"{'consistent' if c.within_noise else 'NOT consistent'} within noise",
        "",
        "| load (qps) | strategy | p90 TTFT real (s) [90 % CI] | p90 TTFT twin (s) [jittered] | twin vs real "
        "| real − twin per request: median / p90 (s) | machine CPU busy |",
        "|---|---|---|---|---|---|---|",
    ]
    for load in c.loads():
        for p in sorted((p for p in c.points if p.load == load), key=lambda p: p.real_p90):
            ex = f"{statistics.median(p.excess):+.3f} / {percentile(p.excess, 90):+.3f}" if p.excess else "-"
            flag = "" if abs(p.rel_diff) < TOLERANCE else " ✗"
            ci = "" if p.real_ci is None else f" [{p.real_ci[0]:.3f}–{p.real_ci[1]:.3f}]"
            jr = "" if p.twin_range is None else f" [{p.twin_range[0]:.3f}–{p.twin_range[1]:.3f}]"
            lines.append(
                f"| {load:g} | {p.strategy} | {p.real_p90:.3f}{ci} | {p.twin_p90:.3f}{jr} "
                f"| {p.rel_diff:+.1%}{flag} | {ex} | {'-' if p.busy is None else f'{p.busy:.0%}'} |"
            )
    lines.append("")
    for load in c.loads():
        same = "same" if c.same_ranking(load) else "DIFFERENT"
        if not c.same_ranking(load):
            same += ", swaps within noise" if c.swaps_within_noise(load) else ", a swap beyond noise"
        lines.append(
            f"- {load:g} qps ranking ({same}): real {' < '.join(c.ranking(load, 'real'))}; "
            f"twin {' < '.join(c.ranking(load, 'twin'))}"
        )
    return "\n".join(lines) + "\n"


def _key(strategy: str, load: float) -> tuple[str, float]:
    return strategy, round(load, 4)


def read_real(
    dirs: Sequence[Path], workload: str
) -> tuple[dict[tuple[str, float], float], dict[tuple[str, float], list[dict[str, object]]]]:
    """p90 TTFT per (strategy, load) from matrix ``results.json`` files, plus per-request records
    where the matrix kept them (``matrix/<strategy>/<load>/records-<load>.json``)."""
    p90: dict[tuple[str, float], float] = {}
    records: dict[tuple[str, float], list[dict[str, object]]] = {}
    for d in dirs:
        for row in json.loads((d / "results.json").read_text()):
            if row["workload"] != workload or row.get("mode", "realtime") != "realtime":
                continue
            key = _key(row["strategy"], float(row["load"]))
            p90[key] = float(row["summary"]["ttft_p90"])
            safe = row["strategy"].replace(":", "-").replace("/", "-")
            path = d / "matrix" / safe / f"{row['load']:g}" / f"records-{row['load']:g}.json"
            if path.exists():
                records[key] = json.loads(path.read_text())
    return p90, records


def read_busy(dirs: Sequence[Path], workload: str) -> dict[tuple[str, float], float]:
    """How busy the machine's CPUs were during each real run (``cpu-<load>.json`` of the matrix)."""
    busy: dict[tuple[str, float], float] = {}
    for d in dirs:
        for row in json.loads((d / "results.json").read_text()):
            if row["workload"] != workload:
                continue
            safe = row["strategy"].replace(":", "-").replace("/", "-")
            path = d / "matrix" / safe / f"{row['load']:g}" / f"cpu-{row['load']:g}.json"
            if path.exists():
                value = json.loads(path.read_text()).get("machine_busy")
                if isinstance(value, float | int):
                    busy[_key(row["strategy"], float(row["load"]))] = float(value)
    return busy


def run_real(
    requests: Sequence[BenchRequest],
    workload: str,
    sweep: Sweep,
    strategies: Sequence[str],
    out: Path,
    seed: int,
) -> Path:
    """Run the matrix for this sweep (hold the bench lock) and write its results.json to ``out``."""
    from infergate.bench.matrix import MatrixConfig, run_matrix
    from infergate.bench.report import write_json

    config = MatrixConfig(
        replicas=3,
        strategies=list(strategies),
        loads=list(sweep.qps),
        time_scale=sweep.time_scale,
        seed=seed,
        workdir=out / "matrix",
    )
    slo = Slo(ttft_s=sweep.time_scale, tpot_s=0.05 * sweep.time_scale)
    outcome = asyncio.run(run_matrix(requests, workload=workload, config=config, slo=slo))
    for name, reason in outcome.skipped.items():
        print(f"skipped {name}: {reason.splitlines()[0]}")
    out.mkdir(parents=True, exist_ok=True)
    write_json(outcome.results, out / "results.json")
    return out


def run_twin_side(
    requests: Sequence[BenchRequest],
    sweep: Sweep,
    loads: Sequence[float],
    strategies: Sequence[str],
    seed: int,
    *,
    flow_control: bool = False,
    client_latency: float = 0.0,
    jitter: float = 0.0,
    jitter_seed: int | None = None,
) -> tuple[dict[tuple[str, float], float], dict[tuple[str, float], list[RequestRecord]]]:
    """The twin with the matrix's settings: same stream, arrival times, slowdown, scrape interval.

    ``jitter`` (seconds) moves every arrival by up to that much either way, and ``jitter_seed`` also
    reseeds the scheduler's random tie-breaks (the real gateway's are unseeded): how sensitive the
    twin's answer is to the few milliseconds by which real arrivals differ from the schedule and to
    the luck of the draw.
    """
    config = TwinConfig(
        replicas=3,
        seed=seed if jitter_seed is None else jitter_seed + 1000,
        time_scale=sweep.time_scale,
        flow_control=flow_control,
        client_latency=client_latency,
    )
    p90: dict[tuple[str, float], float] = {}
    records: dict[tuple[str, float], list[RequestRecord]] = {}
    for load in loads:
        offsets = arrival_offsets(requests, load, seed)
        if jitter > 0:
            rng = random.Random(jitter_seed)
            offsets = [max(0.0, o + rng.uniform(-jitter, jitter)) for o in offsets]
        for strategy in strategies:
            out = run_twin(requests, offsets, strategy=strategy, config=config)
            key = _key(strategy, load)
            p90[key] = summarise(out.records).ttft_p90
            records[key] = out.records
    return p90, records


def calibrate(dirs: Sequence[Path], workload: str, sweep: Sweep, seed: int) -> float | None:
    """The real path's latency beyond the model: median real − twin TTFT over idle-load runs
    (``--calibrate``: a matrix run at ~1 QPS, where nothing queues), so it is measured apart from
    the runs it is then used to predict."""
    excess: list[float] = []
    for d in dirs:
        _, real_records = read_real([d], workload)
        for (strategy, load), rows in real_records.items():
            requests = generate(load_workload(workload))[: len(rows)]
            _, twin = run_twin_side(requests, sweep, [load], [strategy], seed)
            excess += excess_of(rows, twin[(strategy, load)])
    return statistics.median(excess) if excess else None


def excess_of(real: Sequence[Mapping[str, object]], twin: Sequence[RequestRecord]) -> list[float]:
    """Real minus twin TTFT for each request that has a first token on both sides."""
    by_index = {r.index: r.ttft for r in twin if r.ttft is not None}
    out = []
    for row in real:
        ttft, index = row.get("ttft"), row.get("index")
        if isinstance(ttft, float) and isinstance(index, int) and index in by_index:
            out.append(ttft - by_index[index])
    return out


def mean_ttfts(
    real: Mapping[tuple[str, float], Sequence[Mapping[str, object]]],
    twin: Mapping[tuple[str, float], Sequence[RequestRecord]],
) -> dict[tuple[str, float], tuple[float, float]]:
    """Mean TTFT of both sides per (strategy, load) where the matrix kept per-request records."""
    out = {}
    for key, rows in real.items():
        if key not in twin:
            continue
        r = [t for row in rows if isinstance(t := row.get("ttft"), float)]
        t = [x.ttft for x in twin[key] if x.ttft is not None]
        if r and t:
            out[key] = (statistics.fmean(r), statistics.fmean(t))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--workloads", default=",".join(SWEEPS))
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--limit", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--qps", help="override the loads of every workload, e.g. 4,8")
    p.add_argument("--time-scale", type=float, help="override every workload's time scale")
    p.add_argument("--real", action="append", type=Path, default=[], help="matrix --out folder to read")
    p.add_argument("--run", action="store_true", help="run the matrix here (hold the bench lock)")
    p.add_argument("--out", type=Path, default=Path("bench-results/agreement"))
    p.add_argument(
        "--twin-flow-control", action="store_true", help="run the gateway's flow control in the twin too"
    )
    p.add_argument(
        "--calibrate",
        action="append",
        type=Path,
        default=[],
        help="matrix --out folder of an idle-load run: sets the twin's client latency",
    )
    p.add_argument("--jitter", type=float, default=0.005, help="arrival jitter (s) for the sensitivity runs")
    p.add_argument("--jitter-runs", type=int, default=8, help="twin runs with jittered arrivals (0: none)")
    args = p.parse_args()
    strategies = args.strategies.split(",")
    verdicts = []
    for workload in args.workloads.split(","):
        base = SWEEPS.get(workload, Sweep(time_scale=4.0, qps=(4.0, 8.0)))
        sweep = Sweep(
            time_scale=args.time_scale or base.time_scale,
            qps=tuple(float(x) for x in args.qps.split(",")) if args.qps else base.qps,
        )
        requests = generate(load_workload(workload))[: args.limit]
        dirs = list(args.real)
        if args.run:
            started = time.monotonic()
            dirs.append(run_real(requests, workload, sweep, strategies, args.out / workload, args.seed))
            print(f"{workload}: matrix took {time.monotonic() - started:.0f} s")
        real_p90, real_records = read_real(dirs, workload)
        real_p90 = {k: v for k, v in real_p90.items() if k[0] in strategies}
        loads = sorted({load for _, load in real_p90} & {round(q, 4) for q in sweep.qps}) or sorted(
            {load for _, load in real_p90}
        )
        real_p90 = {k: v for k, v in real_p90.items() if k[1] in loads}
        if not real_p90:
            print(f"{workload}: no real-time results to compare (use --run or --real)")
            continue
        latency = calibrate(args.calibrate, workload, sweep, args.seed) if args.calibrate else None
        twin_opts = {"flow_control": args.twin_flow_control, "client_latency": latency or 0.0}
        twin_p90, twin_records = run_twin_side(requests, sweep, loads, strategies, args.seed, **twin_opts)
        spread: dict[tuple[str, float], list[float]] = {}
        for j in range(args.jitter_runs):
            jittered, _ = run_twin_side(
                requests, sweep, loads, strategies, args.seed, jitter=args.jitter, jitter_seed=j, **twin_opts
            )
            for k, v in jittered.items():
                spread.setdefault(k, []).append(v)
        twin_range = {k: (min(v), max(v)) for k, v in spread.items()}
        excess = {k: excess_of(real_records[k], twin_records[k]) for k in real_records if k in twin_records}
        ci = {
            k: bootstrap_p90([t for r in rows if isinstance(t := r.get("ttft"), float)])
            for k, rows in real_records.items()
            if k in real_p90
        }
        comparison = compare(workload, real_p90, twin_p90, excess, read_busy(dirs, workload), ci, twin_range)
        print(
            f"\n{workload}: first {len(requests)} requests, time scale {sweep.time_scale:g}, "
            f"seed {args.seed}, "
            f"twin client latency {1000 * (latency or 0.0):.1f} ms"
            + (
                f", {args.jitter_runs} jittered twin runs (±{1000 * args.jitter:g} ms)"
                if args.jitter_runs
                else ""
            )
            + "\n"
        )
        print(to_markdown(comparison))
        means = mean_ttfts(real_records, twin_records)
        if means:
            print(
                "Mean TTFT (a smooth summary of the tail, where p90 sits on a cliff):\n\n"
                "| load (qps) | strategy | mean TTFT real (s) | twin (s) | twin vs real |\n"
                "|---|---|---|---|---|"
            )
            for (strategy, load), (real_mean, twin_mean) in sorted(means.items(), key=lambda x: x[0][::-1]):
                diff = (twin_mean - real_mean) / real_mean
                print(f"| {load:g} | {strategy} | {real_mean:.3f} | {twin_mean:.3f} | {diff:+.1%} |")
            print()
        verdicts.append((workload, comparison.passed, comparison.within_noise))
    if verdicts:
        print(
            "verdict: "
            + ", ".join(
                f"{w} {'PASS' if ok else 'FAIL'} ({'' if noise else 'NOT '}consistent within noise)"
                for w, ok, noise in verdicts
            )
        )


if __name__ == "__main__":
    main()
