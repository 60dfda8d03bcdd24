"""The built-in data plane: infergate's asyncio HTTP proxy on the inference listener.

Requests arrive over HTTP, the Director picks an endpoint and the proxy relays the answer (SSE
included), retrying on another endpoint before the first byte. The proxy module owns HTTP; this
module only adapts it to the :class:`~infergate.dataplanes.DataPlane` protocol.

May import: ``servers`` (proxy, listener), request control, ``config``, ``telemetry``; never ``app``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from infergate.servers.proxy import ProxyOptions, ProxyServer

if TYPE_CHECKING:
    from infergate.dataplanes import DataPlaneContext

__all__ = ["BuiltinDataPlane"]


class BuiltinDataPlane:
    """The asyncio proxy, built from the settings (``proxy``, ``limits``, ``listeners`` groups)."""

    def __init__(self, ctx: DataPlaneContext) -> None:
        self.proxy = ProxyServer(
            ctx.director,
            ctx.datastore,
            ProxyOptions.from_settings(ctx.settings, route_prefixes=ctx.route_prefixes),
            metrics=ctx.metrics,
        )

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def in_flight(self) -> int:
        return self.proxy.in_flight

    async def start(self, host: str, port: int) -> None:
        await self.proxy.start(host, port)

    async def set_ready(self, ready: bool) -> None:
        """HTTP readiness is the admin ``/readyz``; nothing to flip here."""

    async def stop(self) -> None:
        await self.proxy.stop()

    def endpoint_down(self, key: str) -> None:
        self.proxy.endpoint_down(key)
