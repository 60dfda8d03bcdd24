"""``infergate bench --matrix``: every routing strategy, one after another, on fresh real processes.

For each strategy and each load point of the sweep the matrix starts N fresh ``infergate simulate``
replicas (the tutorial's vLLM flags: ``--enable-lora --max-loras 2 --max-cpu-loras 12``, adapters
loaded at run time through ``POST /v1/load_lora_adapter``), puts a router in front of them
(``infergate serve`` with generated manifests and the strategy's EndpointPickerConfig, or a peer
router), waits until it routes, sends the identical request stream, reads the replicas' own counters
and stops everything before the next run. Fresh replicas mean no run inherits another's warm prefix
caches or loaded adapters. Everything talks HTTP to child processes: this module imports no gateway
or simulator code, only the strategy definitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from infergate.app.fleet import free_port
from infergate.bench.children import ChildProcess, MatrixError, poll_until
from infergate.bench.loadgen import RequestRecord, run_closed_loop, run_open_loop
from infergate.bench.peers import PEERS, PeerRouter, available_peers, is_peer, peer_venvs
from infergate.bench.procs import cancel_on_signals
from infergate.bench.replicas import read_counters
from infergate.bench.report import RunResult
from infergate.bench.stats import Slo, summarise
from infergate.bench.strategies import picker_config, resolve_strategy, strategy_names
from infergate.bench.workloads import BenchRequest
from infergate.config.picker import dump_picker_config
from infergate.config.settings import ENV_PREFIX

__all__ = [
    "DEFAULT_ADAPTERS",
    "MatrixConfig",
    "MatrixError",
    "MatrixOutcome",
    "default_matrix_strategies",
    "replica_argv",
    "run_matrix",
    "told_slo",
]

log = logging.getLogger("infergate.bench.matrix")

DEFAULT_ADAPTERS = ("food-review", "cad-fabricator", "legal-summarizer")
"""The tutorial's adapters: two the syncer keeps loaded plus the third that competes for slots."""

POOL_NAME = "bench-pool"

Reporter = Callable[[str, int], Callable[[RequestRecord], None]]
"""Given a run's description and request count, returns the per-request completion callback."""


@dataclass(frozen=True, kw_only=True)
class MatrixConfig:
    """What to start and how to load it. ``loads`` are QPS (open loop) or concurrencies."""

    replicas: int = 3
    strategies: Sequence[str] = ()  # empty: default_matrix_strategies()
    loads: Sequence[float] = (4.0,)
    load_kind: Literal["qps", "concurrent"] = "qps"
    adapters: Sequence[str] = DEFAULT_ADAPTERS
    max_loras: int = 2
    max_cpu_loras: int = 12
    profiles: Sequence[str] = ()  # simulator --profile per replica, cycled (a mixed pool); empty: default
    time_scale: float = 1.0
    simulate_args: Sequence[str] = ()
    peer_venvs: Sequence[Path] = ()
    flow_control: bool = True
    seed: int = 0
    host: str = "127.0.0.1"
    workdir: Path = Path("bench-results/matrix")
    startup_timeout: float = 60.0
    sample_interval: float = 0.2  # per-replica load sampling for the spread plot; 0 disables
    fresh_per_load: bool = True  # new replicas and router for every load point, not only per strategy
    python: str = sys.executable
    gateway_workers: int = 1  # infergate serve --workers (proxy.workers)
    slo: Slo | None = None
    """The SLO infergate's strategies are told (its flow control and predicted-latency scorer judge
    by it, as an operator would configure them); None: the gateway's defaults (1 s, 50 ms)."""


@dataclass
class MatrixOutcome:
    """Results of every run, the strategies that were skipped (and why), and load-over-time samples
    per strategy: ``{strategy: {replica: [(t, running + waiting)]}}`` from the last load point."""

    results: list[RunResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    load_series: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict)


def told_slo(env: Mapping[str, str], slo: Slo | None) -> dict[str, str]:
    """``env`` for an ``infergate serve`` that is told ``slo`` (``INFERGATE_FLOW_CONTROL__*_SLO``),
    so its decode guard and predicted-latency scorer judge by the bounds the run is judged by."""
    told = slo.gateway_settings() if slo is not None else {}
    return {**env, **{ENV_PREFIX + k.upper().replace(".", "__"): repr(v) for k, v in told.items()}}


