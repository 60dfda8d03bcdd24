"""``infergate bench``: load any OpenAI-compatible URL with a workload and report what it did.

Three modes share workloads and reports:
- a URL (``--url``): one target, a sweep of loads;
- ``--matrix``: start fresh simulated replicas and each routing strategy in turn, same request stream;
- ``--twin``: the same in virtual time, in this process (the digital twin). Each load point runs
  at steady state (a duration of virtual time with a warm-up left out, see
  :mod:`infergate.bench.steady`) on the pool the flags or the workload's ``pool:`` describe, and
  ``--slo-rate`` bisects every strategy's SLO rate. ``--twin --limit N`` instead replays the first N
  requests, exactly the stream ``--matrix --limit N`` sends, for twin-vs-real comparisons.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from infergate.bench.loadgen import RequestRecord, arrival_offsets, run_closed_loop, run_open_loop
from infergate.bench.replicas import read_counters
from infergate.bench.report import RunResult, plot_latency_vs_load, to_markdown, write_json
from infergate.bench.stats import Slo, SloRate, summarise
from infergate.bench.steady import PointResult, PoolShape, map_models, resolve_pool
from infergate.bench.steady_report import SteadyReport, steady_markdown, write_steady_reports
from infergate.bench.strategies import resolve_strategy, strategy_names
from infergate.bench.target import TargetError, check_target
from infergate.bench.workloads import BenchRequest, WorkloadError, WorkloadSpec, generate, load_workload

if TYPE_CHECKING:
    from infergate.bench.matrix import MatrixOutcome

__all__ = ["execute", "main"]


async def run_url(
    url: str,
    requests: Sequence[BenchRequest],
    *,
    workload: str,
    label: str,
    qps: Sequence[float] | None,
    concurrency: Sequence[float] | None,
    replicas: Sequence[str],
    slo: Slo,
    seed: int,
    fresh: Callable[[int], Sequence[BenchRequest]] | None = None,
) -> list[RunResult]:
    """Sweep the loads against one URL, one run after another.

    ``fresh(i)`` is load point i's request stream (point 0 runs ``requests``): by default every
    point gets new prompts, so a later point does not replay what the target has just cached.
    Without ``qps`` or ``concurrency`` the sweep is 8 QPS, open loop.
    """
    results = []
    loads = list(qps or concurrency or [8.0])
    kind = "concurrent" if concurrency and not qps else "qps"
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    ) as progress:
        for point, load in enumerate(loads):
            if point and fresh is not None:
                requests = fresh(point)
            task = progress.add_task(f"{label} @ {load:g} {kind}", total=len(requests))

            def done(_: RequestRecord, task: TaskID = task) -> None:
                progress.advance(task)

            before = await read_counters(replicas)
            if kind == "qps":
                records = await run_open_loop(url, requests, qps=load, seed=seed, on_done=done)
            else:
                records = await run_closed_loop(url, requests, concurrency=int(load), on_done=done)
            after = await read_counters(replicas)
            deltas = {u: after[u] - before[u] for u in replicas}
            queries = sum(d.prefix_queries for d in deltas.values())
            results.append(
                RunResult(
                    workload=workload,
                    strategy=label,
                    load=load,
                    load_kind=kind,
                    summary=summarise(records, slo),
                    prefix_hit_rate=(sum(d.prefix_hits for d in deltas.values()) / queries)
                    if queries
                    else None,
                    lora_swaps=int(sum(d.lora_loads for d in deltas.values())) if replicas else None,
                    per_endpoint_requests={u: int(d.requests) for u, d in deltas.items()},
                )
            )
    return results


def run_twin_sweep(
    requests: Sequence[BenchRequest],
    *,
    workload: str,
    strategies: Sequence[str],
    qps: Sequence[float],
    replicas: int | PoolShape,
    slo: Slo,
    seed: int,
    time_scale: float = 1.0,
    closed_loop: bool = False,
) -> list[RunResult]:
    """Every strategy at every rate, in virtual time, on identical fixed request lists.

    ``closed_loop`` makes each load a count of clients that each send their next request when
    their last one ends (``--concurrency``), as against the target of ``--url``.

    ``time_scale`` slows the simulated engines as ``--matrix --time-scale`` slows the replicas, so a
    twin sweep can be set beside a matrix sweep with the same flags. ``replicas`` is a count (the
    tutorial pool otherwise) or a whole :class:`PoolShape`.
    """
    from infergate.bench.twin import run_twin
    from infergate.bench.twin_pool import settings_for_slo

    shape = replicas if isinstance(replicas, PoolShape) else PoolShape(replicas=replicas)
    mapping = map_models(requests, shape)
    requests = [replace(r, model=mapping[r.model]) for r in requests]
    config = shape.twin_config(seed=seed, time_scale=time_scale, settings=settings_for_slo(slo))
    results = []
    for rate in qps:
        offsets = None if closed_loop else arrival_offsets(requests, rate, seed, shape.arrival)
        for strategy in strategies:
            clients = int(rate) if closed_loop else None
            out = run_twin(requests, offsets, strategy=strategy, config=config, concurrency=clients)
            results.append(
                RunResult(
                    workload=workload,
                    strategy=strategy,
                    load=rate,
                    load_kind="concurrent" if closed_loop else "qps",
                    summary=summarise(out.records, slo),
                    prefix_hit_rate=out.prefix_hit_rate,
                    lora_swaps=out.lora_swaps,
                    per_endpoint_requests=out.per_endpoint_requests,
                    mode="twin",
                )
            )
    return results


def run_twin_steady(
    spec: WorkloadSpec,
    shape: PoolShape,
    *,
    strategies: Sequence[str],
    qps: Sequence[float],
    slo_rate: bool,
    slo: Slo,
    seed: int,
    tolerance: float = 0.02,
    time_scale: float = 1.0,
    duration: float | None = None,
    warmup: float | None = None,
    log: Callable[[str], None] | None = None,
    closed_loop: bool = False,
) -> SteadyReport:
    """Every strategy at every rate at steady state, and its SLO rate if asked.

    SLO-rate searches start from round-robin's rate when round-robin is among the strategies (it
    runs first), else from 2 QPS per replica. ``closed_loop``: every load (``qps``) is a count of
    clients and the search finds each strategy's SLO concurrency instead.
    """
    from infergate.bench.steady import SteadyRunner, held_at_bounds, plan_for, unloaded_e2e

    plan = None
    if duration is not None or warmup is not None:
        plan = plan_for(
            unloaded_e2e(spec, shape, time_scale=time_scale),
            duration=duration,
            warmup=warmup,
            closed_loop=closed_loop,
            held=held_at_bounds(spec, slo) if closed_loop else 0.0,
        )
    runner = SteadyRunner(
        spec, shape, slo=slo, seed=seed, plan=plan, time_scale=time_scale, closed_loop=closed_loop
    )
    order = sorted(strategies, key=lambda s: s != "round-robin")
    rates: dict[str, SloRate] = {}
    with _twin_progress(len(order) * len(qps), slo_rate) as (progress, task):

        def advance(point: PointResult) -> None:
            verdict = "met" if point.met else "missed"
            progress.update(
                task,
                advance=1,
                description=f"twin {point.strategy} @ {point.load}: SLO {verdict}",
            )

        runner.on_point = advance
        for strategy in order:
            for rate in qps:
                runner.point(strategy, rate)
            if slo_rate:
                start = (
                    rates["round-robin"].qps
                    if rates.get("round-robin") and rates["round-robin"].qps
                    else None
                )
                rates[strategy] = runner.slo_rate(strategy, start=start, tolerance=tolerance)
                if log is not None:
                    found = (
                        f"SLO concurrency {rates[strategy].qps:g} clients"
                        if closed_loop
                        else f"SLO rate {rates[strategy].qps:.2f} QPS"
                    )
                    log(f"{spec.name} {strategy}: {found}")
    return SteadyReport(
        workload=spec.name,
        shape=shape,
        plan=runner.plan,
        slo=slo,
        points={s: runner.points_of(s) for s in strategies},
        rates=rates,
        closed_loop=closed_loop,
    )


@contextlib.contextmanager
def _twin_progress(points: int, open_ended: bool) -> Iterator[tuple[Progress, TaskID]]:
    """A bar over the twin's load points (a count only while SLO-rate searches add probes)."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task("twin: first load point", total=None if open_ended else points)
        yield progress, task


