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
from typing import Any

from infergate.config.picker import EndpointPickerConfig, default_picker_config
from infergate.config.settings import Settings, parse_duration
from infergate.dataplanes import DataPlaneContext
from infergate.dataplanes.extproc import ExtProcDataPlane, HealthServer
from infergate.datastore.store import Datastore
from infergate.errors import ConfigError
from infergate.servers.admin import AdminServer
from infergate.servers.extproc import ExtProcServer
from infergate.servers.metrics_auth import build_metrics_auth, metrics_auth_middleware
from infergate.sources.kubernetes import KubernetesSource
from infergate.sources.kubernetes_client import make_api_client
from infergate.telemetry import GatewayMetrics
from infergate.types import Clock, MonotonicClock

from .core import PickerCore, build_core, start_plugin_tasks
from .tasks import Supervisor

__all__ = ["EndpointPicker", "parse_duration", "run_epp"]

log = logging.getLogger("infergate.epp")


class EndpointPicker:
    """One pool's picker in a cluster; :meth:`start`, then :meth:`stop` (idempotent)."""

    def __init__(
        self,
        settings: Settings,
        *,
        picker: EndpointPickerConfig | None = None,
        api_client: Any | None = None,
        metrics: GatewayMetrics | None = None,
        clock: Clock | None = None,
        readiness_interval: float = 0.1,
    ) -> None:
        if settings.pool is None:
            raise ConfigError("settings: pool: the InferencePool to watch is required (--pool-name)")
        if settings.data_plane != "epp":
            raise ConfigError(
                f"data_plane: a cluster picker serves ext_proc (epp), not {settings.data_plane}"
            )
        self.settings = s = settings
        self.pool_name: str = settings.pool
        self._picker_config = picker
        self._readiness_interval = readiness_interval
        self.clock: Clock = clock or MonotonicClock()
        self.metrics = metrics or GatewayMetrics()
        self.datastore = Datastore.from_settings(s, self.clock)
        self.tasks = Supervisor()
        self.health = HealthServer(s.listeners.host, s.listeners.grpc_health_port)
        self.admin = AdminServer.from_settings(
            s, self.datastore, self.metrics, ready=self.ready, extra=self._debug_extra
        )
        self.source: KubernetesSource | None = None
        self.core: PickerCore | None = None
        self.plane: ExtProcDataPlane | None = None
        self._client = api_client
        self._owns_client = api_client is None
        self._rng = random.Random(s.seed) if s.seed is not None else random.Random()
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
            and self.plane is not None
            and src is not None
            and src.synced.is_set()
            and src.pool_spec is not None
        )

    def _debug_extra(self) -> dict[str, Any]:
        ns = self.source.namespace if self.source is not None else None
        extra: dict[str, Any] = {"pool": self.pool_name, "namespace": ns}
        if self.core is not None:
            extra["scheduler"] = self.core.scheduler.debug_state()
        return extra

    @property
    def picker(self) -> ExtProcServer | None:
        """The ext_proc server, once routing is up."""
        return self.plane.picker if self.plane is not None else None

    @property
    def grpc_port(self) -> int:
        return self.plane.port if self.plane is not None else 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Connect, serve health and admin, start watching; routing starts once synced.

        Raises ConfigError for unusable flags (no credentials, metrics auth without its input).
        """
        s = self.settings
        if self._client is None:
            kubeconfig = s.kubernetes.kubeconfig
            try:
                self._client = await make_api_client(kubeconfig=str(kubeconfig) if kubeconfig else None)
            except Exception as exc:  # the client raises its own ConfigException and OSErrors
                raise ConfigError(f"cannot build a Kubernetes client: {exc}") from exc
        try:
            auth = build_metrics_auth(
                s.auth.metrics_auth, token_file=s.auth.metrics_token_file, api_client=self._client
            )
        except (ValueError, OSError) as exc:
            raise ConfigError(str(exc)) from exc
        if auth is not None:
            self.admin.app.middlewares.append(metrics_auth_middleware(auth))
        self.source = KubernetesSource.from_settings(s, self.datastore, api_client=self._client)
        await self.health.start()
        await self.admin.start(s.listeners.host, s.listeners.admin_port)
        self.tasks.spawn("kubernetes-source", self.source.run)
        self.tasks.spawn("picker", self._serve, restart=False)
        self._started = True

    async def _serve(self) -> None:
        """Wait for the first sync and the pool, bring routing up, then keep readiness current."""
        src = self.source
        assert src is not None
        await src.synced.wait()
        while src.pool_spec is None:
            log.warning("InferencePool %s/%s not found; waiting for it", src.namespace, self.pool_name)
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
            await asyncio.sleep(self._readiness_interval)

    @staticmethod
    async def _wait_pool(src: KubernetesSource, limit: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        # The source has no "pool changed" event; a 50 ms poll while unconfigured costs nothing.
        while src.pool_spec is None and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def _bring_up(self, src: KubernetesSource) -> None:
        s = self.settings
        pool = src.pool_spec
        assert pool is not None
        # Which servers the pool fronts is unknown here; lora affinity is harmless without adapters.
        picker = self._picker_config or default_picker_config(lora=True)
        self.core = core = build_core(
            self.datastore,
            pool,
            picker=picker,
            settings=s,
            metrics=self.metrics,
            clock=self.clock,
            rng=self._rng,
            honor_subset_hint=s.subset_filter,
        )
        self.tasks.spawn("metrics-scraper", core.scraper.run)
        start_plugin_tasks(core.scheduler, self.datastore, self.tasks.spawn)
        ctx = DataPlaneContext(
            settings=s,
            director=core.director,
            datastore=self.datastore,
            pool=pool,
            metrics=self.metrics,
            rng=self._rng,
        )
        plane = ExtProcDataPlane(ctx, health=self.health)
        await plane.start(s.listeners.host, s.listeners.grpc_port)
        self.plane = plane
        log.info(
            "picker for pool %s/%s (%s, health %s) on %s:%d tls=%s, %d endpoint(s)",
            src.namespace,
            pool.name,
            pool.model_server_type,
            pool.health_path,
            s.listeners.host,
            plane.port,
            s.listeners.secure_serving,
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
        if self.plane is not None:
            await self.plane.stop()
        if self.core is not None:
            self.core.flow.close()
        await self.tasks.stop()
        await self.health.stop()
        await self.admin.stop()
        if self._owns_client and self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
        log.info("picker stopped")


def run_epp(
    settings: Settings, *, picker: EndpointPickerConfig | None = None, token: str | None = None
) -> int:
    """The process behind ``infergate epp --pool-name``: run until SIGTERM/SIGINT, then drain."""
    from .process import configure_logging, run_async, stop_event

    configure_logging(settings)
    s = settings

    async def main() -> int:
        stop = stop_event()
        try:
            picker_ = EndpointPicker(s, picker=picker)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        try:
            await picker_.start()
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            await picker_.stop()
            return 2
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            await picker_.stop()
            return 1
        ns = picker_.source.namespace if picker_.source is not None else "?"
        print(
            f"infergate epp: pool {ns}/{s.pool}; ext_proc :{s.listeners.grpc_port} "
            f"({'tls' if s.listeners.secure_serving else 'plaintext'}), health :{picker_.health.port}, "
            f"metrics :{picker_.admin.port} (auth {s.auth.metrics_auth}); waiting for the pool to sync",
            flush=True,
        )
        try:
            stopped = asyncio.ensure_future(stop.wait())
            failed = asyncio.ensure_future(picker_.failed.wait())
            await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
            for fut in (stopped, failed):
                fut.cancel()
        finally:
            await picker_.stop()
        if picker_.failure is not None:
            print(f"error: {picker_.failure}", file=sys.stderr)
            return 1
        return 0

    return run_async(main)