def default_matrix_strategies() -> list[str]:
    """Every real-time strategy of infergate, then every known peer (skipped if not installed)."""
    return [*strategy_names(twin=False), *(p.name for p in PEERS)]


async def _get_ok(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url) as resp:
            await resp.read()
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


@dataclass
class _Replica:
    name: str
    port: int
    child: ChildProcess

    def url(self, host: str) -> str:
        return f"http://{host}:{self.port}"


def replica_argv(cfg: MatrixConfig, index: int, port: int) -> list[str]:
    """The ``infergate simulate`` command of replica ``index``: the pool's LoRA flags, its own
    seed, and in a mixed pool its own ``--profile`` (``cfg.profiles`` cycled over the replicas)."""
    return [
        cfg.python, "-m", "infergate", "simulate",
        "--host", cfg.host, "--port", str(port),
        "--enable-lora", "--max-loras", str(cfg.max_loras), "--max-cpu-loras", str(cfg.max_cpu_loras),
        "--seed", str(cfg.seed + index),
        "--time-scale", f"{cfg.time_scale:g}",
        *(("--profile", cfg.profiles[index % len(cfg.profiles)]) if cfg.profiles else ()),
        *cfg.simulate_args,
    ]  # fmt: skip


class _Stack:
    """The processes of one strategy's run: replicas and a router. Stops them all on exit."""

    def __init__(self, cfg: MatrixConfig, folder: Path) -> None:
        self.cfg = cfg
        self.folder = folder
        self.replicas: list[_Replica] = []
        self.router: ChildProcess | None = None
        self.base_url = ""
        self._env = dict(os.environ, PYTHONUNBUFFERED="1", VLLM_ALLOW_RUNTIME_LORA_UPDATING="true")

    async def __aenter__(self) -> _Stack:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        # Router first, so nothing is in flight towards replicas that are going away.
        if self.router is not None:
            await self.router.stop()
            self.router = None
        await asyncio.gather(*(r.child.stop() for r in self.replicas))
        self.replicas = []

    @property
    def replica_urls(self) -> list[str]:
        return [r.url(self.cfg.host) for r in self.replicas]

    async def start_replicas(self, session: aiohttp.ClientSession) -> None:
        cfg = self.cfg
        for i in range(cfg.replicas):
            port = free_port(cfg.host)
            argv = replica_argv(cfg, i, port)
            name = f"replica-{i}"
            self.replicas.append(
                _Replica(name, port, ChildProcess(name, argv, self.folder / f"{name}.log", self._env))
            )
        for r in self.replicas:
            health = r.url(cfg.host) + "/health"

            async def healthy(url: str = health) -> bool:
                return await _get_ok(session, url)

            await poll_until(r.child, healthy, within=cfg.startup_timeout, what="/health")
        await asyncio.gather(*(self._load_adapters(session, r) for r in self.replicas))

    async def _load_adapters(self, session: aiohttp.ClientSession, replica: _Replica) -> None:
        for adapter in self.cfg.adapters:
            body = {"lora_name": adapter, "lora_path": f"/adapters/{adapter}"}
            async with session.post(replica.url(self.cfg.host) + "/v1/load_lora_adapter", json=body) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise MatrixError(f"{replica.name}: loading {adapter} failed ({resp.status}): {text}")

    def _manifests(self) -> str:
        return static_pool_manifests(
            POOL_NAME, {r.name: f"{self.cfg.host}:{r.port}" for r in self.replicas}, label="bench-sim"
        )

    def _flow_control(self, strategy: str) -> bool:
        """``+fc``/``+nofc`` (and ``default``, which is the product with flow control) decide;
        otherwise the matrix's ``flow_control``."""
        named = resolve_strategy(strategy)
        return self.cfg.flow_control if named.flow_control is None else named.flow_control

    async def start_infergate(self, session: aiohttp.ClientSession, strategy: str) -> None:
        cfg = self.cfg
        manifests = self.folder / "pool.yaml"
        manifests.write_text(self._manifests())
        picker = self.folder / "picker.yaml"
        picker.write_text(dump_picker_config(picker_config(strategy)))
        port, admin = free_port(cfg.host), free_port(cfg.host)
        argv = [
            cfg.python, "-m", "infergate", "serve",
            "-f", str(manifests), "--config", str(picker),
            "--host", cfg.host, "--port", str(port), "--admin-port", str(admin),
            "--flow-control" if self._flow_control(strategy) else "--no-flow-control",
            "--grace", "2", "--log-level", "warning",
            *(["--workers", str(cfg.gateway_workers)] if cfg.gateway_workers > 1 else []),
        ]  # fmt: skip
        env = told_slo(self._env, cfg.slo)
        self.router = ChildProcess(f"infergate serve ({strategy})", argv, self.folder / "router.log", env)
        self.base_url = f"http://{cfg.host}:{port}"
        admin_url = f"http://{cfg.host}:{admin}"
        wanted = {r.name for r in self.replicas}
        models = set(cfg.adapters)

        async def ready() -> bool:
            # Ready, and every replica is a candidate that is known to serve every adapter, so
            # no early request of the stream is refused with 404 or routed on partial knowledge.
            if not await _get_ok(session, admin_url + "/readyz"):
                return False
            try:
                async with session.get(admin_url + "/debug/endpoints") as resp:
                    data = await resp.json()
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return False
            entries = data.get("endpoints", data) if isinstance(data, dict) else data
            good = {
                e.get("name")
                for e in entries
                if isinstance(e, dict) and e.get("candidate") and models <= set(e.get("models") or ())
            }
            return wanted <= good

        await poll_until(self.router, ready, within=cfg.startup_timeout, what="ready endpoints")

    async def start_peer(self, session: aiohttp.ClientSession, peer: PeerRouter) -> None:
        cfg = self.cfg
        port, metrics_port = free_port(cfg.host), free_port(cfg.host)
        argv = peer.command(host=cfg.host, port=port, metrics_port=metrics_port, workers=self.replica_urls)
        self.router = ChildProcess(peer.name, argv, self.folder / "router.log", self._env)
        self.base_url = f"http://{cfg.host}:{port}"
        await poll_until(
            self.router,
            lambda: _get_ok(session, self.base_url + "/v1/models"),
            within=cfg.startup_timeout,
            what="/v1/models through the router",
        )


