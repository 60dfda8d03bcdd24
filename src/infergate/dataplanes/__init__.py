"""Data planes: what carries client requests to the endpoint the picker chose.

A data plane is one package here plus one entry in :data:`DATA_PLANES` (name -> factory). The
composition root (``infergate.app.gateway``) builds the picker's core once and hands it to the
factory named by the ``data_plane`` setting; it never compares that name itself.

- ``builtin``: infergate's asyncio HTTP proxy on the inference listener (``dataplanes.builtin``);
- ``envoy``: a local Envoy on the listener calling the picker over ext_proc on a private loopback
  port (``dataplanes.extproc``);
- ``epp``: only the ext_proc picker (and its gRPC health port), for an Envoy-based Gateway that
  runs elsewhere (``dataplanes.extproc``).

May import: request control, the scheduler's core types, ``servers`` (admin plane helpers such as
the listener), ``config``, ``datastore``, ``telemetry``, ``types``, ``errors``, and the HTTP/gRPC
libraries (aiohttp, grpc). Must not import ``app`` or ``cli``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from infergate.api.loader import ManifestSet
from infergate.config.settings import Settings
from infergate.datastore.store import Datastore
from infergate.requestcontrol.director import Director
from infergate.telemetry import GatewayMetrics
from infergate.types import PoolSpec

__all__ = [
    "DATA_PLANES",
    "DataPlane",
    "DataPlaneContext",
    "DataPlaneFactory",
    "WorkerFront",
    "WorkerListen",
    "WorkerPlane",
    "check_runs_under_up",
    "data_plane_factory",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class DataPlaneContext:
    """What a data plane may use: the core's Director and datastore, the settings, the pool."""

    settings: Settings
    director: Director
    datastore: Datastore
    pool: PoolSpec
    metrics: GatewayMetrics
    rng: random.Random
    route_prefixes: Sequence[str] = ("/",)
    manifests: ManifestSet | None = None
    """The manifests the pool came from (Envoy's routes and fail-open cluster); None in a cluster."""


class DataPlane(Protocol):
    """One way of serving the pool. The gateway builds it from the settings, :meth:`attach`es the
    picker's core once the pool is known (at once for manifests, after the first sync in a
    cluster), calls :meth:`prepare` at start (what must be up before routing, such as the gRPC
    health port), :meth:`start` once attached, and :meth:`stop` on shutdown."""

    @property
    def port(self) -> int:
        """The port clients (or Envoy) connect to; 0 before :meth:`start`."""

    @property
    def in_flight(self) -> int:
        """Requests being served right now (drained on stop)."""

    def attach(self, ctx: DataPlaneContext) -> None:
        """Build the servers around the core (no I/O)."""

    async def prepare(self) -> None:
        """Bind what must answer before routing starts (a health port); often nothing."""

    async def start(self, host: str, port: int) -> None:
        """Bind ``host:port`` (the inference listener; ``epp`` uses ``listeners.grpc_port``)."""

    async def set_ready(self, ready: bool) -> None:
        """Report readiness where this data plane has a health signal (gRPC health)."""

    async def stop(self) -> None:
        """Stop accepting, drain within ``proxy.shutdown_grace``, close. Idempotent."""

    def endpoint_down(self, key: str) -> None:
        """An endpoint failed its probes: fail what is relaying from it (if this plane relays)."""


@dataclass(frozen=True, slots=True)
class WorkerListen:
    """Where one worker process of ``proxy.workers`` serves.

    ``fd``: a listening socket bound by the gateway process and inherited by every worker (the
    built-in proxy: the kernel hands each connection to one worker). Otherwise the worker binds
    ``host:port`` itself with SO_REUSEPORT (gRPC cannot serve an inherited socket); the gateway
    process keeps the port reserved meanwhile, so a restarted worker gets the same port back.
    ``tls_pair`` (certificate, key PEM) is made once, so every worker shows the same certificate.
    """

    fd: int | None = None
    host: str = ""
    port: int = 0
    tls_pair: tuple[bytes, bytes] | None = None


class WorkerPlane(DataPlane, Protocol):
    """The part of a data plane that runs in each worker process (``proxy.workers`` > 1)."""

    async def start_worker(self, listen: WorkerListen) -> None:
        """Serve where ``listen`` says (instead of :meth:`DataPlane.start`)."""


class WorkerFront(Protocol):
    """The part of a data plane that stays in the gateway process when workers serve requests:
    it binds or reserves what the workers serve on, and runs what must exist once (a local
    Envoy in front of the workers, the gRPC health port the kubelet probes). The worker pool
    calls :meth:`bind`, starts the workers, then :meth:`start`; on shutdown :meth:`stop` before
    the workers drain and :meth:`close` once they are gone."""

    @property
    def port(self) -> int:
        """The port clients (or Envoy) connect to; 0 before :meth:`bind`."""

    def attach(self, ctx: DataPlaneContext) -> None:
        """The gateway process's core (no I/O)."""

    async def prepare(self) -> None:
        """What must answer before routing starts (the gRPC health port); often nothing."""

    def bind(self, host: str, port: int, count: int) -> list[WorkerListen]:
        """Bind or reserve what ``count`` workers serve on; one :class:`WorkerListen` per worker."""

    async def start(self, host: str, port: int) -> None:
        """Every worker serves: start what stands in front of them (a local Envoy)."""

    async def set_ready(self, ready: bool) -> None:
        """Readiness where the gateway process reports it (the gRPC health port)."""

    async def stop(self) -> None:
        """Stop taking new requests before the workers drain (NOT_SERVING, stop Envoy)."""

    async def close(self) -> None:
        """The workers are gone: release the sockets and ports."""


