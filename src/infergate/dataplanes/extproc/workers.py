"""The ext_proc picker in several worker processes (``proxy.workers`` > 1, ``envoy`` and ``epp``).

Each worker runs its own ext_proc gRPC server (:class:`ExtProcWorkerPlane`) around its own
scheduler and flow control; the gateway process keeps what must exist once (a front):

- ``envoy`` (:class:`EnvoyFront`): one loopback port per worker, every one an endpoint of Envoy's
  ext_proc cluster. Envoy keeps one or two HTTP/2 connections per endpoint and picks an endpoint
  per stream (least request), so requests spread over the workers stream by stream. One shared
  port would not do that: Envoy's few connections could all land on one worker and stay there.
- ``epp`` (:class:`EppFront`): the one ``listeners.grpc_port`` (a Kubernetes Service has one
  target port), bound by every worker with SO_REUSEPORT; the kernel hands each new connection to
  one worker, and every stream on that connection stays there. The plaintext gRPC health port the
  kubelet probes is the gateway process's (readiness is its decision); each worker answers the
  health service on the ext_proc port too (what Envoy's cluster checks), NOT_SERVING while it drains.

Ports a worker binds itself are reserved by the gateway process for the whole run (a bound socket
with SO_REUSEPORT that never listens, so it takes no connection): ``port`` 0 picks a free one, no
other program can take it meanwhile, and a restarted worker binds the same port again. A TLS pair
(``listeners.secure_serving`` without ``cert_path``) is made once and handed to every worker.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

from infergate.config.settings import Settings
from infergate.dataplanes.extproc import local_envoy_settings
from infergate.dataplanes.extproc.bootstrap import LISTENER_NAME, render_bootstrap
from infergate.dataplanes.extproc.health import HealthServer
from infergate.dataplanes.extproc.process import EnvoyProcess, start_envoy
from infergate.dataplanes.extproc.server import ExtProcServer, TlsSettings
from infergate.errors import ConfigError
from infergate.servers.tls import load_or_create_pair

if TYPE_CHECKING:
    from infergate.dataplanes import DataPlaneContext, WorkerListen

__all__ = ["EnvoyFront", "EppFront", "ExtProcWorkerPlane", "picker_ports", "reserve_port"]

log = logging.getLogger("infergate.extproc")


def picker_ports(settings: Settings) -> list[int]:
    """The loopback ports of the local Envoy's picker: ``listeners.envoy_picker_port`` and the
    next ``proxy.workers`` - 1 ports; 0 (any free port) for each when it is 0."""
    base, count = settings.listeners.envoy_picker_port, settings.proxy.workers
    return [base + i if base else 0 for i in range(count)]


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT that never listens: the port stays ours
    (other programs cannot bind it) while worker processes bind it with SO_REUSEPORT and accept;
    a socket that does not listen is handed no connection."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host or "0.0.0.0", port))
    except OSError:
        sock.close()
        raise
    return sock


def _grpc_address(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class ExtProcWorkerPlane:
    """One worker's ext_proc server on the address its :class:`WorkerListen` names (SO_REUSEPORT)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._ctx: DataPlaneContext | None = None
        self.picker: ExtProcServer | None = None
        self._serving = True
        self._stopped = False

    def attach(self, ctx: DataPlaneContext) -> None:
        self._ctx = ctx

    @property
    def port(self) -> int:
        return self.picker.port if self.picker is not None else 0

    @property
    def in_flight(self) -> int:
        """Open ext_proc streams (each one request Envoy is processing through this worker)."""
        return self.picker.processor.active_streams if self.picker is not None else 0

    async def prepare(self) -> None:
        """The gateway process runs what must answer first."""

    async def start(self, host: str, port: int) -> None:
        raise RuntimeError("an ext_proc worker serves where the gateway process says (start_worker)")

    async def start_worker(self, listen: WorkerListen) -> None:
        ctx = self._ctx
        assert ctx is not None, "attach() first"
        lis = self._settings.listeners
        tls = TlsSettings.from_listeners(lis, pair=listen.tls_pair) if listen.tls_pair is not None else None
        self.picker = ExtProcServer.from_settings(
            self._settings,
            ctx.director,
            host=_grpc_address(listen.host),
            port=listen.port,
            tls=tls,
            endpoints=ctx.datastore,
            metrics=ctx.metrics,
            rng=ctx.rng,
            reuse_port=True,
        )
        await self.picker.start()
        await self.picker.set_serving(self._serving)

    async def set_ready(self, ready: bool) -> None:
        """The gateway process's readiness, as Envoy's health check on this port sees it."""
        self._serving = ready
        if self.picker is not None and not self._stopped:
            await self.picker.set_serving(ready)

    async def stop(self) -> None:
        """NOT_SERVING, then let open streams finish within ``proxy.shutdown_grace``."""
        if self._stopped:
            return
        self._stopped = True
        if self.picker is not None:
            await self.picker.set_serving(False)
            await self.picker.stop(self._settings.proxy.shutdown_grace)

    def endpoint_down(self, key: str) -> None:
        """Envoy relays the responses; its own outlier handling applies."""


