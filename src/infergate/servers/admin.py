"""The admin listener: Prometheus ``/metrics``, liveness ``/healthz``, readiness ``/readyz`` and
``/debug/endpoints`` (the datastore's view of the pool as JSON), plus any extra routes the app
mounts (the live view).

Readiness is a callback owned by the app: it turns false before shutdown so Envoy, or any load
balancer in front, stops sending first (issue 6, draining). With ``auth.metrics_cert_dir`` the
port speaks HTTPS (the reference's ``--metrics-cert-dir``), its pair reloaded when rotated, and
with ``auth.metrics_client_ca_file`` it takes only clients with a certificate that CA signed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from infergate.config.settings import Settings
from infergate.errors import ConfigError
from infergate.servers.listener import LimitedListener
from infergate.servers.tls import CertificateWatcher, https_context
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
        """The admin listener with ``listeners.admin_max_connections`` and the ``auth`` settings'
        TLS (the caller binds ``listeners.host:listeners.admin_port`` with :meth:`start`)."""
        auth = settings.auth
        server = cls(
            pool,
            metrics,
            ready=ready,
            extra=extra,
            routes=routes,
            max_connections=settings.listeners.admin_max_connections,
        )
        if auth.metrics_client_ca_file is not None and auth.metrics_cert_dir is None:
            raise ConfigError("auth.metrics_client_ca_file needs auth.metrics_cert_dir (the server's pair)")
        unverified = auth.metrics_client_ca_file is None and auth.metrics_auth == "disabled"
        if auth.metrics_cert_dir is not None and unverified:
            raise ConfigError(
                "auth.metrics_cert_dir enables TLS on the admin port without authentication; "
                "set auth.metrics_client_ca_file or auth.metrics_auth (--metrics-client-ca-file, "
                "--metrics-endpoint-auth)"
            )
        if auth.metrics_cert_dir is not None:
            server.tls = https_context(auth.metrics_cert_dir, client_ca=auth.metrics_client_ca_file)
            server.cert_watcher = CertificateWatcher(server.tls, auth.metrics_cert_dir, what="metrics")
        return server

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
        self.tls: ssl.SSLContext | None = None
        """HTTPS on the port (``auth.metrics_cert_dir``); None: plain HTTP."""
        self.cert_watcher: CertificateWatcher | None = None
        self._cert_watch: asyncio.Task[None] | None = None
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
        await self._listener.start(host, port, backlog=128, ssl=self.tls)
        self._port = self._listener.port
        if self.cert_watcher is not None:
            self._cert_watch = asyncio.create_task(self.cert_watcher.run(), name="metrics-cert-reload")
        log.info("admin listening on %s:%d%s", host, self._port, " (https)" if self.tls else "")

    async def stop(self) -> None:
        if self._cert_watch is not None:
            self._cert_watch.cancel()
            await asyncio.gather(self._cert_watch, return_exceptions=True)
            self._cert_watch = None
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