async def _sample_load(
    session: aiohttp.ClientSession,
    replicas: Sequence[tuple[str, str]],
    interval: float,
    series: dict[str, list[tuple[float, float]]],
    stop: asyncio.Event,
) -> None:
    """Record running + waiting requests per replica every ``interval`` s until ``stop`` is set."""
    start = time.monotonic()
    while not stop.is_set():
        now = time.monotonic() - start
        for name, url in replicas:
            try:
                async with session.get(url + "/metrics") as resp:
                    text = await resp.text()
            except (aiohttp.ClientError, TimeoutError):
                continue
            load = 0.0
            for family in text_string_to_metric_families(text):
                if family.name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
                    load += sum(s.value for s in family.samples)
            series.setdefault(name, []).append((now, load))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def _has_lora_counter(session: aiohttp.ClientSession, url: str) -> bool:
    """Whether the replica counts adapter loads at all (else LoRA swaps are reported as unknown)."""
    try:
        async with session.get(url + "/metrics") as resp:
            return "vllm:lora_loads" in await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return False


def _proc_cpu(pid: int | None = None) -> float | None:
    """CPU seconds (user + system) of one process so far, from ``/proc`` (Linux); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid or 'self'}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _machine_cpu() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine so far, from ``/proc/stat``; None elsewhere."""
    try:
        values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values) - idle) / tick, sum(values) / tick


def _cpu_snapshot(stack: _Stack) -> dict[str, object]:
    procs: dict[str, float | None] = {"client": _proc_cpu()}
    procs.update({r.name: _proc_cpu(r.child.proc.pid) for r in stack.replicas})
    if stack.router is not None:
        procs["router"] = _proc_cpu(stack.router.proc.pid)
    return {"at": time.monotonic(), "procs": procs, "machine": _machine_cpu()}