def run_matrix_sweep(
    requests: Sequence[BenchRequest],
    *,
    workload: str,
    args: argparse.Namespace,
    slo: Slo,
    shape: PoolShape,
) -> MatrixOutcome:
    """Every strategy (and installed peer) on fresh replicas, one after another, with a progress bar.

    The replicas load ``shape``'s adapters with its ``max_loras`` slots (the workload's ``pool:``,
    or ``--adapters``/``--max-loras``); ``requests`` already name them (:func:`map_models`)."""
    from infergate.bench.matrix import MatrixConfig, run_matrix

    config = MatrixConfig(
        replicas=shape.replicas,
        adapters=shape.adapters,
        max_loras=shape.max_loras,
        profiles=shape.profiles,
        strategies=args.strategies.split(",") if args.strategies else (),
        loads=list(args.qps or args.concurrency or [4.0]),
        load_kind="concurrent" if args.concurrency else "qps",
        time_scale=args.time_scale,
        simulate_args=shlex.split(args.simulate_args),
        peer_venvs=list(args.peer_venv),
        seed=args.seed,
        workdir=args.out / "matrix",
        slo=slo,
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    ) as progress:

        def reporter(description: str, total: int) -> Callable[[RequestRecord], None]:
            task = progress.add_task(description, total=total)
            return lambda _: progress.advance(task)

        return asyncio.run(run_matrix(requests, workload=workload, config=config, slo=slo, reporter=reporter))


