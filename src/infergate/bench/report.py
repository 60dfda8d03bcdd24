"""Reports of benchmark runs: JSON for machines, Markdown for people, PNG plots for both.

A report is a list of :class:`RunResult` (one strategy at one load point); the Markdown table and
the latency-vs-load plot group them by strategy so strategies can be compared side by side.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from infergate.bench.stats import Summary

__all__ = ["RunResult", "plot_latency_vs_load", "plot_load_spread", "to_markdown", "write_json"]


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


def write_json(results: Sequence[RunResult], path: Path) -> None:
    path.write_text(json.dumps([r.as_dict() for r in results], indent=2, default=str) + "\n")


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


def to_markdown(results: Sequence[RunResult]) -> str:
    """One table row per run, ordered by workload, load and strategy."""
    header = (
        "| workload | load | strategy | goodput/s | SLO met | TTFT p50 (s) | TTFT p90 (s) | TTFT p99 (s) "
        "| TPOT p90 (ms) | e2e p90 (s) | out tok/s | req/s | prefix hit | LoRA swaps | spread | errors |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in sorted(results, key=lambda x: (x.workload, x.load, x.strategy)):
        s = r.summary
        errors = sum(s.errors.values())
        hit = "-" if r.prefix_hit_rate is None else f"{r.prefix_hit_rate:.1%}"
        swaps = "-" if r.lora_swaps is None else str(r.lora_swaps)
        rows.append(
            f"| {r.workload} | {r.load:g} {r.load_kind} | {r.strategy} | {s.goodput_per_s:.2f} "
            f"| {s.slo_attainment:.0%} | {_fmt(s.ttft_p50)} | {_fmt(s.ttft_p90)} | {_fmt(s.ttft_p99)} "
            f"| {_fmt(s.tpot_p90, 1000, 1)} | {_fmt(s.e2e_p90, 1, 2)} | {s.output_tokens_per_s:.0f} "
            f"| {s.requests_per_s:.2f} | {hit} | {swaps} | {_spread(r.per_endpoint_requests)} | {errors} |"
        )
    return header + "\n".join(rows) + "\n"


def plot_latency_vs_load(results: Sequence[RunResult], path: Path, *, metric: str = "ttft_p90") -> None:
    """One line per strategy: ``metric`` against load, one panel per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = sorted({r.workload for r in results})
    fig, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        runs = [r for r in results if r.workload == workload]
        for strategy in sorted({r.strategy for r in runs}):
            points = sorted((r.load, getattr(r.summary, metric)) for r in runs if r.strategy == strategy)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=strategy)
        ax.set_title(workload)
        ax.set_xlabel(f"load ({runs[0].load_kind})" if runs else "load")
        ax.set_ylabel(metric.replace("_", " ") + " (s)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
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
