"""The composition root of the gateway: builds every component once and owns their lifecycle.

``Gateway(source, settings)`` serves ``infergate up`` and ``serve`` (a :class:`ManifestPoolSource`,
the built-in proxy or a local Envoy), ``epp -f`` (manifests, ext_proc only) and ``epp --pool-name``
(a :class:`KubernetesPoolSource`, ext_proc only). It wires the datastore the source fills, the
metrics scraper, scheduler, flow control and Director (``app.core``), the data plane the
``data_plane`` setting names (``infergate.dataplanes.DATA_PLANES``) and the admin server, each built
by its own ``from_settings``; nothing here compares the data plane's or the source's kind.

Start: admin and the data plane's early parts (gRPC health) first, then the source; routing comes
up as soon as the pool is known (at construction for manifests, after the first sync in a cluster).
Shutdown order matters: readiness turns false, the data plane stops accepting and drains in-flight
requests within ``proxy.shutdown_grace``, then the background tasks stop.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from infergate.config.picker import EndpointPickerConfig
from infergate.config.settings import Settings
from infergate.dataplanes import DataPlane, DataPlaneContext, DataPlaneFactory, data_plane_factory
from infergate.dataplanes.builtin.proxy import ProxyServer
from infergate.datastore.store import Datastore
from infergate.errors import ConfigError
from infergate.flowcontrol.controller import FlowController
from infergate.requestcontrol.access import Authenticator
from infergate.requestcontrol.director import Director
from infergate.scheduling.engine.decisions import DecisionLog
from infergate.scheduling.engine.scheduler import Scheduler
from infergate.servers.admin import AdminServer
from infergate.servers.auth import ApiKeyStore, load_api_keys
from infergate.servers.liveview import liveview_routes
from infergate.servers.metrics_auth import (
    MetricsAuthorizer,
    StaticTokenAuth,
    build_metrics_auth,
    generate_token,
    metrics_auth_middleware,
)
from infergate.sources.scraper import MetricsScraper
from infergate.telemetry import GatewayMetrics
from infergate.tracing import tracer_from_env
from infergate.types import H2C, Clock, MonotonicClock, PoolSpec

from .core import PickerCore, build_core, start_plugin_tasks
from .sources import KubernetesPoolSource, ManifestPoolSource, PoolSource
from .tasks import Supervisor
from .workers import WorkerPool

__all__ = ["Gateway", "KubernetesPoolSource", "ManifestPoolSource", "PoolSource"]

log = logging.getLogger("infergate.app")


def _merge_keys(from_source: Authenticator | None, configured: Authenticator | None) -> Authenticator | None:
    """``configured`` keys merged with the source's (labelled Secrets among the manifest files)."""
    if from_source is None:
        return configured
    if configured is None:
        return from_source
    if isinstance(configured, ApiKeyStore) and isinstance(from_source, ApiKeyStore):
        return configured.merged(from_source)
    raise ConfigError("API keys: both a custom authenticator and labelled Secrets are configured")