def write_reports(results: Sequence[RunResult], out: Path, *, plots: bool) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    write_json(results, out / "results.json")
    md = to_markdown(results)
    (out / "results.md").write_text(md)
    if plots and results:
        plot_latency_vs_load(results, out / "ttft_p90_vs_load.png")
    return out / "results.md"


def _changes(spec: WorkloadSpec) -> str:
    """The fields that change the pool or the requests during a run, as the workload file names them."""
    names = [f"pool.{k}" for k in ("scale", "slow") if getattr(spec.pool, k)]
    return " and ".join([*names, *(["phases"] if spec.phases else [])])


def _twin_main(args: argparse.Namespace, spec: WorkloadSpec, slo: Slo) -> int:
    strategies = args.strategies.split(",") if args.strategies else strategy_names(twin=True)
    try:
        for name in strategies:
            resolve_strategy(name)
        shape = resolve_pool(
            spec,
            replicas=args.replicas,
            adapters=None if args.adapters is None else [a for a in args.adapters.split(",") if a],
            max_loras=args.max_loras,
            arrival=args.arrival,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    search = args.slo_rate or args.slo_concurrency
    closed_loop = bool(args.concurrency) or args.slo_concurrency  # loads are client counts
    if args.limit:
        if shape.scale or shape.slow or spec.phases:
            what = "changes its pool" if shape.scale or shape.slow else "changes what it asks"
            print(
                f"error: workload {spec.name} {what} during the run ({_changes(spec)}), at "
                "points of a measured window: run it without --limit",
                file=sys.stderr,
            )
            return 2
        if search or args.duration is not None or args.warmup is not None:
            print(
                "error: --slo-rate, --slo-concurrency, --duration and --warmup need steady-state runs "
                "(no --limit)",
                file=sys.stderr,
            )
            return 2
        requests = generate(spec)[: args.limit]
        results = run_twin_sweep(
            requests,
            workload=spec.name,
            strategies=strategies,
            qps=args.concurrency or args.qps or [4.0, 8.0, 12.0],
            replicas=shape,
            slo=slo,
            seed=args.seed,
            time_scale=args.time_scale,
            closed_loop=closed_loop,
        )
        path = write_reports(results, args.out, plots=not args.no_plots)
        print(to_markdown(results))
        print(f"reports in {path.parent}")
        return 0
    qps = args.concurrency or args.qps or ([] if search else [4.0, 8.0, 12.0])
    report = run_twin_steady(
        spec,
        shape,
        strategies=strategies,
        qps=qps,
        closed_loop=closed_loop,
        slo_rate=search,
        slo=slo,
        seed=args.seed,
        tolerance=args.tolerance,
        time_scale=args.time_scale,
        duration=args.duration,
        warmup=args.warmup,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    path = write_steady_reports([report], args.out, plots=not args.no_plots)
    print(steady_markdown(report))
    print(f"reports in {path.parent}")
    return 0


def _plots_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def main(argv: Sequence[str] | None = None) -> int:
    """``infergate bench ARGS`` (flags: :mod:`infergate.bench.command`)."""
    from infergate.bench.command import main as command_main

    return command_main(argv)


def execute(args: argparse.Namespace) -> int:
    """Run what the flags (:func:`infergate.bench.command.command`) ask for; the exit code."""
    url_only = [f for f in ("warm", "skip_unserved") if getattr(args, f)]
    if url_only and not args.url:
        flags = ", ".join("--" + f.replace("_", "-") for f in url_only)
        print(f"error: {flags} only apply to --url", file=sys.stderr)
        return 2
    try:
        spec = load_workload(args.workload)
    except WorkloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.no_plots and not _plots_available():
        print(
            "error: the plots need matplotlib: pip install 'infergate[bench]' (or pass --no-plots)",
            file=sys.stderr,
        )
        return 2
    slo = Slo(ttft_s=args.slo_ttft, tpot_s=args.slo_tpot)
    if args.twin:
        return _twin_main(args, spec, slo)
    if spec.streamed < 1.0:
        print(
            f"error: workload {spec.name}: streamed: {spec.streamed} only applies to --twin (a client "
            "that does not stream cannot time the tokens the SLO is judged on)",
            file=sys.stderr,
        )
        return 2
    if spec.max_tokens != "answer":
        print(
            f"error: workload {spec.name}: max_tokens: {spec.max_tokens} only applies to --twin (a real "
            "model server decides where an answer without ignore_eos ends, not the workload)",
            file=sys.stderr,
        )
        return 2
    if spec.pool.scale or spec.pool.slow:
        which = (
            "--matrix cannot do with the replicas it starts"
            if args.matrix
            else "the pool behind --url does not do on cue"
        )
        print(
            f"error: workload {spec.name} changes its pool during the run ({_changes(spec)}), which "
            f"{which}; run it with --twin",
            file=sys.stderr,
        )
        return 2
    if spec.phases:
        print(
            f"error: workload {spec.name} has phases, which switch at points of a measured window "
            "that only the twin's steady-state runs have; run it with --twin",
            file=sys.stderr,
        )
        return 2
    pool_flags = ("adapters", "max_loras")  # the pool's shape: the twin's and the matrix's replicas
    twin_only = [
        f
        for f in (*(() if args.matrix else pool_flags), "arrival", "duration", "warmup")
        if getattr(args, f) is not None
    ]
    twin_only += [f for f in ("slo_rate", "slo_concurrency") if getattr(args, f)]
    if twin_only:
        flags = ", ".join("--" + f.replace("_", "-") for f in twin_only)
        where = "--twin or --matrix" if set(twin_only) <= set(pool_flags) else "--twin"
        print(f"error: {flags} only apply to {where}", file=sys.stderr)
        return 2
    args.replicas = args.replicas or spec.pool.replicas or 3
    requests = generate(spec)
    if args.limit:
        requests = requests[: args.limit]
    shape: PoolShape | None = None
    if args.matrix:  # the replicas load the pool's adapters; workload names map onto them as in the twin
        try:
            shape = resolve_pool(
                spec,
                replicas=args.replicas,
                adapters=None if args.adapters is None else [a for a in args.adapters.split(",") if a],
                max_loras=args.max_loras,
            )
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        mapping = map_models(requests, shape)
        requests = [replace(r, model=mapping[r.model]) for r in requests]
    if args.url:
        url = args.url.rstrip("/")
        replica_urls = [u.rstrip("/") for u in args.replica]
        try:
            check = asyncio.run(
                check_target(url, {r.model for r in requests}, replica_urls, skip_unserved=args.skip_unserved)
            )
        except TargetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        for warning in check.warnings:
            print(f"warning: {warning}", file=sys.stderr)

        served = set(check.served) if check.served is not None else None

        def servable(stream: Sequence[BenchRequest]) -> list[BenchRequest]:
            kept = [r for r in stream if served is None or r.model in served]
            return kept[: args.limit] if args.limit else kept

        def fresh(point: int) -> list[BenchRequest]:
            return servable(generate(spec.model_copy(update={"seed": spec.seed * 1_000_003 + point})))

        requests = servable(generate(spec))

        results = asyncio.run(
            run_url(
                url,
                requests,
                workload=spec.name,
                label=args.label,
                qps=args.qps,
                concurrency=args.concurrency,
                replicas=check.readable_replicas,
                slo=slo,
                seed=args.seed,
                fresh=None if args.warm else fresh,
            )
        )
        if not any(r.summary.succeeded for r in results):
            write_reports(results, args.out, plots=False)
            print(
                f"error: no request succeeded against {url}; see {args.out / 'results.md'}", file=sys.stderr
            )
            return 1
    else:
        try:
            assert shape is not None
            outcome = run_matrix_sweep(requests, workload=spec.name, args=args, slo=slo, shape=shape)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        results = outcome.results
        for name, reason in outcome.skipped.items():
            print(f"skipped {name}: {reason.splitlines()[0]}", file=sys.stderr)
        if not args.no_plots:
            from infergate.bench.report import plot_load_spread

            args.out.mkdir(parents=True, exist_ok=True)
            for name, series in outcome.load_series.items():
                safe = name.replace(":", "-").replace("/", "-")
                plot_load_spread(series, args.out / f"load_{safe}.png", title=f"{spec.name}: {name}")
    path = write_reports(results, args.out, plots=not args.no_plots)
    print(to_markdown(results))
    print(f"reports in {path.parent}")
    return 0
