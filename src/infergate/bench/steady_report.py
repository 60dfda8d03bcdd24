"""Reports of steady-state twin runs: ``results.json`` by strategy, Markdown, plots.

``results.json`` is ``{"workload", "pool", "plan", "slo", "strategies": {name: {"slo_rate_qps",
"slo_rate", "points": [...]}}}``: per strategy its SLO rate (None when not searched) with the
evidence, and every load point it ran (fixed ``--qps`` points and bisection probes alike), each
with how long it ran in virtual time and how many measured requests its statistics cover.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from infergate.bench.report import BASELINE, RunResult, plot_latency_vs_load
from infergate.bench.stats import Slo, SloRate
from infergate.bench.steady import PointResult, PoolShape, SteadyPlan

__all__ = ["SteadyReport", "steady_markdown", "write_steady_reports"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SteadyReport:
    workload: str
    shape: PoolShape
    plan: SteadyPlan
    slo: Slo
    points: Mapping[str, Sequence[PointResult]]
    rates: Mapping[str, SloRate]
    closed_loop: bool = False
    """Loads are counts of clients and ``rates`` SLO concurrencies (``--concurrency``)."""

    def as_dict(self) -> dict[str, object]:
        key = "slo_clients" if self.closed_loop else "slo_rate_qps"
        return {
            "workload": self.workload,
            "mode": "twin",
            "load": "clients" if self.closed_loop else "qps",
            "pool": {
                "replicas": self.shape.replicas,
                "adapters": list(self.shape.adapters),
                "max_loras": self.shape.max_loras,
                "arrival": str(self.shape.arrival),
                "rate_profile": list(self.shape.rate_profile.points) if self.shape.rate_profile else None,
            },
            "plan": self.plan.as_dict(),
            "slo": {
                "ttft_s": self.slo.ttft_s,
                "tpot_s": self.slo.tpot_s,
                "min_success": self.slo.min_success,
            },
            "strategies": {
                name: {
                    key: self.rates[name].qps if name in self.rates else None,
                    "slo_rate": self.rates[name].as_dict() if name in self.rates else None,
                    "points": [p.as_dict() for p in self.points.get(name, ())],
                }
                for name in self.points
            },
        }


def _f(v: float, digits: int = 3) -> str:
    return "-" if math.isnan(v) else f"{v:.{digits}f}"


def steady_markdown(report: SteadyReport) -> str:
    """The plan, the SLO-rate table (ratios to round-robin and to the best strategy), every point."""
    p = report.plan
    lines = [
        f"**{report.workload}** on {report.shape.describe()}",
        "",
        f"Each load point: {p.warmup_s:.0f} s warm-up (excluded) + {p.duration_s:.0f} s measured "
        f"+ {p.cooldown_s:.1f} s cool-down of virtual time (unloaded e2e latency {p.unloaded_e2e_s:.2f} s); "
        + (
            "closed loop: the requests sent in the window are measured, and a run goes on until "
            "each has ended."
            if report.closed_loop
            else "a run stops early once its SLO verdict is certain."
        ),
        "",
    ]
    if report.rates:
        best = max(r.qps for r in report.rates.values())
        base = report.rates.get(BASELINE)
        found, unit = ("SLO concurrency", "clients") if report.closed_loop else ("SLO rate", "QPS")
        digits = "g" if report.closed_loop else ".2f"
        lines += [
            f"| strategy | {found} ({unit}) | first miss ({unit}) | probes | × best | × round-robin |",
            "|---|---|---|---|---|---|",
        ]
        for name, rate in sorted(report.rates.items(), key=lambda kv: -kv[1].qps):
            miss = "-" if rate.failing is None else f"{rate.failing:{digits}}"
            vs_best = f"{rate.qps / best:.2f}" if best > 0 else "-"
            vs_rr = f"{rate.qps / base.qps:.2f}×" if base is not None and base.qps > 0 else "-"
            text = f"{rate.qps:{digits}}" if rate.bounded else f"≥ {rate.qps:{digits}}"
            lines.append(f"| {name} | {text} | {miss} | {len(rate.probes)} | {vs_best} | {vs_rr} |")
        lines.append("")
    lines += [
        f"| strategy | {'clients' if report.closed_loop else 'QPS'} | p90 SLO | measured | ran (virtual s) "
        "| TTFT p50 (s) | TTFT p90 (s) | TPOT p90 (ms) | goodput/s | prefix hit | LoRA swaps | queued "
        "| stopped early |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, pts in report.points.items():
        for pt in pts:
            s = pt.summary
            hit = "-" if pt.prefix_hit_rate is None else f"{pt.prefix_hit_rate:.1%}"
            lines.append(
                f"| {name} | {pt.rate:{'g' if pt.closed_loop else '.2f'}} | {'yes' if pt.met else 'no'} "
                f"| {pt.measured} "
                f"| {pt.virtual_s:.0f} "
                f"| {_f(s.ttft_p50)} | {_f(s.ttft_p90)} | {_f(s.tpot_p90 * 1000, 1)} | {s.goodput_per_s:.2f} "
                f"| {hit} | {pt.lora_swaps} | {pt.gateway_queued} | {pt.stopped_early or '-'} |"
            )
    return "\n".join(lines) + "\n"


def write_steady_reports(reports: Sequence[SteadyReport], out: Path, *, plots: bool) -> Path:
    """``results.json`` (one workload: the object; several: a list), ``results.md``, and a plot."""
    out.mkdir(parents=True, exist_ok=True)
    data: object = reports[0].as_dict() if len(reports) == 1 else [r.as_dict() for r in reports]
    (out / "results.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    md = "\n".join(steady_markdown(r) for r in reports)
    (out / "results.md").write_text(md)
    runs = [
        RunResult(
            workload=r.workload,
            strategy=name,
            load=pt.rate,
            load_kind="concurrent" if pt.closed_loop else "qps",
            summary=pt.summary,
            prefix_hit_rate=pt.prefix_hit_rate,
            lora_swaps=pt.lora_swaps,
            per_endpoint_requests=pt.per_endpoint_requests,
            mode="twin",
        )
        for r in reports
        for name, pts in r.points.items()
        for pt in pts
        if pt.stopped_early is None  # a stopped run's p90 covers only what finished
    ]
    if plots and runs:
        plot_latency_vs_load(runs, out / "ttft_p90_vs_load.png")
    return out / "results.md"