@dataclass(frozen=True, slots=True)
class DataPlaneFactory:
    """How to build a data plane, and the two facts the core must know before building it."""

    build: Callable[[Settings], DataPlane]
    honors_subset_hint: bool
    """The plane sets ``x-gateway-destination-endpoint-subset`` itself (Envoy), so the Director may
    honour it; the built-in proxy never lets a client narrow routing with it."""
    queues_connections: bool
    """Requests past ``proxy.max_connections_per_endpoint`` wait inside the plane (the built-in
    proxy), so flow control counts them; otherwise they reach the model server's own queue."""
    uses_listener: bool = True
    """Serves the Gateway manifest's listener (port fallback applies); ``epp`` serves gRPC only."""
    runs_under_up: bool = True
    """``infergate up`` may run it: it carries client requests itself on this machine (``epp``
    waits for an Envoy elsewhere, so a local tutorial run would serve nothing)."""
    private_ports: Callable[[Settings], Sequence[tuple[int, str]]] = lambda _s: ()
    """Loopback ports the plane binds besides the listener, with the flag that sets each (checked
    before ``infergate up`` starts anything; 0 = any free port)."""
    speaks_h2c: bool = False
    """Requests can reach the model servers over HTTP/2 without TLS, as a pool's ``appProtocol:
    kubernetes.io/h2c`` asks (the local Envoy's upstream clusters; the Gateway in front of the
    ``epp`` picker); the built-in proxy speaks HTTP/1.1 only, and such a pool is refused."""
    check: Callable[[], None] = lambda: None
    """Raises ConfigError when something the plane needs is missing (the Envoy binary)."""
    worker_front: Callable[[Settings], WorkerFront] | None = None
    """With ``worker_plane``: ``proxy.workers`` may run the plane in several processes; this is
    what stays in the gateway process."""
    worker_plane: Callable[[Settings], WorkerPlane] | None = None
    """What each worker process runs."""

    @property
    def worker_processes(self) -> bool:
        """``proxy.workers`` > 1 is possible with this plane."""
        return self.worker_front is not None and self.worker_plane is not None


def _builtin() -> DataPlaneFactory:
    from infergate.dataplanes.builtin import BuiltinDataPlane, SharedSocketFront

    return DataPlaneFactory(
        BuiltinDataPlane,
        honors_subset_hint=False,
        queues_connections=True,
        worker_front=SharedSocketFront,
        worker_plane=BuiltinDataPlane,
    )


def _envoy() -> DataPlaneFactory:
    from infergate.dataplanes.extproc import EnvoyDataPlane
    from infergate.dataplanes.extproc.process import envoy_binary
    from infergate.dataplanes.extproc.workers import EnvoyFront, ExtProcWorkerPlane, picker_ports

    def ports(s: Settings) -> Sequence[tuple[int, str]]:
        lis = s.listeners
        return [*((p, "--grpc-port") for p in picker_ports(s)), (lis.envoy_admin_port, "--envoy-admin-port")]

    def check() -> None:
        envoy_binary()  # the [envoy] extra is optional: ConfigError saying how to get it

    return DataPlaneFactory(
        EnvoyDataPlane,
        honors_subset_hint=True,
        queues_connections=False,
        private_ports=ports,
        speaks_h2c=True,
        check=check,
        worker_front=EnvoyFront,
        worker_plane=ExtProcWorkerPlane,
    )


def _epp() -> DataPlaneFactory:
    from infergate.dataplanes.extproc import ExtProcDataPlane
    from infergate.dataplanes.extproc.workers import EppFront, ExtProcWorkerPlane

    return DataPlaneFactory(
        ExtProcDataPlane,
        honors_subset_hint=True,
        queues_connections=False,
        uses_listener=False,
        runs_under_up=False,
        speaks_h2c=True,
        worker_front=EppFront,
        worker_plane=ExtProcWorkerPlane,
    )


DATA_PLANES: dict[str, Callable[[], DataPlaneFactory]] = {
    "builtin": _builtin,
    "envoy": _envoy,
    "epp": _epp,
}
"""Data-plane name (the ``data_plane`` setting) -> its factory, imported only when chosen."""


def check_runs_under_up(name: str) -> None:
    """ConfigError unless data plane ``name`` can serve ``infergate up`` (its factory says so)."""
    from infergate.errors import ConfigError

    if not data_plane_factory(name).runs_under_up:
        usable = [n for n, make in DATA_PLANES.items() if make().runs_under_up]
        raise ConfigError(f"--data-plane must be {' or '.join(usable)} for `up` (got {name})")


def data_plane_factory(name: str) -> DataPlaneFactory:
    """The factory of data plane ``name``; KeyError-free: an unknown name is a ConfigError."""
    from infergate.errors import ConfigError

    try:
        return DATA_PLANES[name]()
    except KeyError:
        raise ConfigError(f"data_plane: must be one of {', '.join(DATA_PLANES)} (got {name!r})") from None
