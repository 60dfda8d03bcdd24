"""The flags of ``infergate bench``, in typer like every infergate command.

This module only turns flags into the namespace :func:`infergate.bench.cli.execute` runs; the
help lists the built-in workloads, the strategies and every default. A bad flag is one ``error:``
line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from infergate.subcommand import run_command

__all__ = ["command", "main"]

_TARGET = "Target (one of)"
_LOAD = "Load"
_TWIN = "Twin: pool shape, arrivals, steady state"
_MATRIX = "Matrix (--time-scale also applies to --twin)"


def _floats(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"expected numbers separated by commas (got {text!r})", param_hint=flag
        ) from None
    if not values or any(v <= 0 for v in values):
        raise typer.BadParameter(f"expected positive numbers (got {text!r})", param_hint=flag)
    return values


def _counts(text: str | None, flag: str) -> list[float] | None:
    """Client counts: whole numbers (a closed loop has no half client)."""
    values = _floats(text, flag)
    if values is not None and any(v != int(v) for v in values):
        raise typer.BadParameter(f"expected whole numbers (got {text!r})", param_hint=flag)
    return values


def command(
    workload: Annotated[str, typer.Option("--workload", help="Built-in workload name or a YAML file.")],
    url: Annotated[
        str | None,
        typer.Option(
            "--url", help="Base URL of an OpenAI-compatible server or gateway.", rich_help_panel=_TARGET
        ),
    ] = None,
    matrix: Annotated[
        bool,
        typer.Option("--matrix", help="Start replicas and every strategy, compare.", rich_help_panel=_TARGET),
    ] = False,
    twin: Annotated[
        bool, typer.Option("--twin", help="Run the comparison in virtual time.", rich_help_panel=_TARGET)
    ] = False,
    qps: Annotated[
        str | None,
        typer.Option(
            "--qps",
            help="Open-loop rates to sweep, e.g. 2,4,8 (default: 8 with --url, 4 with --matrix, "
            "4,8,12 with --twin).",
            rich_help_panel=_LOAD,
        ),
    ] = None,
    concurrency: Annotated[
        str | None,
        typer.Option(
            "--concurrency",
            help="Closed-loop concurrencies to sweep instead, e.g. 8,32: each client sends its next "
            "request when its last one ends.",
            rich_help_panel=_LOAD,
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            min=1,
            help="Use only the first N requests (url, matrix; twin: fixed-count replay).",
            rich_help_panel=_LOAD,
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the arrival process.", rich_help_panel=_LOAD)
    ] = 0,
    label: Annotated[
        str, typer.Option("--label", help="Strategy name for the report (url mode).")
    ] = "target",
    replica: Annotated[
        list[str] | None,
        typer.Option(
            "--replica",
            help="Replica base URL whose /metrics gives prefix hits and adapter loads "
            "(url mode; repeatable).",
        ),
    ] = None,
    skip_unserved: Annotated[
        bool,
        typer.Option(
            "--skip-unserved",
            help="url mode: leave out requests for models the target does not list in /v1/models "
            "(default: refuse to run).",
        ),
    ] = False,
    warm: Annotated[
        bool,
        typer.Option(
            "--warm",
            help="url mode: replay the same prompts at every load point (default: fresh prompts per "
            "point, so caches warmed by one point do not flatter the next).",
        ),
    ] = False,
    strategies: Annotated[
        str | None,
        typer.Option("--strategies", help="Comma-separated strategies (matrix, twin; default: all)."),
    ] = None,
    replicas: Annotated[
        int | None,
        typer.Option(
            "--replicas", min=1, help="Replicas (matrix, twin; default: the workload's pool, else 3)."
        ),
    ] = None,
    slo_ttft: Annotated[float, typer.Option("--slo-ttft", help="SLO bound on p90 TTFT, seconds.")] = 1.0,
    slo_tpot: Annotated[float, typer.Option("--slo-tpot", help="SLO bound on p90 TPOT, seconds.")] = 0.050,
    out: Annotated[Path, typer.Option("--out", help="Report folder.")] = Path("bench-results"),
    no_plots: Annotated[
        bool, typer.Option("--no-plots", help="Skip the PNG plots (they need 'infergate[bench]').")
    ] = False,
    adapters: Annotated[
        str | None,
        typer.Option(
            "--adapters",
            help="Comma-separated LoRA adapters every replica serves ('' for none; twin, matrix); the "
            "workload's model names map onto them (default: the workload's pool, else the tutorial's three).",
            rich_help_panel=_TWIN,
        ),
    ] = None,
    max_loras: Annotated[
        int | None,
        typer.Option(
            "--max-loras",
            help="GPU adapter slots per replica (twin, matrix; default: the workload's, else 2).",
            rich_help_panel=_TWIN,
        ),
    ] = None,
    arrival: Annotated[
        str | None,
        typer.Option(
            "--arrival",
            help="poisson or gamma:SHAPE (CV = 1/sqrt(SHAPE); default: the workload's, else poisson).",
            rich_help_panel=_TWIN,
        ),
    ] = None,
    slo_rate: Annotated[
        bool,
        typer.Option(
            "--slo-rate",
            help="Bisect each strategy's SLO rate (with no --qps, only SLO rates are computed).",
            rich_help_panel=_TWIN,
        ),
    ] = False,
    slo_concurrency: Annotated[
        bool,
        typer.Option(
            "--slo-concurrency",
            help="Bisect each strategy's SLO concurrency instead: the most closed-loop clients whose "
            "requests meet the SLO (with no --concurrency, only that).",
            rich_help_panel=_TWIN,
        ),
    ] = False,
    tolerance: Annotated[
        float,
        typer.Option("--tolerance", help="SLO-rate bisection width (default 0.02).", rich_help_panel=_TWIN),
    ] = 0.02,
    duration: Annotated[
        float | None,
        typer.Option(
            "--duration",
            help="Measured virtual seconds per load point (default max(60, 20 x unloaded e2e latency)).",
            rich_help_panel=_TWIN,
        ),
    ] = None,
    warmup: Annotated[
        float | None,
        typer.Option(
            "--warmup",
            help="Warm-up virtual seconds, excluded (default max(10, 5 x e2e); closed loop also >= 8 x e2e "
            "and its requests' length-weighted duration at the SLO's bounds).",
            rich_help_panel=_TWIN,
        ),
    ] = None,
    peer_venv: Annotated[
        list[Path] | None,
        typer.Option(
            "--peer-venv",
            help="Virtualenv holding a peer router (repeatable; also $INFERGATE_PEER_VENVS, /tmp/peers/*).",
            rich_help_panel=_MATRIX,
        ),
    ] = None,
    time_scale: Annotated[
        float,
        typer.Option(
            "--time-scale", help="Simulator step-time factor (0.1 = 10x faster).", rich_help_panel=_MATRIX
        ),
    ] = 1.0,
    simulate_args: Annotated[
        str,
        typer.Option(
            "--simulate-args", help="Extra flags for every `infergate simulate`.", rich_help_panel=_MATRIX
        ),
    ] = "",
) -> int:
    """Load a URL with a workload, compare routing strategies on fresh replicas (--matrix), or run
    the comparison in virtual time (--twin)."""
    from infergate.bench.cli import execute

    targets = [
        name for name, on in (("--url", url is not None), ("--matrix", matrix), ("--twin", twin)) if on
    ]
    if len(targets) != 1:
        given = ", ".join(targets) or "none"
        raise typer.BadParameter(f"give exactly one of --url, --matrix, --twin (got {given})")
    if qps is not None and concurrency is not None:
        raise typer.BadParameter("--qps and --concurrency are exclusive")
    if slo_rate and slo_concurrency:
        raise typer.BadParameter("--slo-rate and --slo-concurrency are exclusive")
    if slo_concurrency and qps is not None:
        raise typer.BadParameter("--slo-concurrency searches client counts: give --concurrency, not --qps")
    if slo_rate and concurrency is not None:
        raise typer.BadParameter("--slo-rate searches open-loop rates: give --qps, not --concurrency")
    args = argparse.Namespace(
        url=url,
        matrix=matrix,
        twin=twin,
        workload=workload,
        qps=_floats(qps, "--qps"),
        concurrency=_counts(concurrency, "--concurrency"),
        label=label,
        replica=list(replica or []),
        skip_unserved=skip_unserved,
        warm=warm,
        limit=limit,
        strategies=strategies,
        replicas=replicas,
        slo_ttft=slo_ttft,
        slo_tpot=slo_tpot,
        seed=seed,
        out=out,
        no_plots=no_plots,
        adapters=adapters,
        max_loras=max_loras,
        arrival=arrival,
        slo_rate=slo_rate,
        slo_concurrency=slo_concurrency,
        tolerance=tolerance,
        duration=duration,
        warmup=warmup,
        peer_venv=list(peer_venv or []),
        time_scale=time_scale,
        simulate_args=simulate_args,
    )
    return execute(args)


def _epilog() -> str:
    from infergate.bench.strategies import strategy_names
    from infergate.bench.workloads import builtin_workloads

    return (
        f"Built-in workloads: {', '.join(sorted(builtin_workloads()))}.\n\n"
        f"Strategies: {', '.join(strategy_names(twin=True))}; append +fc to run one with the gateway's "
        "flow control (default always has it), +nofc to run it without.\n\n"
        "Twin pool defaults: the workload file's pool: section, else 3 replicas serving "
        "food-review,cad-fabricator,legal-summarizer with --max-loras 2 and Poisson arrivals."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``infergate bench ARGS``: the exit code (0 for ``--help``, 2 for a bad flag)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return run_command(command, args, "infergate bench", epilog=_epilog(), markdown_help=True)
