"""Reports of benchmark runs: JSON for machines, Markdown for people, PNG plots for both.

A report is a list of :class:`RunResult` (one strategy at one load point); the Markdown table and
the latency-vs-load plot group them by strategy so strategies can be compared side by side. Where a
strategy was run at several open-loop rates, the report adds its SLO rate (:class:`StrategySloRate`:
the highest rate whose run met the p90 SLO) with the ratio to round-robin and to
``greedy-true-state`` (greedy routing with the engines' true state: a strong heuristic, not a bound).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from infergate.bench.stats import SloRate, Summary, slo_rate_of_sweep

__all__ = [
    "RunResult",
    "StrategySloRate",
    "plot_latency_vs_load",
    "plot_load_spread",
    "slo_rate_markdown",
    "slo_rates_from_runs",
    "to_markdown",
    "write_json",
    "write_slo_rates_json",
]

BASELINE = "round-robin"
BOUND = "greedy-true-state"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """One run: ``strategy`` at ``load`` (QPS for open loop, concurrency for closed loop)."""

    workload: str
    strategy: str
    load: float
    load_kind: str
    summary: Summary
    prefix_hit_rate: float | None = None
    lora_swaps: int | None = None
    per_endpoint_requests: dict[str, int] = field(default_factory=dict)
    mode: str = "realtime"

    def as_dict(self) -> dict[str, object]:
        return {
            "workload": self.workload,
            "strategy": self.strategy,
            "load": self.load,
            "load_kind": self.load_kind,
            "mode": self.mode,
            "prefix_hit_rate": self.prefix_hit_rate,
            "lora_swaps": self.lora_swaps,
            "per_endpoint_requests": self.per_endpoint_requests,
            "summary": self.summary.as_dict(),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class StrategySloRate:
    """One strategy's SLO rate on one workload (see :class:`~infergate.bench.stats.SloRate`)."""

    workload: str
    strategy: str
    rate: SloRate


def slo_rates_from_runs(results: Sequence[RunResult]) -> list[StrategySloRate]:
    """The SLO rate of every (workload, strategy) run at two or more open-loop rates.

    Each run is judged against the SLO it was summarised with (``Summary.meets_slo``); no
    bisection here: the rate is the last swept rate met before the first one missed.
    """
    sweeps: dict[tuple[str, str], list[tuple[float, bool]]] = {}
    for r in results:
        if r.load_kind == "qps":
            sweeps.setdefault((r.workload, r.strategy), []).append((r.load, r.summary.meets_slo))
    return [
        StrategySloRate(workload=w, strategy=st, rate=slo_rate_of_sweep(points))
        for (w, st), points in sweeps.items()
        if len({rate for rate, _ in points}) >= 2
    ]


def _ratio(rate: SloRate, base: SloRate | None) -> float | None:
    if base is None or base.qps <= 0:
        return None
    return rate.qps / base.qps


def _ratio_text(rate: SloRate, base: SloRate | None) -> str:
    """``rate / base``; "≥" when only ``rate`` is a lower bound, "≤" when only ``base`` is."""
    ratio = _ratio(rate, base)
    if ratio is None or base is None:
        return "-"
    if rate.bounded == base.bounded:
        prefix = "" if rate.bounded else "~"
    else:
        prefix = "≥ " if not rate.bounded else "≤ "
    return f"{prefix}{ratio:.2f}×"


def _rate_text(rate: SloRate) -> str:
    if not rate.bounded:
        return f"≥ {rate.qps:.1f}"
    if rate.qps <= 0:
        return f"< {rate.failing:.1f}" if rate.failing is not None else "0"
    return f"{rate.qps:.1f}"


def slo_rate_markdown(
    rates: Sequence[StrategySloRate], *, baseline: str = BASELINE, bound: str = BOUND
) -> str:
    """One row per (workload, strategy): SLO rate, first missed rate, ratios to round-robin and to
    greedy-true-state.

    "≥ x" marks a rate that never failed in the sweep (a lower bound); "~" a ratio of two such.
    """
    header = (
        "| workload | strategy | SLO rate (QPS) | first miss (QPS) | runs "
        f"| × {baseline} | × {bound} |\n|---|---|---|---|---|---|---|\n"
    )
    by_key = {(r.workload, r.strategy): r.rate for r in rates}
    rows = []
    for r in sorted(rates, key=lambda x: (x.workload, -x.rate.qps, x.strategy)):
        first_miss = "-" if r.rate.failing is None else f"{r.rate.failing:.1f}"
        flag = "" if r.rate.monotone else " (not monotone)"
        rows.append(
            f"| {r.workload} | {r.strategy} | {_rate_text(r.rate)} | {first_miss}{flag} "
            f"| {len(r.rate.probes)} | {_ratio_text(r.rate, by_key.get((r.workload, baseline)))} "
            f"| {_ratio_text(r.rate, by_key.get((r.workload, bound)))} |"
        )
    return header + "\n".join(rows) + "\n"


def write_json(results: Sequence[RunResult], path: Path) -> None:
    path.write_text(json.dumps([r.as_dict() for r in results], indent=2, default=str) + "\n")