class Gateway:
    """One pool's picker and the data plane the ``data_plane`` setting names, ready to :meth:`start`.

    ``data_plane`` replaces the factory the setting names (an out-of-tree data plane, tests);
    ``api_keys``/``metrics_auth`` replace what ``auth.api_keys``/``auth.metrics_auth`` would build.
    """

    def __init__(
        self,
        source: PoolSource,
        settings: Settings | None = None,
        *,
        data_plane: DataPlaneFactory | None = None,
        picker: EndpointPickerConfig | None = None,
        metrics_auth: MetricsAuthorizer | None = None,
        api_keys: Authenticator | None = None,
        metrics: GatewayMetrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = s = settings or Settings()
        self.source = source
        self.plane_factory = data_plane or data_plane_factory(s.data_plane)
        self.clock: Clock = clock or MonotonicClock()
        self.metrics = metrics or GatewayMetrics()
        self.datastore = Datastore.from_settings(s, self.clock)
        self._picker_config = picker
        self._rng = random.Random(s.seed) if s.seed is not None else random.Random()
        if api_keys is None and s.auth.api_keys is not None:
            api_keys = load_api_keys(s.auth.api_keys)
        self._api_keys = _merge_keys(source.api_keys(), api_keys)
        self._objective_max_tokens = source.objective_max_tokens()
        self.data_plane: DataPlane = self._build_data_plane()
        self.core: PickerCore | None = None
        self.tracer = tracer_from_env()  # OTEL_EXPORTER_OTLP_ENDPOINT; needs the [otel] extra
        self.admin = AdminServer.from_settings(
            s, self.datastore, self.metrics, ready=self.ready, extra=self._debug_extra
        )
        self.metrics_token: str | None = None
        """The bearer token generated for this run (``auth.metrics_auth: token`` without a file)."""
        self._metrics_auth = metrics_auth
        if metrics_auth is None and s.auth.metrics_auth != "kubernetes":
            self._metrics_auth, self.metrics_token = _metrics_auth(s, api_client=None)
        self.tasks = Supervisor()
        self.failed = asyncio.Event()
        """Set when routing could not be brought up (e.g. the gRPC port is taken): the process exits."""
        self.failure: BaseException | None = None
        self._ready_changed = asyncio.Event()
        self._serving = False
        self._stopping = False
        source.attach(self.datastore)
        self.datastore.add_listener(self._ready_changed.set, in_flight=False)
        if source.pool_known():  # manifests: the whole graph exists before start()
            self._attach(self._known_pool())

    def _build_data_plane(self) -> DataPlane:
        """The plane the factory builds, or ``proxy.workers`` processes running it."""
        s, factory = self.settings, self.plane_factory
        if s.proxy.workers == 1:
            return factory.build(s)
        if factory.worker_front is None or factory.worker_plane is None:
            raise ConfigError(f"proxy.workers: the {s.data_plane} data plane runs in one process only")
        return WorkerPool(s, factory.worker_front(s))

    def _known_pool(self) -> PoolSpec:
        pool = self.datastore.pool
        assert pool is not None
        return pool

    def _attach(self, pool: PoolSpec) -> None:
        """Build the core for ``pool`` and hand it to the data plane."""
        s, factory = self.settings, self.plane_factory
        if pool.app_protocol == H2C and not factory.speaks_h2c:
            raise ConfigError(
                f"InferencePool/{pool.name}: spec.appProtocol: {H2C}: the {s.data_plane} data plane sends "
                "requests to model servers over HTTP/1.1; use the envoy data plane (--data-plane envoy) "
                "or appProtocol: http"
            )
        picker = self._picker_config or self.source.default_picker()
        self.core = core = build_core(
            self.datastore,
            pool,
            picker=picker,
            settings=s,
            metrics=self.metrics,
            clock=self.clock,
            rng=self._rng,
            honor_subset_hint=factory.honors_subset_hint and s.subset_filter,
            connection_limit=s.proxy.max_connections_per_endpoint if factory.queues_connections else None,
            objective_max_tokens=self._objective_max_tokens,
        )
        core.director.configure_access(
            authenticator=self._api_keys, limits=core.director.limits, control_headers=s.auth.control_headers
        )
        core.director.set_tracer(self.tracer)
        if isinstance(self.data_plane, WorkerPool):
            self.data_plane.configure(
                picker=picker,
                objective_max_tokens=self._objective_max_tokens,
                api_keys=self._api_keys,
            )
        if core.director.auth_enabled:
            log.info("API-key authentication is on for the inference listener")
        if self.admin.app.frozen:
            log.info("live view off: the admin port was serving before the pool was known")
        else:
            self.admin.app.router.add_routes(
                liveview_routes(
                    self.datastore,
                    flow=core.flow,
                    decisions=core.decisions,
                    pool_name=pool.name,
                    model_state=core.scheduler.debug_state,
                    base_models=self.source.base_models(),
                )
            )
        self.data_plane.attach(
            DataPlaneContext(
                settings=s,
                director=core.director,
                datastore=self.datastore,
                pool=pool,
                metrics=self.metrics,
                rng=self._rng,
                route_prefixes=tuple(self.source.route_prefixes(pool)),
                manifests=self.source.manifests,
            )
        )

    # ------------------------------------------------------------------ the core's parts
    def _core(self) -> PickerCore:
        if self.core is None:
            raise RuntimeError("the pool is not known yet: the core is built once it is")
        return self.core

    @property
    def director(self) -> Director:
        return self._core().director

    @property
    def scheduler(self) -> Scheduler:
        return self._core().scheduler

    @property
    def flow(self) -> FlowController:
        return self._core().flow

    @property
    def scraper(self) -> MetricsScraper:
        return self._core().scraper

    @property
    def decisions(self) -> DecisionLog:
        return self._core().decisions

    @property
    def pool(self) -> PoolSpec:
        return self._known_pool()

    @property
    def proxy(self) -> ProxyServer:
        """The built-in proxy (``data_plane: builtin`` only)."""
        proxy = getattr(self.data_plane, "proxy", None)
        if not isinstance(proxy, ProxyServer):
            raise AttributeError(f"data plane {self.settings.data_plane} has no built-in proxy")
        return proxy

    # ------------------------------------------------------------------ state
    def routing(self) -> bool:
        """The data plane routes: started, the pool known, not shutting down (gRPC readiness)."""
        return self._serving and not self._stopping and self.source.pool_known()

    def ready(self) -> bool:
        """``/readyz``: routing, and what the source requires (manifests: a candidate endpoint)."""
        return self.routing() and self.source.ready(self.datastore)

    def _debug_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"pool": self.source.describe(), "proxy_in_flight": self.data_plane.in_flight}
        if isinstance(self.data_plane, WorkerPool):
            extra["workers"] = self.data_plane.describe()
        if self.core is not None:
            extra["scheduler"] = self.core.scheduler.debug_state()
        return extra

    @property
    def port(self) -> int:
        """The inference listener's port (the picker's gRPC port for ``epp``)."""
        return self.data_plane.port

    @property
    def admin_port(self) -> int:
        return self.admin.port

    @property
    def admin_address(self) -> tuple[str, int]:
        """Where the admin listener binds (``listeners.host``, ``listeners.admin_port``)."""
        return self.settings.listeners.host, self.settings.listeners.admin_port

    def listen_address(self) -> tuple[str, int]:
        """Where the inference listener binds: the settings, else the source's (Gateway manifest)."""
        host, port = self.source.listener()
        lis = self.settings.listeners
        return lis.host or host, lis.port if lis.port is not None else port

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Admin and health first; with the pool known, routing too (else once the source has it).

        Raises ConfigError for unusable settings (no cluster credentials, metrics auth without its
        input) and OSError when a listener cannot bind.
        """
        s = self.settings
        await self.source.open()
        if self._metrics_auth is None and s.auth.metrics_auth == "kubernetes":
            self._metrics_auth, _ = _metrics_auth(s, api_client=self.source.api_client)
        if self._metrics_auth is not None and not self.admin.app.frozen:
            self.admin.app.middlewares.append(metrics_auth_middleware(self._metrics_auth))
        await self.data_plane.prepare()
        await self.admin.start(*self.admin_address)
        self.tasks.spawn("pool-source", self.source.run)
        if self.core is not None:
            await self._serve()
        else:
            self.tasks.spawn("routing", self._bring_up, restart=False)

    async def _serve(self) -> None:
        core = self._core()
        host, port = self.listen_address()
        self.tasks.spawn("metrics-scraper", core.scraper.run)
        self._unsubscribe_plugins = start_plugin_tasks(core, self.datastore, self.tasks.spawn)
        # in-flight requests are withdrawn from an endpoint only once it failed several probes
        core.scraper.add_down_listener(self.data_plane.endpoint_down)
        await self.data_plane.start(host, port)
        self._serving = True
        self._ready_changed.set()
        self.tasks.spawn("readiness", self._follow_readiness, restart=False)
        log.info(
            "gateway (%s) for pool %s on %s:%d (admin %d), %d endpoint(s)",
            self.settings.data_plane,
            self.source.describe(),
            host,
            self.port,
            self.admin.port,
            len(self.datastore.endpoints()),
        )

    async def _bring_up(self) -> None:
        """Wait for the pool, then build the core and start routing; a failure stops the process."""
        pool = await self.source.wait_pool()
        try:
            self._attach(pool)
            await self._serve()
        except Exception as exc:
            log.exception("routing could not start")
            self.failure = exc
            self.failed.set()
            raise

    async def _follow_readiness(self) -> None:
        """Keep the data plane's health signal equal to :meth:`routing` (the pool may go away)."""
        current: bool | None = None
        while True:
            self._ready_changed.clear()
            routing = self.routing()
            if routing != current:
                await self.data_plane.set_ready(routing)
                current = routing
            await self._ready_changed.wait()

    async def wait_ready(self, limit: float = 30.0) -> bool:
        """Wait until every known endpoint is a candidate (or ``limit`` seconds); true if ready."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while loop.time() < deadline:
            eps = self.datastore.endpoints()
            if self.routing() and eps and len(self.datastore.candidates()) == len(eps):
                return True
            await asyncio.sleep(0.05)
        return self.ready()

    async def stop(self) -> None:
        """Not-ready first, then drain the data plane, then stop background work. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        log.info("gateway stopping: draining %d in-flight request(s)", self.data_plane.in_flight)
        await self.data_plane.stop()
        if self.core is not None:
            self.core.flow.close()
        await self.tasks.stop()
        await self.admin.stop()
        await self.source.close()
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.shutdown)
        log.info("gateway stopped")


def _metrics_auth(
    settings: Settings, *, api_client: Any | None
) -> tuple[MetricsAuthorizer | None, str | None]:
    """The admin port's token check for ``auth.metrics_auth`` and the token generated for this run
    (``token`` without ``auth.metrics_token_file``), if any."""
    mode, token_file = settings.auth.metrics_auth, settings.auth.metrics_token_file
    if mode == "kubernetes" and api_client is None:
        raise ConfigError("auth.metrics_auth: kubernetes needs the cluster (infergate epp --pool-name)")
    if mode == "token" and token_file is None:
        token = generate_token()
        return StaticTokenAuth([token]), token
    try:
        return build_metrics_auth(mode, token_file=token_file, api_client=api_client), None
    except (ValueError, OSError) as exc:
        raise ConfigError(f"auth.metrics_auth: {exc}") from exc
