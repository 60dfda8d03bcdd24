"""The built-in data plane: infergate's asyncio HTTP proxy on the inference listener.

Requests arrive over HTTP, the Director picks an endpoint and the proxy relays the answer (SSE
included), retrying on another endpoint before the first byte. The proxy module owns HTTP; this
module only adapts it to the :class:`~infergate.dataplanes.DataPlane` protocol.

May import: ``servers`` (proxy, listener), request control, ``config``, ``telemetry``; never ``app``.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from infergate.config.settings import Settings
from infergate.dataplanes.builtin.proxy import ProxyOptions, ProxyServer

if TYPE_CHECKING:
    from infergate.dataplanes import DataPlaneContext, WorkerListen

__all__ = ["BuiltinDataPlane", "SharedSocketFront"]


class BuiltinDataPlane:
    """The asyncio proxy, built from the settings (``proxy``, ``limits``, ``listeners`` groups)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._proxy: ProxyServer | None = None

    @property
    def proxy(self) -> ProxyServer:
        if self._proxy is None:
            raise RuntimeError("the built-in proxy exists once the core is attached")
        return self._proxy

    @proxy.setter
    def proxy(self, server: ProxyServer) -> None:
        """Replace the proxy (tests with options the settings do not expose)."""
        self._proxy = server

    def attach(self, ctx: DataPlaneContext) -> None:
        self._proxy = ProxyServer(
            ctx.director,
            ctx.datastore,
            ProxyOptions.from_settings(self._settings, route_prefixes=ctx.route_prefixes),
            metrics=ctx.metrics,
        )

    @property
    def port(self) -> int:
        return self._proxy.port if self._proxy is not None else 0

    @property
    def in_flight(self) -> int:
        return self._proxy.in_flight if self._proxy is not None else 0

    async def prepare(self) -> None:
        """Nothing answers before the proxy does."""

    async def start(self, host: str, port: int) -> None:
        await self.proxy.start(host, port)

    async def start_worker(self, listen: WorkerListen) -> None:
        """Serve on the listening socket shared with the other worker processes (``proxy.workers``)."""
        if listen.fd is None:
            raise RuntimeError("a built-in proxy worker serves an inherited socket")
        await self.proxy.start("", 0, sock=socket.socket(fileno=listen.fd))

    async def set_ready(self, ready: bool) -> None:
        """HTTP readiness is the admin ``/readyz``; nothing to flip here."""

    async def stop(self) -> None:
        if self._proxy is not None:
            await self._proxy.stop()

    def endpoint_down(self, key: str) -> None:
        if self._proxy is not None:
            self._proxy.endpoint_down(key)


class SharedSocketFront:
    """The gateway process's part with ``proxy.workers`` > 1: one listening socket that every
    worker inherits (so ``port`` 0 works and a restarted worker serves the same socket without a
    gap); the kernel hands each new connection to one worker."""

    def __init__(self, settings: Settings) -> None:
        self._sock: socket.socket | None = None

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1]) if self._sock is not None else 0

    def attach(self, ctx: DataPlaneContext) -> None:
        """Nothing of the core is needed here."""

    async def prepare(self) -> None:
        """Nothing answers before the workers do."""

    def bind(self, host: str, port: int, count: int) -> list[WorkerListen]:
        from infergate.dataplanes import WorkerListen

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family, backlog=1024)
        return [WorkerListen(fd=self._sock.fileno())] * count

    async def start(self, host: str, port: int) -> None:
        """The workers accept on the socket themselves."""

    async def set_ready(self, ready: bool) -> None:
        """HTTP readiness is the admin ``/readyz`` of the gateway process."""

    async def stop(self) -> None:
        """Each worker stops accepting on SIGTERM."""

    async def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
