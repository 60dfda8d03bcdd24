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
import re
import shutil
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infergate.api.loader import ManifestSet, load_manifests
from infergate.config.picker import EndpointPickerConfig
from infergate.config.settings import Settings
from infergate.dataplanes import data_plane_factory
from infergate.dataplanes.extproc import EnvoyDataPlane
from infergate.dataplanes.extproc.workers import EnvoyFront
from infergate.errors import ConfigError

from .fleet import Fleet
from .gateway import Gateway
from .preflight import PortClaim, check_ports, parse_replica_ports
from .process import configure_logging, run_async, setup_logging, stop_event, tune_gc_for_serving
from .sources import ManifestPoolSource
from .workers import WorkerPool

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


def _bindable(host: str, port: int) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host or "0.0.0.0", port))
    except OSError:
        return False
    return True


def _with_port(gw: Gateway, port: int) -> None:
    gw.settings = gw.settings.replace({"listeners.port": port})


async def _start_with_fallback(gw: Gateway) -> None:
    """Start; when the manifests' port is privileged or busy and no port was set, use 8080."""
    explicit_port = gw.settings.listeners.port is not None
    if not explicit_port and gw.plane_factory.uses_listener:
        host, wanted = gw.listen_address()
        if not _bindable(host, wanted):
            log.warning(
                "cannot listen on port %d; using %d instead (choose with --port)", wanted, FALLBACK_PORT
            )
            _with_port(gw, FALLBACK_PORT)
    try:
        await gw.start()
    except OSError as exc:
        if explicit_port or exc.errno not in (errno.EACCES, errno.EPERM, errno.EADDRINUSE):
            raise
        _, wanted = gw.source.listener()
        log.warning("cannot listen on port %d (%s); using %d instead", wanted, exc.strerror, FALLBACK_PORT)
        await gw.admin.stop()
        await gw.tasks.stop()
        _with_port(gw, FALLBACK_PORT)
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
    settings: Settings,
    *,
    picker: EndpointPickerConfig | None = None,
) -> int:
    """``infergate serve`` and ``infergate epp -f``: the picker and its data plane for endpoints
    that already run. A metrics token generated for this run (``auth.metrics_auth: token``
    without a token file) is printed with the curl that uses it.
    """
    configure_logging(settings)
    try:
        manifests = _load(paths)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        stop = stop_event()
        try:
            gw = Gateway(ManifestPoolSource.from_settings(manifests, settings), settings, picker=picker)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        try:
            await _start_with_fallback(gw)
        except OSError as exc:  # a port taken (the admin port, or --port given explicitly)
            await gw.stop()
            print(f"error: cannot listen: {exc.strerror or exc} ({_port_flags(exc)})", file=sys.stderr)
            return 2
        plane = settings.data_plane
        what = "ext_proc picker" if not gw.plane_factory.uses_listener else f"{plane} data plane"
        host = _display_host(settings.listeners.host)
        print(
            f"infergate serving pool {gw.pool.name} ({what}) on {host}:{gw.port} "
            f"(admin :{gw.admin_port}, {len(gw.datastore.endpoints())} endpoint(s))",
            flush=True,
        )
        if gw.metrics_token is not None:
            print(f"  metrics: {metrics_curl(host, gw.admin_port, gw.metrics_token)}", flush=True)
        tune_gc_for_serving()
        try:
            await stop.wait()
        finally:
            await gw.stop()
        return 0

    return run_async(main)


def _port_flags(exc: OSError) -> str:
    """Which flags choose the port an OSError from binding names, for the error line."""
    found = re.search(r"\('?[^,]*'?, (\d+)\)", str(exc))
    where = f"port {found.group(1)}; " if found else ""
    return f"{where}choose others with --port, --admin-port, --grpc-port"


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


def _up_port_claims(settings: Settings, replica_ports: Sequence[int]) -> list[PortClaim]:
    lis = settings.listeners
    host = lis.host or "127.0.0.1"
    claims = [
        PortClaim(host, lis.port if lis.port is not None else UP_DEFAULT_PORT, "--port"),
        PortClaim(host, lis.admin_port, "--admin-port"),
    ]
    plane = data_plane_factory(settings.data_plane)
    claims.extend(PortClaim("127.0.0.1", port, flag) for port, flag in plane.private_ports(settings))
    claims.extend(PortClaim("127.0.0.1", p, "--replica-ports") for p in replica_ports)
    return claims


