"""``bench/bench_dataplane.py``'s tables: every path's figures, and issue #18's targets judged.

Kept apart from the script, which starts the processes and measures: these are pure functions of
the points it collected (each a dict with ``path``, ``rep``, ``concurrency``, ``rps`` and, where
measured, latencies, CPU per request and the queued share), tested on their own.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["CPU_TARGET", "ENVOY_RATE_TARGET", "RATE_TARGET", "summarise", "targets"]


def summarise(points: list[dict[str, Any]], concurrencies: list[int]) -> str:
    """One row per path: rates per concurrency, latency, CPU per request (gross and net of idle)
    and the share flow control queued, each a span over the repetitions; then Envoy's split."""
    names = list(dict.fromkeys(p["path"] for p in points))
    head = "| path | " + " | ".join(f"c={c} req/s" for c in concurrencies)
    head += f" | c={concurrencies[-1]} p50 / p99 ms | router CPU per request (µs) | net of idle (µs)"
    head += " | queued > 0.1 ms |"
    lines = [head, "|" + "---|" * (len(concurrencies) + 5)]

    def span(values: list[float], fmt: str) -> str:
        if not values:
            return "–"
        lo, hi = min(values), max(values)
        return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else f"{lo:{fmt}}–{hi:{fmt}}"

    for name in names:
        mine = [p for p in points if p["path"] == name]
        cells = [span([p["rps"] for p in mine if p["concurrency"] == c], ",.0f") for c in concurrencies]
        top = [p for p in mine if p["concurrency"] == concurrencies[-1]]
        lat = f"{span([p['p50_ms'] for p in top], '.1f')} / {span([p['p99_ms'] for p in top], '.0f')}"
        cpu = span([p["cpu_us_per_req"] for p in mine if "cpu_us_per_req" in p], ",.0f")
        net = span([p["net_cpu_us_per_req"] for p in mine if "net_cpu_us_per_req" in p], ",.0f")
        queued = span([p["queued_pct"] for p in mine if "queued_pct" in p], ".0f")
        queued = queued if queued == "–" else f"{queued} %"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {lat} | {cpu} | {net} | {queued} |")
    split = [n for n in names if any("envoy_cpu_us_per_req" in p for p in points if p["path"] == n)]
    if split:
        lines += ["", "| path | Envoy CPU per request (µs) | picker CPU per request (µs) |", "|---|---|---|"]
        for name in split:
            mine = [p for p in points if p["path"] == name and "envoy_cpu_us_per_req" in p]
            envoy = span([p["envoy_cpu_us_per_req"] for p in mine], ",.0f")
            picker = span([p["picker_cpu_us_per_req"] for p in mine], ",.0f")
            lines.append(f"| {name} | {envoy} | {picker} |")
    errors = sum(p["errors"] for p in points)
    lines.append("")
    lines.append(f"errors over all points: {errors}")
    return "\n".join(lines)


# Issue #18's targets, judged per repetition against sglang-router in the same repetition: the
# built-in proxy's rate at least 0.9x and its CPU per request at most 1.5x; the Envoy path at least
# twice the c=32 rate the issue measured (524-550 req/s, so 1,048 from its low end).
RATE_TARGET = 0.9
CPU_TARGET = 1.5
ENVOY_RATE_TARGET = 2 * 524.0


def targets(points: list[dict[str, Any]], concurrency: int, offered: float | None = None) -> str:
    """Each infergate path's repetitions at ``concurrency`` against the issue's targets.

    The reference is the first sglang-router path measured; the built-in proxy's paths (every
    ``infergate*`` path but the Envoy ones) are held to the rate and CPU ratios, the Envoy paths to
    the absolute rate. Empty when no sglang-router point and no Envoy point was measured.
    """
    top = [p for p in points if p["concurrency"] == concurrency]
    ref_name = next((p["path"] for p in top if p["path"].startswith("sglang-router")), None)
    ref = {p["rep"]: p for p in top if p["path"] == ref_name}
    ours = list(dict.fromkeys(p["path"] for p in top if p["path"].startswith("infergate")))
    lines: list[str] = []
    met: list[str] = []
    for name in ours:
        mine = sorted((p for p in top if p["path"] == name), key=lambda p: p["rep"])
        if "envoy" in name:
            for p in mine:
                vs = ref.get(p["rep"])
                ratio = f" ({p['rps'] / vs['rps']:.2f}x)" if vs and vs["rps"] else ""
                lines.append(
                    f"| {name} | {p['rep']} | {p['rps']:,.0f}{ratio} | – | "
                    f"{'yes' if p['rps'] >= ENVOY_RATE_TARGET else 'no'} (≥ {ENVOY_RATE_TARGET:,.0f}) | – |"
                )
            reached = sum(p["rps"] >= ENVOY_RATE_TARGET for p in mine)
            met.append(f"{name}: rate {reached} of {len(mine)}")
            continue
        pairs = [(p, ref[p["rep"]]) for p in mine if p["rep"] in ref and ref[p["rep"]]["rps"]]
        rate_ok = cpu_ok = 0
        for p, vs in pairs:
            rate = p["rps"] / vs["rps"]
            cpu = p.get("cpu_us_per_req", math.nan) / vs.get("cpu_us_per_req", math.nan)
            rate_ok += rate >= RATE_TARGET
            cpu_ok += cpu <= CPU_TARGET
            lines.append(
                f"| {name} | {p['rep']} | {p['rps']:,.0f} / {vs['rps']:,.0f} = {rate:.2f}x | "
                f"{p.get('cpu_us_per_req', math.nan):,.0f} / {vs.get('cpu_us_per_req', math.nan):,.0f}"
                f" = {cpu:.2f}x | {'yes' if rate >= RATE_TARGET else 'no'} | "
                f"{'yes' if cpu <= CPU_TARGET else 'no'} |"
            )
        if pairs:
            met.append(f"{name}: rate {rate_ok} of {len(pairs)}, CPU {cpu_ok} of {len(pairs)}")
    if not lines:
        return ""
    head = [
        f"Targets at c={concurrency}"
        + (f", every path offered {offered:,.0f} req/s" if offered else "")
        + ", per repetition"
        + (f" (against {ref_name} in the same repetition)" if ref_name else "")
        + f": rate ≥ {RATE_TARGET}x, CPU per request ≤ {CPU_TARGET}x; the Envoy path"
        f" ≥ {ENVOY_RATE_TARGET:,.0f} req/s",
        "",
        "| path | rep | rate (req/s) | CPU per request (µs) | rate met | CPU met |",
        "|---|---|---|---|---|---|",
    ]
    return "\n".join([*head, *lines, "", "met: " + "; ".join(met)])