def write_slo_rates_json(
    rates: Sequence[StrategySloRate], path: Path, *, baseline: str = BASELINE, bound: str = BOUND
) -> None:
    """One object per (workload, strategy): the SLO rate, its evidence and the two ratios."""
    by_key = {(r.workload, r.strategy): r.rate for r in rates}
    out = [
        {
            "workload": r.workload,
            "strategy": r.strategy,
            **r.rate.as_dict(),
            f"ratio_to_{baseline}": _ratio(r.rate, by_key.get((r.workload, baseline))),
            f"ratio_to_{bound}": _ratio(r.rate, by_key.get((r.workload, bound))),
        }
        for r in rates
    ]
    path.write_text(json.dumps(out, indent=2) + "\n")


def _fmt(value: float | None, scale: float = 1.0, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * scale:.{digits}f}"


def _spread(counts: dict[str, int]) -> str:
    """Max over mean of requests per endpoint: 1.00 is perfectly even."""
    if not counts:
        return "-"
    values = list(counts.values())
    mean = sum(values) / len(values)
    return f"{max(values) / mean:.2f}" if mean else "-"


def to_markdown(results: Sequence[RunResult], slo_rates: Sequence[StrategySloRate] | None = None) -> str:
    """One table row per run, ordered by workload, load and strategy; then the SLO rates.

    "SLO met" is the share of requests meeting the bounds (what goodput counts); "p90 SLO" says
    whether the run as a whole met them (p90s under the bounds, success ≥ 99 %). The SLO-rate table
    follows when ``slo_rates`` is given, else when some strategy was swept over two or more rates.
    """
    header = (
        "| workload | load | strategy | goodput/s | SLO met | p90 SLO | TTFT p50 (s) | TTFT p90 (s) "
        "| TTFT p99 (s) | TPOT p90 (ms) | e2e p90 (s) | out tok/s | req/s | prefix hit | LoRA swaps "
        "| spread | errors |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in sorted(results, key=lambda x: (x.workload, x.load, x.strategy)):
        s = r.summary
        errors = sum(s.errors.values())
        hit = "-" if r.prefix_hit_rate is None else f"{r.prefix_hit_rate:.1%}"
        swaps = "-" if r.lora_swaps is None else str(r.lora_swaps)
        rows.append(
            f"| {r.workload} | {r.load:g} {r.load_kind} | {r.strategy} | {s.goodput_per_s:.2f} "
            f"| {s.slo_attainment:.0%} | {'yes' if s.meets_slo else 'no'} | {_fmt(s.ttft_p50)} "
            f"| {_fmt(s.ttft_p90)} | {_fmt(s.ttft_p99)} "
            f"| {_fmt(s.tpot_p90, 1000, 1)} | {_fmt(s.e2e_p90, 1, 2)} | {s.output_tokens_per_s:.0f} "
            f"| {s.requests_per_s:.2f} | {hit} | {swaps} | {_spread(r.per_endpoint_requests)} | {errors} |"
        )
    table = header + "\n".join(rows) + "\n"
    rates = slo_rates_from_runs(results) if slo_rates is None else slo_rates
    if not rates:
        return table
    return (
        table
        + "\nSLO rate: highest rate whose run met p90 TTFT and p90 TPOT bounds\n\n"
        + (slo_rate_markdown(rates))
    )


def _seconds_label(value: float, _: object = None) -> str:
    """A log axis tick in plain units (``50 ms``, ``2 s``), not ``10^-1`` powers."""
    if value <= 0:
        return ""
    if value < 1:
        return f"{value * 1000:.3g} ms"
    return f"{value:.3g} s"


_LOAD_LABELS = {"qps": "offered load (requests/s)", "concurrent": "concurrency (requests in flight)"}


def plot_latency_vs_load(results: Sequence[RunResult], path: Path, *, metric: str = "ttft_p90") -> None:
    """One line per strategy: ``metric`` against load, one panel per workload.

    The latency axis is logarithmic (saturation multiplies latencies) with ticks at 1, 2 and 5 of
    every decade written in ms or s, and the SLO bound drawn, so a reader sees at once where each
    strategy crosses it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    workloads = sorted({r.workload for r in results})
    fig, axes = plt.subplots(1, len(workloads), figsize=(6.5 * len(workloads), 4.2), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        runs = [r for r in results if r.workload == workload]
        for strategy in sorted({r.strategy for r in runs}):
            points = sorted((r.load, getattr(r.summary, metric)) for r in runs if r.strategy == strategy)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=strategy)
        if runs and metric.startswith(("ttft", "tpot")):
            slo = runs[0].summary.slo
            bound = slo.ttft_s if metric.startswith("ttft") else slo.tpot_s
            ax.axhline(
                bound, color="black", linestyle="--", linewidth=1, label=f"SLO {_seconds_label(bound)}"
            )
        ax.set_title(workload)
        ax.set_xlabel(_LOAD_LABELS.get(runs[0].load_kind, "load") if runs else "load")
        name, _, stat = metric.partition("_")
        ax.set_ylabel(f"{name.upper()} {stat} (log scale)")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(_seconds_label))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="major", alpha=0.35)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_load_spread(series: dict[str, list[tuple[float, float]]], path: Path, *, title: str) -> None:
    """Per-endpoint load over time: ``series`` maps endpoint → [(time, running + waiting)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for name, points in sorted(series.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], label=name, linewidth=1)
    ax.set_title(title)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("requests (running + waiting)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
