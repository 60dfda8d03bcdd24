"""Process entry points behind ``infergate serve`` and ``infergate up``.

They own what a process owns: logging setup, the uvloop event loop, SIGTERM/SIGINT handling
(first signal: graceful drain; second: stop now), port fallback when the Gateway's port 80 is not
allowed, the ready banner with a paste-able curl, and the live one-line-per-endpoint summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from infergate.api.loader import ManifestSet, load_manifests
from infergate.errors import ConfigError
from infergate.servers.envoy import envoy_binary
from infergate.servers.metrics_auth import StaticTokenAuth, generate_token, write_token_file

from .fleet import Fleet
from .gateway import Gateway, GatewayConfig
from .logs import setup_logging
from .preflight import PortClaim, check_ports, parse_replica_ports

__all__ = [
    "bundled_manifests",
    "metrics_curl",
    "parse_replica_ports",
    "run_serve",
    "run_up",
    "setup_logging",
]

log = logging.getLogger("infergate.app")

FALLBACK_PORT = 8080


def bundled_manifests() -> Path:
    """The tutorial's manifests shipped inside the package."""
    from importlib.resources import files

    return Path(str(files("infergate.manifests").joinpath("tutorial")))


def _raise_fd_limit() -> None:
    """Use the hard file-descriptor limit: a gateway holds two sockets per request in flight."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, OSError, ValueError):  # pragma: no cover - platform without the limit
        pass


def _run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    _raise_fd_limit()
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - Windows
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def _stop_event() -> asyncio.Event:
    """Set on the first SIGINT/SIGTERM; another one more than a second later exits at once.

    (``timeout`` and terminals signal the whole process group, so one request can arrive twice.)
    """
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    first: list[float] = []

    def on_signal(sig: signal.Signals) -> None:
        if event.is_set():
            if loop.time() - first[0] < 1.0:
                return
            log.warning("second %s: exiting now", sig.name)
            sys.exit(130)
        log.info("%s received: shutting down", sig.name)
        first.append(loop.time())
        event.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal, sig)
    return event


def _bindable(host: str, port: int) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host or "0.0.0.0", port))
    except OSError:
        return False
    return True


async def _start_with_fallback(gw: Gateway, explicit_port: bool) -> None:
    """Start; when the manifests' port is privileged or busy and no --port was given, use 8080."""
    if not explicit_port and gw.config.data_plane != "epp":
        host, wanted = gw.manifests.listener()
        if not _bindable(gw.config.host or host, wanted):
            log.warning(
                "cannot listen on port %d; using %d instead (choose with --port)", wanted, FALLBACK_PORT
            )
            gw.config = replace(gw.config, port=FALLBACK_PORT)
    try:
        await gw.start()
    except OSError as exc:
        if explicit_port or exc.errno not in (errno.EACCES, errno.EPERM, errno.EADDRINUSE):
            raise
        _, wanted = gw.manifests.listener()
        log.warning("cannot listen on port %d (%s); using %d instead", wanted, exc.strerror, FALLBACK_PORT)
        await gw.admin.stop()
        await gw.tasks.stop()
        gw.config = replace(gw.config, port=FALLBACK_PORT)
        await gw.start()


def _load(paths: Sequence[Path], *, deprecations: bool = True) -> ManifestSet:
    """Load and report warnings. ``deprecations=False`` for the bundled tutorial: it keeps the
    tutorial's own apiVersions, which a user of ``up`` cannot change."""
    manifests = load_manifests(paths)
    for w in manifests.warnings:
        if deprecations or "is deprecated" not in w:
            log.warning("%s", w)
    if manifests.ignored:
        log.info("ignored kinds: %s", ", ".join(manifests.ignored))
    return manifests


def metrics_curl(host: str, admin_port: int, token: str) -> str:
    """The paste-able scrape of a token-protected admin ``/metrics``."""
    return f"curl -H 'Authorization: Bearer {token}' http://{host}:{admin_port}/metrics"


