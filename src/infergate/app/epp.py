"""``infergate epp --pool-name NAME``: the in-cluster endpoint picker, fed by the Kubernetes API.

Composition (the reference picker's, port for port):

1. a ``kubernetes_asyncio`` API client (``--kubeconfig``, else in-cluster credentials, else
   ``$KUBECONFIG``/``~/.kube/config``);
2. the admin listener on ``--metrics-port`` (``/metrics`` behind the ``--metrics-auth`` check,
   ``/healthz``, ``/readyz``) and the plaintext gRPC health service on ``--grpc-health-port``, both
   up at once so the kubelet sees a live but not-ready pod while the picker syncs;
3. :class:`~infergate.sources.kubernetes.KubernetesSource` under the supervisor (restarted with
   back-off if it fails), writing pool, pods, objectives and rewrites into the datastore;
4. once the source has synced and the pool exists: the core (scheduler, flow control, Director,
   scraper speaking the pool's ``modelServerType`` dialect on its health path) and the ext_proc
   gRPC server on ``--grpc-port``; readiness turns SERVING;
5. readiness follows "pool known" from then on (a deleted pool makes the picker unready, not dead).

Shutdown (first SIGTERM): readiness NOT_SERVING first, so the Service stops sending new streams,
then open ext_proc streams drain for the grace period, then background work stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infergate.config.picker import EndpointPickerConfig, default_picker_config
from infergate.config.settings import GatewaySettings
from infergate.datastore.store import Datastore
from infergate.errors import ConfigError
from infergate.servers.admin import AdminServer
from infergate.servers.extproc import ExtProcServer, TlsSettings, serve_extproc
from infergate.servers.metrics_auth import build_metrics_auth, metrics_auth_middleware
from infergate.sources.kubernetes import POOL_GROUP, KubernetesSource
from infergate.sources.kubernetes_client import make_api_client
from infergate.telemetry import GatewayMetrics
from infergate.types import Clock, MonotonicClock

from .core import PickerCore, build_core, start_plugin_tasks
from .health import HealthServer
from .tasks import Supervisor

__all__ = ["EndpointPicker", "EppConfig", "parse_duration", "run_epp"]

log = logging.getLogger("infergate.epp")


@dataclass(frozen=True, kw_only=True)
class EppConfig:
    """The ``infergate epp`` flags of the in-cluster mode."""

    pool_name: str
    pool_namespace: str = "default"
    pool_group: str = POOL_GROUP
    kubeconfig: str | None = None
    host: str = "0.0.0.0"
    grpc_port: int = 9002
    grpc_health_port: int = 9003
    metrics_port: int = 9090
    picker: EndpointPickerConfig | None = None
    secure_serving: bool = True
    cert_path: Path | None = None
    metrics_auth: str = "kubernetes"
    metrics_token_file: Path | None = None
    settings: GatewaySettings = field(default_factory=GatewaySettings)
    flow_control: bool = True
    subset_filter: bool = True
    write_status: bool = True
    shutdown_grace: float = 10.0
    readiness_interval: float = 0.1
    seed: int | None = None


class EndpointPicker:
    """One pool's picker in a cluster; :meth:`start`, then :meth:`stop` (idempotent)."""

    def __init__(
        self,
        config: EppConfig,
        *,
        api_client: Any | None = None,
        metrics: GatewayMetrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = cfg = config
        if cfg.pool_group != POOL_GROUP:
            log.warning("--pool-group=%s: only %s/v1 InferencePools are watched", cfg.pool_group, POOL_GROUP)
        self.clock: Clock = clock or MonotonicClock()
        self.metrics = metrics or GatewayMetrics()
        self.datastore = Datastore(self.clock, staleness=cfg.settings.staleness)
        self.tasks = Supervisor()
        self.health = HealthServer(cfg.host, cfg.grpc_health_port)
        self.admin = AdminServer(self.datastore, self.metrics, ready=self.ready, extra=self._debug_extra)
        self.source: KubernetesSource | None = None
        self.core: PickerCore | None = None
        self.picker: ExtProcServer | None = None
        self._client = api_client
        self._owns_client = api_client is None
        self._rng = random.Random(cfg.seed) if cfg.seed is not None else random.Random()
        self._stopping = False
        self._started = False
        self.failed = asyncio.Event()
        """Set when routing could not be brought up (e.g. the gRPC port is taken): the process exits."""
        self.failure: BaseException | None = None

    # ------------------------------------------------------------------ state
    def ready(self) -> bool:
        """Routing: synced, the pool exists, ext_proc up, not shutting down."""
        src = self.source
        return (
            not self._stopping
            and self.picker is not None
            and src is not None
            and src.synced.is_set()
            and src.pool_spec is not None
        )

    def _debug_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"pool": self.config.pool_name, "namespace": self.config.pool_namespace}
        if self.core is not None:
            extra["scheduler"] = self.core.scheduler.debug_state()
        return extra

    @property
    def grpc_port(self) -> int:
        return self.picker.port if self.picker is not None else 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Connect, serve health and admin, start watching; routing starts once synced.

        Raises ConfigError for unusable flags (no credentials, metrics auth without its input).
        """
        cfg = self.config
        if self._client is None:
            try:
                self._client = await make_api_client(kubeconfig=cfg.kubeconfig)
            except Exception as exc:  # the client raises its own ConfigException and OSErrors
                raise ConfigError(f"cannot build a Kubernetes client: {exc}") from exc
        try:
            auth = build_metrics_auth(
                cfg.metrics_auth, token_file=cfg.metrics_token_file, api_client=self._client
            )
        except (ValueError, OSError) as exc:
            raise ConfigError(str(exc)) from exc
        if auth is not None:
            self.admin.app.middlewares.append(metrics_auth_middleware(auth))
        self.source = KubernetesSource(
            self.datastore,
            pool_name=cfg.pool_name,
            pool_namespace=cfg.pool_namespace,
            api_client=self._client,
            pool_group=cfg.pool_group,
            write_status=cfg.write_status,
        )
        await self.health.start()
        await self.admin.start(cfg.host, cfg.metrics_port)
        self.tasks.spawn("kubernetes-source", self.source.run)
        self.tasks.spawn("picker", self._serve, restart=False)
        self._started = True

    async def _serve(self) -> None:
        """Wait for the first sync and the pool, bring routing up, then keep readiness current."""
        src = self.source
        assert src is not None
        await src.synced.wait()
        while src.pool_spec is None:
            cfg = self.config
            log.warning("InferencePool %s/%s not found; waiting for it", cfg.pool_namespace, cfg.pool_name)
            await self._wait_pool(src, 5.0)
        try:
            await self._bring_up(src)
        except Exception as exc:
            log.exception("picker could not start")
            self.failure = exc
            self.failed.set()
            raise
        while True:
            ready = self.ready()
            if ready != self.health.ready:
                await self.health.set_ready(ready)
            await asyncio.sleep(self.config.readiness_interval)

    @staticmethod
    async def _wait_pool(src: KubernetesSource, limit: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        # The source has no "pool changed" event; a 50 ms poll while unconfigured costs nothing.
        while src.pool_spec is None and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def _bring_up(self, src: KubernetesSource) -> None:
        cfg = self.config
        pool = src.pool_spec
        assert pool is not None
        # Which servers the pool fronts is unknown here; lora affinity is harmless without adapters.
        picker = cfg.picker or default_picker_config(lora=True)
        self.core = core = build_core(
            self.datastore,
            pool,
            picker=picker,
            settings=cfg.settings,
            metrics=self.metrics,
            clock=self.clock,
            rng=self._rng,
            flow_control=cfg.flow_control,
            honor_subset_hint=cfg.subset_filter,
        )
        self.tasks.spawn("metrics-scraper", core.scraper.run)
        start_plugin_tasks(core.scheduler, self.datastore, self.tasks.spawn)
        tls = TlsSettings(cert_path=cfg.cert_path) if cfg.secure_serving else None
        picker_server = serve_extproc(
            core.director,
            cfg.host,
            cfg.grpc_port,
            endpoints=self.datastore,
            tls=tls,
            rng=self._rng,
            max_body_bytes=cfg.settings.max_body_bytes,
            health=self.health.servicer,
        )
        await picker_server.start()
        self.picker = picker_server
        log.info(
            "picker for pool %s/%s (%s, health %s) on %s:%d tls=%s, %d endpoint(s)",
            cfg.pool_namespace,
            pool.name,
            pool.model_server_type,
            pool.health_path,
            cfg.host,
            picker_server.port,
            tls is not None,
            len(self.datastore.endpoints()),
        )

    async def wait_ready(self, limit: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while not self.ready() and loop.time() < deadline:  # noqa: ASYNC110 - several sources
            await asyncio.sleep(0.05)
        return self.ready()

    async def stop(self) -> None:
        """NOT_SERVING first, then drain open ext_proc streams, then stop background work."""
        if self._stopping:
            return
        self._stopping = True
        await self.health.set_ready(False)
        if self.picker is not None:
            await self.picker.stop(self.config.shutdown_grace)
        if self.core is not None:
            self.core.flow.close()
        await self.tasks.stop()
        await self.health.stop()
        await self.admin.stop()
        if self._owns_client and self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
        log.info("picker stopped")


def run_epp(config: EppConfig, *, log_level: str = "INFO", log_format: str = "text") -> int:
    """The process behind ``infergate epp --pool-name``: run until SIGTERM/SIGINT, then drain."""
    from .run import _run, _stop_event, setup_logging

    setup_logging(log_level, log_format)

    async def main() -> int:
        stop = _stop_event()
        picker = EndpointPicker(config)
        try:
            await picker.start()
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            await picker.stop()
            return 2
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            await picker.stop()
            return 1
        print(
            f"infergate epp: pool {config.pool_namespace}/{config.pool_name}; ext_proc :{config.grpc_port} "
            f"({'tls' if config.secure_serving else 'plaintext'}), health :{picker.health.port}, "
            f"metrics :{picker.admin.port} (auth {config.metrics_auth}); waiting for the pool to sync",
            flush=True,
        )
        try:
            stopped = asyncio.ensure_future(stop.wait())
            failed = asyncio.ensure_future(picker.failed.wait())
            await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
            for fut in (stopped, failed):
                fut.cancel()
        finally:
            await picker.stop()
        if picker.failure is not None:
            print(f"error: {picker.failure}", file=sys.stderr)
            return 1
        return 0

    return _run(main)


_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds of a Go duration (``50ms``, ``2s``, ``1m30s``) as the reference's flags take; a bare
    number is seconds. Raises ValueError."""
    import re

    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"invalid duration {text!r} (e.g. 50ms, 2s, 1m)")
    return sum(float(n) * _UNITS[u] for n, u in parts)
