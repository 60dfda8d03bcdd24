"""The admin listener: Prometheus ``/metrics``, liveness ``/healthz``, readiness ``/readyz`` and
``/debug/endpoints`` (the datastore's view of the pool as JSON), plus any extra routes the app
mounts (the live view).

Readiness is a callback owned by the app: it turns false before shutdown so Envoy, or any load
balancer in front, stops sending first (issue 6, draining).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from infergate.config.settings import Settings
from infergate.servers.listener import LimitedListener
from infergate.telemetry import GatewayMetrics
from infergate.types import Endpoint

__all__ = ["AdminServer", "endpoint_json"]

log = logging.getLogger("infergate.admin")


class PoolView(Protocol):
    def endpoints(self) -> list[Endpoint]: ...
    def candidates(self) -> list[Endpoint]: ...
    def models(self, key: str) -> frozenset[str]: ...


def endpoint_json(ep: Endpoint, *, candidate: bool, models: frozenset[str]) -> dict[str, Any]:
    """One endpoint as the debug API and live view show it."""
    m = ep.metrics
    metrics = {
        f.name: sorted(v) if isinstance(v, frozenset) else v
        for f in dataclasses.fields(m)
        for v in (getattr(m, f.name),)
    }
    return {
        "key": ep.key,
        "name": ep.meta.name,
        "address": ep.meta.address,
        "port": ep.meta.port,
        "labels": dict(ep.meta.labels),
        "healthy": ep.healthy,
        "candidate": candidate,
        "in_flight": ep.in_flight,
        "in_flight_started": ep.in_flight_started,
        "models": sorted(models),
        "metrics": metrics,
    }


class AdminServer:
    """Small aiohttp application on its own port; never on the inference listener."""

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        pool: PoolView,
        metrics: GatewayMetrics,
        *,
        ready: Callable[[], bool] = lambda: True,
        extra: Callable[[], dict[str, Any]] | None = None,
        routes: Sequence[web.AbstractRouteDef] = (),
    ) -> AdminServer:
        """The admin listener with ``listeners.admin_max_connections`` (the caller binds
        ``listeners.host:listeners.admin_port`` with :meth:`start`)."""
        return cls(
            pool,
            metrics,
            ready=ready,
            extra=extra,
            routes=routes,
            max_connections=settings.listeners.admin_max_connections,
        )

    def __init__(
        self,
        pool: PoolView,
        metrics: GatewayMetrics,
        *,
        ready: Callable[[], bool] = lambda: True,
        extra: Callable[[], dict[str, Any]] | None = None,
        routes: Sequence[web.AbstractRouteDef] = (),
        max_connections: int = 256,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._ready = ready
        self._extra = extra
        self._runner: web.AppRunner | None = None
        self._listener: LimitedListener | None = None
        self._max_connections = max_connections
        self._port = 0
        self.app = web.Application()
        self.app.router.add_get("/metrics", self._get_metrics)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self.app.router.add_get("/debug/endpoints", self._debug_endpoints)
        self.app.router.add_routes(list(routes))  # e.g. the live view

    @property
    def port(self) -> int:
        return self._port

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        # its own connection budget: a flood on the inference port cannot lock operators out
        assert self._runner.server is not None  # set up above
        self._listener = LimitedListener(self._runner.server, self._max_connections, name="admin")
        await self._listener.start(host, port, backlog=128)
        self._port = self._listener.port
        log.info("admin listening on %s:%d", host, self._port)

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _get_metrics(self, request: web.Request) -> web.Response:
        resp = web.Response(body=self._metrics.render())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        ok = self._ready()
        return web.Response(status=200 if ok else 503, text="ready\n" if ok else "not ready\n")

    async def _debug_endpoints(self, request: web.Request) -> web.Response:
        cands = {e.key for e in self._pool.candidates()}
        body: dict[str, Any] = {
            "endpoints": [
                endpoint_json(e, candidate=e.key in cands, models=self._pool.models(e.key))
                for e in self._pool.endpoints()
            ]
        }
        if self._extra is not None:
            body.update(self._extra())
        return web.Response(body=json.dumps(body, default=str).encode(), content_type="application/json")