def run_serve(
    paths: Sequence[Path],
    config: GatewayConfig,
    *,
    log_level: str = "INFO",
    metrics_token: str | None = None,
    log_format: str = "text",
) -> int:
    """``infergate serve``: picker + proxy for endpoints that already run.

    ``metrics_token``: a token generated for this run (``--metrics-auth=token`` without a token
    file); printed with the curl that uses it. ``config.metrics_auth`` is what checks it.
    """
    setup_logging(log_level, log_format)
    try:
        manifests = _load(paths)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        stop = _stop_event()
        try:
            gw = Gateway(manifests, config)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        await _start_with_fallback(gw, config.port is not None)
        what = "ext_proc picker" if config.data_plane == "epp" else f"{config.data_plane} data plane"
        print(
            f"infergate serving pool {gw.pool.name} ({what}) on {_display_host(config.host)}:{gw.port} "
            f"(admin :{gw.admin_port}, {len(gw.datastore.endpoints())} endpoint(s))",
            flush=True,
        )
        if metrics_token is not None:
            host = _display_host(config.admin_host)
            print(f"  metrics: {metrics_curl(host, gw.admin_port, metrics_token)}", flush=True)
        try:
            await stop.wait()
        finally:
            await gw.stop()
        return 0

    return _run(main)


def _display_host(host: str) -> str:
    return "localhost" if host in ("0.0.0.0", "", "::") else host


def tutorial_curl(port: int, model: str = "food-review", host: str = "localhost") -> str:
    body = {
        "model": model,
        "prompt": "What is the best pizza in the world?",
        "max_tokens": 100,
        "temperature": 0,
    }
    return (
        f"curl -i -X POST http://{host}:{port}/v1/completions -H 'Content-Type: application/json' "
        f"-d '{json.dumps(body)}'"
    )


def _summary_rows(gw: Gateway) -> list[dict[str, Any]]:
    cands = {e.key for e in gw.datastore.candidates()}
    rows = []
    for e in sorted(gw.datastore.endpoints(), key=lambda e: e.meta.name):
        m = e.metrics
        rows.append(
            {
                "name": e.meta.name,
                "key": e.key,
                "state": "ready" if e.key in cands else ("stale" if e.healthy else "down"),
                "queue": m.waiting_queue_size,
                "running": m.running_requests,
                "kv": f"{m.kv_cache_usage * 100:.0f}%",
                "in_flight": e.in_flight,
                "adapters": ",".join(sorted(m.running_adapters)) or "-",
            }
        )
    return rows


async def _live_summary(gw: Gateway, stop: asyncio.Event) -> None:
    """One line per endpoint, refreshed every second, on a terminal only."""
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        await stop.wait()
        return

    def render() -> Table:
        t = Table(title=f"pool {gw.pool.name}  (Ctrl-C to stop)", expand=False)
        for col in ("endpoint", "address", "state", "queue", "running", "kv", "in-flight", "adapters"):
            t.add_column(col)
        for r in _summary_rows(gw):
            t.add_row(
                r["name"],
                r["key"],
                r["state"],
                str(r["queue"]),
                str(r["running"]),
                r["kv"],
                str(r["in_flight"]),
                r["adapters"],
            )
        return t

    with Live(render(), console=console, refresh_per_second=1, transient=False) as live:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            live.update(render())


UP_DEFAULT_PORT = 8080
"""``up`` listens here unless ``--port`` says otherwise: a local run does not take the Gateway's
port 80 even where it could (as root), so the URL in the README is the one it prints."""


def _up_port_claims(config: GatewayConfig, replica_ports: Sequence[int]) -> list[PortClaim]:
    host = config.host or "127.0.0.1"
    claims = [
        PortClaim(host, config.port if config.port is not None else UP_DEFAULT_PORT, "--port"),
        PortClaim(config.admin_host or host, config.admin_port, "--admin-port"),
    ]
    if config.data_plane == "envoy":
        claims.append(PortClaim("127.0.0.1", config.envoy_picker_port, "--grpc-port"))
        claims.append(PortClaim("127.0.0.1", config.envoy_admin_port, "--envoy-admin-port"))
    claims.extend(PortClaim("127.0.0.1", p, "--replica-ports") for p in replica_ports)
    return claims