class _ReservedPorts:
    """The ports the workers bind, held by the gateway process (see :func:`reserve_port`)."""

    def __init__(self) -> None:
        self._socks: list[socket.socket] = []

    def reserve(self, host: str, port: int) -> int:
        sock = reserve_port(host, port)
        self._socks.append(sock)
        return int(sock.getsockname()[1])

    def close(self) -> None:
        for sock in self._socks:
            sock.close()
        self._socks.clear()


class EnvoyFront:
    """``envoy`` with workers: one reserved loopback port per worker and the local Envoy whose
    ext_proc cluster lists them all (started once every worker serves)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._ctx: DataPlaneContext | None = None
        self._ports = _ReservedPorts()
        self.picker_ports: list[int] = []
        self.envoy: EnvoyProcess | None = None
        self._port = 0

    @property
    def port(self) -> int:
        return self._port

    def attach(self, ctx: DataPlaneContext) -> None:
        if ctx.manifests is None:
            raise ConfigError("data_plane: envoy needs manifest files (its routes and listener)")
        self._ctx = ctx

    async def prepare(self) -> None:
        """Envoy starts once the workers serve."""

    def bind(self, host: str, port: int, count: int) -> list[WorkerListen]:
        from infergate.dataplanes import WorkerListen

        wanted = picker_ports(self._settings)
        if len(wanted) != count:
            raise RuntimeError(f"{count} workers for {len(wanted)} picker ports")
        try:
            self.picker_ports = [self._ports.reserve("127.0.0.1", p) for p in wanted]
        except OSError as exc:
            self._ports.close()
            raise OSError(exc.errno, f"picker ports {wanted} (--grpc-port and the next ones): {exc}") from exc
        return [WorkerListen(host="127.0.0.1", port=p) for p in self.picker_ports]

    async def start(self, host: str, port: int) -> None:
        ctx = self._ctx
        assert ctx is not None and self.picker_ports, "attach() and bind() first"
        pickers = self.picker_ports
        # as many Envoy worker threads as pickers: Envoy costs about as much per request as a picker
        self.envoy, port = await start_envoy(
            lambda p: render_bootstrap(local_envoy_settings(self._settings, ctx, host, p, pickers)),
            port,
            listener=LISTENER_NAME,
            concurrency=len(pickers),
        )
        self._port = port
        log.info(
            "envoy on %s:%d calls %d pickers on ports %s",
            host,
            port,
            len(self.picker_ports),
            self.picker_ports,
        )

    async def set_ready(self, ready: bool) -> None:
        """Each worker's health service tells Envoy."""

    async def stop(self) -> None:
        if self.envoy is not None:
            await self.envoy.stop_async(self._settings.proxy.shutdown_grace, drain=True)

    async def close(self) -> None:
        self._ports.close()


class EppFront:
    """``epp`` with workers: the plaintext gRPC health port, and ``listeners.grpc_port`` reserved
    and shared by every worker with SO_REUSEPORT."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        lis = settings.listeners
        self.health = HealthServer(lis.host, lis.grpc_health_port)
        self._ports = _ReservedPorts()
        self._port = 0

    @property
    def port(self) -> int:
        return self._port

    def attach(self, ctx: DataPlaneContext) -> None:
        """The workers build the picker; nothing of the core is needed here."""

    async def prepare(self) -> None:
        await self.health.start()

    def bind(self, host: str, port: int, count: int) -> list[WorkerListen]:
        """``listeners.host:grpc_port`` for every worker (the inference listener is Envoy's, elsewhere)."""
        from infergate.dataplanes import WorkerListen

        lis = self._settings.listeners
        self._port = self._ports.reserve(lis.host, lis.grpc_port)
        pair = None
        if lis.secure_serving:
            pair = load_or_create_pair(lis.cert_path, common_name=TlsSettings().common_name, host=lis.host)
        return [WorkerListen(host=lis.host, port=self._port, tls_pair=pair)] * count

    async def start(self, host: str, port: int) -> None:
        """The workers serve the port themselves."""

    async def set_ready(self, ready: bool) -> None:
        await self.health.set_ready(ready)

    async def stop(self) -> None:
        """NOT_SERVING on the health port before the workers drain: the Service stops sending."""
        await self.health.set_ready(False)

    async def close(self) -> None:
        self._ports.close()
        await self.health.stop()