def _cpu_usage(before: dict[str, object], after: dict[str, object]) -> dict[str, object]:
    """Where the machine's CPU went during a run: each process's share of one core, and how busy
    the whole machine was (other users included). Tells whether the bench itself was CPU-bound,
    which would inflate real-time latencies against the twin's."""
    wall = float(after["at"]) - float(before["at"])  # type: ignore[arg-type]
    b_procs, a_procs = before["procs"], after["procs"]
    assert isinstance(b_procs, dict) and isinstance(a_procs, dict)
    cores: dict[str, float | None] = {}
    for name, end in a_procs.items():
        start = b_procs.get(name)
        cores[name] = (
            round((end - start) / wall, 3) if end is not None and start is not None and wall > 0 else None
        )
    out: dict[str, object] = {"wall_s": round(wall, 2), "cores_used": cores}
    bm, am = before["machine"], after["machine"]
    if isinstance(bm, tuple) and isinstance(am, tuple) and am[1] > bm[1]:
        out["machine_busy"] = round((am[0] - bm[0]) / (am[1] - bm[1]), 3)
    return out


def _write_records(records: Sequence[RequestRecord], path: Path) -> None:
    """Per-request timings of a run, kept beside its logs: what the twin agreement check compares
    request by request (``bench/bench_twin_agreement.py``)."""
    rows = [
        {"index": r.index, "model": r.model, "sent_at": r.sent_at, "status": r.status, "ttft": r.ttft,
         "e2e": r.e2e, "completion_tokens": r.completion_tokens}
        for r in records
    ]  # fmt: skip
    path.write_text(json.dumps(rows) + "\n")


async def _run_load(
    stack: _Stack,
    session: aiohttp.ClientSession,
    requests: Sequence[BenchRequest],
    load: float,
    *,
    strategy: str,
    workload: str,
    slo: Slo,
    outcome: MatrixOutcome,
    reporter: Reporter | None,
) -> None:
    """One load point through the stack's router; appends its RunResult to ``outcome``."""
    cfg = stack.cfg
    urls = stack.replica_urls
    names = {r.url(cfg.host): r.name for r in stack.replicas}
    on_done = reporter(f"{strategy} @ {load:g} {cfg.load_kind}", len(requests)) if reporter else None
    counts_loras = await _has_lora_counter(session, urls[0]) if urls else False
    before = await read_counters(urls)
    cpu_before = _cpu_snapshot(stack)
    stop = asyncio.Event()
    series: dict[str, list[tuple[float, float]]] = {}
    sampler = (
        asyncio.create_task(
            _sample_load(session, [(names[u], u) for u in urls], cfg.sample_interval, series, stop)
        )
        if cfg.sample_interval > 0
        else None
    )
    try:
        if cfg.load_kind == "qps":
            records = await run_open_loop(stack.base_url, requests, qps=load, seed=cfg.seed, on_done=on_done)
        else:
            records = await run_closed_loop(stack.base_url, requests, concurrency=int(load), on_done=on_done)
    finally:
        stop.set()
        if sampler is not None:
            await sampler
    after = await read_counters(urls)
    _write_records(records, stack.folder / f"records-{load:g}.json")
    cpu = _cpu_usage(cpu_before, _cpu_snapshot(stack))
    (stack.folder / f"cpu-{load:g}.json").write_text(json.dumps(cpu, indent=1) + "\n")
    deltas = {names[u]: after[u] - before[u] for u in urls}
    queries = sum(d.prefix_queries for d in deltas.values())
    outcome.results.append(
        RunResult(
            workload=workload,
            strategy=strategy,
            load=load,
            load_kind=cfg.load_kind,
            summary=summarise(records, slo),
            prefix_hit_rate=sum(d.prefix_hits for d in deltas.values()) / queries if queries else None,
            lora_swaps=int(sum(d.lora_loads for d in deltas.values())) if counts_loras else None,
            per_endpoint_requests={name: int(d.requests) for name, d in deltas.items()},
        )
    )
    if series:  # the last (normally the highest) load point's spread is the one plotted
        outcome.load_series[strategy] = series


async def _bring_up(
    stack: _Stack, session: aiohttp.ClientSession, strategy: str, peer: PeerRouter | None
) -> None:
    """Start replicas and router; one more try on failure, since a port picked as free may have
    been taken by someone else before the child bound it."""
    for attempt in (1, 2):
        try:
            await stack.start_replicas(session)
            if peer is not None:
                await stack.start_peer(session, peer)
            else:
                await stack.start_infergate(session, strategy)
        except MatrixError as exc:
            await stack.stop()
            if attempt == 2 or "cannot start" in str(exc):
                raise
            log.warning("%s: start failed, trying once more: %s", strategy, exc.args[0].splitlines()[0])
            continue
        log.info("%s: routing through %s", strategy, stack.base_url)
        return