def _up_banner(gw: Gateway, fleet: Fleet, token: str | None) -> list[str]:
    """What ``up`` prints once ready: every URL and port it really bound, and what to paste."""
    host = _display_host(gw.config.host)
    url = f"http://{host}:{gw.port}"
    lines = [
        f"infergate up: pool {gw.pool.name}, {len(fleet.replicas)} replica(s), "
        f"{gw.config.data_plane} data plane",
        f"  URL:       {url}   (OpenAI base URL: {url}/v1)",
        f"  admin:     http://{host}:{gw.admin_port}   (/metrics, /readyz, live view at /live)",
    ]
    if gw.picker is not None:
        envoy_admin = gw.envoy.admin_address if gw.envoy is not None else None
        lines.append(
            f"  picker:    ext_proc on 127.0.0.1:{gw.picker.port}   envoy admin: {envoy_admin or '-'}"
        )
    lines.append("  replicas:  " + ", ".join(f"{r.name} http://{r.key}" for r in fleet.replicas))
    lines.append(f"  logs:      {fleet.run_dir} (removed at exit)")
    if token is not None:
        lines.append(f"  metrics token: {token}")
        lines.append(f"  metrics:   {metrics_curl(host, gw.admin_port, token)}")
    lines.append(f"  try:       {tutorial_curl(gw.port, host=host)}")
    return lines


def run_up(
    directory: Path | None,
    config: GatewayConfig,
    *,
    replicas: int | None = None,
    replica_ports: Sequence[int] = (),
    quiet: bool = False,
    log_level: str = "WARNING",
    simulate_args: Sequence[str] = (),
    protect_metrics: bool = True,
    log_format: str = "text",
) -> int:
    """``infergate up``: the whole tutorial on this machine.

    Every startup error (manifests, flags, a port taken) is found before a child process starts and
    reported as one line with exit code 2. With ``protect_metrics`` the admin ``/metrics`` and
    ``/debug/`` need a bearer token generated for this run and printed. The run folder (replica
    logs, the token's file) is removed at exit.
    """
    setup_logging(log_level, log_format)
    config = replace(config, port=config.port if config.port is not None else UP_DEFAULT_PORT)
    fleet: Fleet | None = None
    try:
        manifests = _load([directory or bundled_manifests()], deprecations=directory is not None)
        pool = manifests.pool_spec(config.pool_name)
        fleet = Fleet(manifests, pool, replicas=replicas, extra_args=simulate_args, ports=replica_ports)
        fleet.plan()
        check_ports(_up_port_claims(config, [r.port for r in fleet.replicas] if replica_ports else []))
        if config.data_plane == "envoy":
            envoy_binary()  # the [envoy] extra is optional: say so before anything starts
        Gateway(manifests, replace(config, extra_endpoints=fleet.endpoints()))  # validates, binds nothing
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if fleet is not None:
            shutil.rmtree(fleet.run_dir, ignore_errors=True)
        return 2
    try:
        return _run(lambda: _up_main(fleet, manifests, config, quiet=quiet, protect_metrics=protect_metrics))
    finally:
        shutil.rmtree(fleet.run_dir, ignore_errors=True)


async def _up_main(
    fleet: Fleet, manifests: ManifestSet, config: GatewayConfig, *, quiet: bool, protect_metrics: bool
) -> int:
    stop = _stop_event()
    gw: Gateway | None = None
    try:
        print(f"starting {len(fleet.replicas)} simulated replica(s)", flush=True)
        starting = asyncio.create_task(fleet.start())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return 130
        stopped.cancel()
        starting.result()
        token: str | None = None
        gw_config = replace(config, extra_endpoints=fleet.endpoints())
        if protect_metrics:
            token = generate_token()
            write_token_file(fleet.run_dir / "metrics-token", token)
            gw_config = replace(gw_config, metrics_auth=StaticTokenAuth([token]))
        gw = Gateway(manifests, gw_config)
        try:
            await gw.start()
        except OSError as exc:  # taken between the check and now
            print(f"error: cannot listen: {exc.strerror or exc}", file=sys.stderr)
            return 2
        await gw.wait_ready(30.0)
        print("\n".join(_up_banner(gw, fleet, token)), flush=True)
        if quiet:
            await stop.wait()
        else:
            await _live_summary(gw, stop)
        return 0
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if gw is not None:
            await gw.stop()
        await fleet.stop()
        print("infergate up: stopped", flush=True)
