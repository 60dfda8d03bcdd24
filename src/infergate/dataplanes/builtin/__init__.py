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
    from infergate.dataplanes import DataPlaneContext

__all__ = ["BuiltinDataPlane"]


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

    async def start_on(self, sock: socket.socket) -> None:
        """Serve on a listening socket shared with other worker processes (``proxy.workers``)."""
        await self.proxy.start("", 0, sock=sock)

    async def set_ready(self, ready: bool) -> None:
        """HTTP readiness is the admin ``/readyz``; nothing to flip here."""

    async def stop(self) -> None:
        if self._proxy is not None:
            await self._proxy.stop()

    def endpoint_down(self, key: str) -> None:
        if self._proxy is not None:
            self._proxy.endpoint_down(key)