async def run_matrix(
    requests: Sequence[BenchRequest],
    *,
    workload: str,
    config: MatrixConfig,
    slo: Slo | None = None,
    reporter: Reporter | None = None,
) -> MatrixOutcome:
    """Run every strategy of ``config`` on fresh replicas, one after another; see the module doc.

    With ``fresh_per_load`` (the default) every load point gets fresh replicas and a fresh router
    too: the sweep replays the *same* request stream, and replicas that already served it would
    answer the next load point from a warm prefix cache. A strategy that cannot start (peer not
    installed, process died, never ready) is recorded in ``skipped`` with the reason and the matrix
    goes on with the next one.
    """
    slo = slo or Slo()
    strategies = list(config.strategies) or default_matrix_strategies()
    known = default_matrix_strategies()
    infergate_names = strategy_names(twin=False)
    unknown = [
        s for s in strategies if s not in known and s.partition("+")[0] not in infergate_names
    ]  # an infergate strategy may carry +fc / +nofc
    if unknown:  # fail before any process starts
        raise ValueError(
            f"unknown strategy {unknown[0]!r}; known: {', '.join(known)} (infergate's with +fc or +nofc)"
        )
    for name in strategies:
        if name not in known:
            resolve_strategy(name)  # a bad suffix is a ValueError naming it
    wanted_peers = [s for s in strategies if is_peer(s)]
    found, missing = available_peers(peer_venvs(config.peer_venvs), wanted_peers)
    peers = {p.name: p for p in found}
    outcome = MatrixOutcome()
    for name in missing:
        outcome.skipped[name] = "not installed (see bench/install_peers.sh, --peer-venv)"
    groups = [[load] for load in config.loads] if config.fresh_per_load else [list(config.loads)]
    with cancel_on_signals() as received:
        try:
            await _run_strategies(
                requests, strategies, groups, peers, outcome, workload, config, slo, reporter
            )
        except asyncio.CancelledError:
            if received:  # the replicas and the router were stopped on the way out
                raise SystemExit(128 + received[0]) from None
            raise
    return outcome


async def _run_strategies(
    requests: Sequence[BenchRequest],
    strategies: Sequence[str],
    groups: Sequence[Sequence[float]],
    peers: dict[str, PeerRouter],
    outcome: MatrixOutcome,
    workload: str,
    config: MatrixConfig,
    slo: Slo,
    reporter: Reporter | None,
) -> None:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for strategy in strategies:
            if strategy in outcome.skipped:
                continue
            folder = config.workdir / strategy.replace(":", "-").replace("/", "-")
            try:
                for loads in groups:
                    run_folder = folder / (f"{loads[0]:g}" if config.fresh_per_load else "all")
                    run_folder.mkdir(parents=True, exist_ok=True)
                    async with _Stack(config, run_folder) as stack:
                        await _bring_up(stack, session, strategy, peers.get(strategy))
                        for load in loads:
                            await _run_load(
                                stack,
                                session,
                                requests,
                                load,
                                strategy=strategy,
                                workload=workload,
                                slo=slo,
                                outcome=outcome,
                                reporter=reporter,
                            )
            except MatrixError as exc:
                log.warning("%s skipped: %s", strategy, exc)
                outcome.skipped[strategy] = str(exc)


def static_pool_manifests(pool: str, endpoints: dict[str, str], *, label: str = "bench") -> str:
    """An InferencePool and an EndpointList naming ``endpoints`` (name -> host:port) as YAML: the
    manifests ``infergate serve -f`` needs to front replicas that already run."""
    docs = [
        {
            "apiVersion": "inference.networking.k8s.io/v1",
            "kind": "InferencePool",
            "metadata": {"name": pool},
            "spec": {
                "selector": {"matchLabels": {"app": label}},
                "targetPorts": [{"number": 8000}],
                "endpointPickerRef": {"name": "epp", "port": {"number": 9002}},
            },
        },
        {
            "apiVersion": "infergate.dev/v1alpha1",
            "kind": "EndpointList",
            "metadata": {"name": f"{pool}-replicas"},
            "spec": {
                "poolName": pool,
                "endpoints": [
                    {"name": name, "address": address, "labels": {"app": label}}
                    for name, address in endpoints.items()
                ],
            },
        },
    ]
    return yaml.safe_dump_all(docs, sort_keys=False)
