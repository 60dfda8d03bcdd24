"""The ext_proc data planes: the picker as an Envoy external processor, with or without a local Envoy.

- :class:`ExtProcDataPlane` (``epp``): the ext_proc gRPC server on ``listeners.grpc_port`` (TLS
  with ``listeners.secure_serving``) and the plaintext gRPC health port the kubelet probes, for an
  Envoy-based Gateway that runs elsewhere.
- :class:`EnvoyDataPlane` (``envoy``): the same picker on a private loopback port and a local Envoy
  child process on the inference listener, configured from the manifests.

May import: ``servers`` (the listener), request control, ``config``, grpc; never ``app``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from infergate.config.settings import Settings
from infergate.dataplanes.extproc.bootstrap import (
    LISTENER_NAME,
    EnvoySettings,
    envoy_settings,
    render_bootstrap,
)
from infergate.dataplanes.extproc.health import HealthServer
from infergate.dataplanes.extproc.process import EnvoyProcess, start_envoy
from infergate.dataplanes.extproc.server import ExtProcServer, TlsSettings
from infergate.errors import ConfigError

if TYPE_CHECKING:
    from infergate.dataplanes import DataPlaneContext

__all__ = ["EnvoyDataPlane", "ExtProcDataPlane", "HealthServer", "local_envoy_settings"]


def local_envoy_settings(
    settings: Settings, ctx: DataPlaneContext, host: str, port: int, picker_ports: Sequence[int]
) -> EnvoySettings:
    """The local Envoy's settings: a listener on ``host:port`` calling the picker on the loopback
    ``picker_ports`` (one per worker process), admin on ``listeners.envoy_admin_port``."""
    assert ctx.manifests is not None, "the envoy data plane is built from manifests"
    bootstrap = envoy_settings(
        settings,
        ctx.manifests,
        pool_name=ctx.pool.name,
        picker_port=picker_ports[0],
        picker_ports=picker_ports,
        fallback_endpoints=[e.key for e in ctx.datastore.endpoints()],
        listen=(host, port),
        health_path=ctx.pool.health_path,
    )
    return dataclasses.replace(bootstrap, admin_port=settings.listeners.envoy_admin_port)


class ExtProcDataPlane:
    """``epp``: ext_proc on ``listeners.grpc_port`` plus the plaintext health port, sharing one
    health servicer. The health port is up from :meth:`prepare` on, so a cluster picker is live
    (and not ready) while it syncs; readiness follows :meth:`set_ready`."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.health = HealthServer(settings.listeners.host, settings.listeners.grpc_health_port)
        self._picker: ExtProcServer | None = None
        self._started = False
        self._stopped = False

    @property
    def picker(self) -> ExtProcServer | None:
        """The ext_proc server, once attached."""
        return self._picker

    def attach(self, ctx: DataPlaneContext) -> None:
        lis = self._settings.listeners
        tls = TlsSettings.from_listeners(lis) if lis.secure_serving else None
        self._picker = ExtProcServer.from_settings(
            self._settings,
            ctx.director,
            host=lis.host,
            port=lis.grpc_port,
            tls=tls,
            health=self.health.servicer,
            endpoints=ctx.datastore,
            metrics=ctx.metrics,
            rng=ctx.rng,
        )

    @property
    def port(self) -> int:
        return self._picker.port if self._picker is not None and self._started else 0

    @property
    def in_flight(self) -> int:
        return 0  # streams are Envoy's; the picker drains them on stop

    async def prepare(self) -> None:
        await self.health.start()

    async def start(self, host: str, port: int) -> None:
        """Serve on ``listeners.grpc_port`` (the inference listener is Envoy's, elsewhere)."""
        assert self._picker is not None, "attach() first"
        await self._picker.start()
        self._started = True

    async def set_ready(self, ready: bool) -> None:
        await self.health.set_ready(ready)

    async def stop(self) -> None:
        """NOT_SERVING first, then drain open ext_proc streams for ``proxy.shutdown_grace``."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.set_ready(False)
        if self._picker is not None:
            await self._picker.set_serving(False)
            await self._picker.stop(self._settings.proxy.shutdown_grace)
        await self.health.stop()

    def endpoint_down(self, key: str) -> None:
        """Envoy relays the responses; its own outlier handling applies."""


class EnvoyDataPlane:
    """``envoy``: a local Envoy on the listener, calling the picker on a private loopback port
    (``listeners.envoy_picker_port``, 0: any free one)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._ctx: DataPlaneContext | None = None
        self.picker: ExtProcServer | None = None
        self.envoy: EnvoyProcess | None = None
        self._port = 0
        self._stopped = False

    def attach(self, ctx: DataPlaneContext) -> None:
        if ctx.manifests is None:
            raise ConfigError("data_plane: envoy needs manifest files (its routes and listener)")
        self._ctx = ctx
        self.picker = ExtProcServer.from_settings(
            self._settings,
            ctx.director,
            host="127.0.0.1",
            port=self._settings.listeners.envoy_picker_port,
            tls=False,
            endpoints=ctx.datastore,
            metrics=ctx.metrics,
        )

    @property
    def port(self) -> int:
        return self._port

    @property
    def in_flight(self) -> int:
        return 0

    async def prepare(self) -> None:
        """Envoy and the picker start together."""

    async def start(self, host: str, port: int) -> None:
        picker = self.picker
        assert picker is not None, "attach() first"
        await picker.start()
        # One picker, one Envoy worker thread: all streams share one connection to the picker, so
        # its reads and writes batch across requests; Envoy spent 12 % less CPU per request than
        # with two threads at the same rate (docs/benchmarks.md), and one thread carries more than
        # one Python picker does.
        try:
            self.envoy, self._port = await start_envoy(
                lambda p: render_bootstrap(self.bootstrap_settings(host, p)),
                port,
                listener=LISTENER_NAME,
                concurrency=1,
            )
        except ConfigError:
            await picker.stop(0.0)
            raise

    def bootstrap_settings(self, host: str, port: int) -> EnvoySettings:
        """Envoy's settings for a listener on ``host:port`` (admin on ``listeners.envoy_admin_port``)."""
        ctx, picker = self._ctx, self.picker
        assert ctx is not None and picker is not None, "attach() first"
        return local_envoy_settings(self._settings, ctx, host, port, [picker.port])

    async def set_ready(self, ready: bool) -> None:
        if self.picker is not None:
            await self.picker.set_serving(ready)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        grace = self._settings.proxy.shutdown_grace
        if self.picker is not None:
            await self.picker.set_serving(False)
        if self.envoy is not None:
            await self.envoy.stop_async(grace, drain=True)
        if self.picker is not None:
            await self.picker.stop(grace)

    def endpoint_down(self, key: str) -> None:
        """Envoy relays the responses; its own outlier handling applies."""