def _up_banner(gw: Gateway, fleet: Fleet, token: str | None) -> list[str]:
    """What ``up`` prints once ready: every URL and port it really bound, and what to paste."""
    host = _display_host(gw.settings.listeners.host)
    url = f"http://{host}:{gw.port}"
    lines = [
        f"infergate up: pool {gw.pool.name}, {len(fleet.replicas)} replica(s), "
        f"{gw.settings.data_plane} data plane",
        f"  URL:       {url}   (OpenAI base URL: {url}/v1)",
        f"  admin:     http://{host}:{gw.admin_port}   (/metrics, /readyz, live view at /live)",
    ]
    plane = gw.data_plane
    if isinstance(plane, EnvoyDataPlane):
        envoy_admin = plane.envoy.admin_address if plane.envoy is not None else None
        lines.append(
            f"  picker:    ext_proc on 127.0.0.1:{plane.picker.port if plane.picker else '-'}   "
            f"Envoy admin: {envoy_admin or '-'}"
        )
    elif isinstance(plane, WorkerPool) and isinstance(plane.front, EnvoyFront):
        envoy_admin = plane.front.envoy.admin_address if plane.front.envoy is not None else None
        ports = ", ".join(str(p) for p in plane.front.picker_ports)
        lines.append(
            f"  picker:    ext_proc on 127.0.0.1:{ports} (one per worker)   Envoy admin: {envoy_admin or '-'}"
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
    settings: Settings,
    *,
    picker: EndpointPickerConfig | None = None,
    replicas: int | None = None,
    replica_ports: Sequence[int] = (),
    quiet: bool = False,
    simulate_args: Sequence[str] = (),
) -> int:
    """``infergate up``: the whole tutorial on this machine.

    Every startup error (manifests, settings, a port taken, a missing Envoy) is found before a child
    process starts and reported as one line with exit code 2. With ``auth.metrics_auth: token``
    (the default of ``up``) the admin ``/metrics`` and ``/debug/`` need a bearer token generated for
    this run and printed (held in memory only). The run folder (replica logs) is removed at exit.
    """
    configure_logging(settings)
    if settings.listeners.port is None:
        settings = settings.replace({"listeners.port": UP_DEFAULT_PORT})
    fleet: Fleet | None = None
    try:
        manifests = _load([directory or bundled_manifests()], deprecations=directory is not None)
        pool = manifests.pool_spec(settings.pool)
        fleet = Fleet(manifests, pool, replicas=replicas, extra_args=simulate_args, ports=replica_ports)
        fleet.plan()
        check_ports(_up_port_claims(settings, [r.port for r in fleet.replicas] if replica_ports else []))
        data_plane_factory(settings.data_plane).check()  # e.g. the optional Envoy: say so first
        # builds and validates every component (keys, limits, picker); binds nothing
        source = ManifestPoolSource.from_settings(manifests, settings, extra_endpoints=fleet.endpoints())
        Gateway(source, settings, picker=picker)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if fleet is not None:
            shutil.rmtree(fleet.run_dir, ignore_errors=True)
        return 2
    try:
        return run_async(lambda: _up_main(fleet, manifests, settings, picker=picker, quiet=quiet))
    finally:
        shutil.rmtree(fleet.run_dir, ignore_errors=True)


async def _up_main(
    fleet: Fleet,
    manifests: ManifestSet,
    settings: Settings,
    *,
    picker: EndpointPickerConfig | None,
    quiet: bool,
) -> int:
    stop = stop_event()
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
        source = ManifestPoolSource.from_settings(manifests, settings, extra_endpoints=fleet.endpoints())
        gw = Gateway(source, settings, picker=picker)
        token = gw.metrics_token  # printed, never written: nothing secret stays on disk, even after a kill
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
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if gw is not None:
            await gw.stop()
        await fleet.stop()
        print("infergate up: stopped", flush=True)
