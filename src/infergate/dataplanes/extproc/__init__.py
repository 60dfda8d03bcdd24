"""The ext_proc data planes: the picker as an Envoy external processor, with or without a local Envoy.

- :class:`ExtProcDataPlane` (``epp``): the ext_proc gRPC server on ``listeners.grpc_port`` (TLS
  with ``listeners.secure_serving``) and the plaintext gRPC health port the kubelet probes, for an
  Envoy-based Gateway that runs elsewhere.
- :class:`EnvoyDataPlane` (``envoy``): the same picker on a private loopback port and a local Envoy
  child process on the inference listener, configured from the manifests.

May import: ``servers`` (ext_proc server, Envoy runner), request control, ``config``; never ``app``.
"""

from __future__ import annotations

import dataclasses
import socket
from typing import TYPE_CHECKING

from infergate.dataplanes.extproc.health import HealthServer
from infergate.errors import ConfigError
from infergate.servers.envoy import EnvoyProcess, EnvoySettings, envoy_settings, render_bootstrap
from infergate.servers.extproc import ExtProcServer, TlsSettings

if TYPE_CHECKING:
    from infergate.dataplanes import DataPlaneContext

__all__ = ["EnvoyDataPlane", "ExtProcDataPlane", "HealthServer"]


class ExtProcDataPlane:
    """``epp``: ext_proc on the gRPC port plus the plaintext health port, sharing one servicer.

    ``health`` may be given when the health port must be up before the core exists (a cluster
    picker is live but not ready while it syncs); otherwise it is built and started here.
    """

    def __init__(self, ctx: DataPlaneContext, health: HealthServer | None = None) -> None:
        s = ctx.settings
        self._ctx = ctx
        self._owns_health = health is None
        self.health = health or HealthServer(s.listeners.host, s.listeners.grpc_health_port)
        tls = TlsSettings(cert_path=s.listeners.cert_path) if s.listeners.secure_serving else None
        self.picker = ExtProcServer.from_settings(
            s,
            ctx.director,
            host=s.listeners.host,
            port=s.listeners.grpc_port,
            tls=tls,
            health=self.health.servicer,
            endpoints=ctx.datastore,
            rng=ctx.rng,
        )
        self._stopped = False

    @property
    def port(self) -> int:
        return self.picker.port

    @property
    def in_flight(self) -> int:
        return 0  # streams are Envoy's; the picker drains them on stop

    async def start(self, host: str, port: int) -> None:
        """Serve on ``listeners.grpc_port`` (the inference listener is Envoy's, elsewhere)."""
        if self._owns_health:
            await self.health.start()
        await self.picker.start()

    async def set_ready(self, ready: bool) -> None:
        await self.health.set_ready(ready)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self.health.set_ready(False)
        await self.picker.set_serving(False)
        await self.picker.stop(self._ctx.settings.proxy.shutdown_grace)
        if self._owns_health:
            await self.health.stop()

    def endpoint_down(self, key: str) -> None:
        """Envoy relays the responses; its own outlier handling applies."""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EnvoyDataPlane:
    """``envoy``: a local Envoy on the listener, calling the picker on a private loopback port."""

    def __init__(self, ctx: DataPlaneContext) -> None:
        if ctx.manifests is None:
            raise ConfigError("data_plane: envoy needs manifest files (its routes and listener)")
        self._ctx = ctx
        self.picker = ExtProcServer.from_settings(
            ctx.settings,
            ctx.director,
            host="127.0.0.1",
            port=ctx.settings.listeners.envoy_picker_port,
            tls=False,
            endpoints=ctx.datastore,
        )
        self.envoy: EnvoyProcess | None = None
        self._port = 0
        self._stopped = False

    @property
    def port(self) -> int:
        return self._port

    @property
    def in_flight(self) -> int:
        return 0

    async def start(self, host: str, port: int) -> None:
        ctx = self._ctx
        assert ctx.manifests is not None
        await self.picker.start()
        if port == 0:
            port = _free_port(host)
        self.envoy = EnvoyProcess(render_bootstrap(self.bootstrap_settings(host, port)))
        await self.envoy.start_async()
        self._port = port

    def bootstrap_settings(self, host: str, port: int) -> EnvoySettings:
        """Envoy's settings for a listener on ``host:port`` (admin on ``listeners.envoy_admin_port``)."""
        ctx = self._ctx
        assert ctx.manifests is not None
        bootstrap = envoy_settings(
            ctx.settings,
            ctx.manifests,
            pool_name=ctx.pool.name,
            picker_port=self.picker.port,
            fallback_endpoints=[e.key for e in ctx.datastore.endpoints()],
            listen=(host, port),
            health_path=ctx.pool.health_path,
        )
        return dataclasses.replace(bootstrap, admin_port=ctx.settings.listeners.envoy_admin_port)

    async def set_ready(self, ready: bool) -> None:
        await self.picker.set_serving(ready)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        grace = self._ctx.settings.proxy.shutdown_grace
        await self.picker.set_serving(False)
        if self.envoy is not None:
            await self.envoy.stop_async(grace)
        await self.picker.stop(grace)

    def endpoint_down(self, key: str) -> None:
        """Envoy relays the responses; its own outlier handling applies."""
