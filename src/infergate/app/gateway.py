"""The composition root of the gateway: builds every component once and owns their lifecycle.

``Gateway`` wires datastore <- manifests, metrics scraper, scheduler, flow control, Director, the
data plane the ``data_plane`` setting names (``infergate.dataplanes.DATA_PLANES``) and the admin
server, each built by its own ``from_settings``. It is used by ``infergate serve`` (endpoints
already running), ``infergate up`` (after starting simulated replicas) and ``infergate epp -f``.
Shutdown order matters: readiness turns false, the data plane stops accepting and drains in-flight
requests within ``proxy.shutdown_grace``, then the background tasks stop.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from infergate.api.loader import ManifestSet
from infergate.config.picker import EndpointPickerConfig, default_picker_config
from infergate.config.settings import Settings
from infergate.dataplanes import DataPlane, DataPlaneContext, data_plane_factory
from infergate.dataplanes.builtin import BuiltinDataPlane
from infergate.datastore.store import Datastore
from infergate.errors import ConfigError
from infergate.requestcontrol.access import Authenticator
from infergate.servers.admin import AdminServer
from infergate.servers.auth import ApiKeyStore, api_keys_from_manifests, load_api_keys
from infergate.servers.liveview import liveview_routes
from infergate.servers.metrics_auth import (
    MetricsAuthorizer,
    StaticTokenAuth,
    build_metrics_auth,
    generate_token,
    metrics_auth_middleware,
)
from infergate.servers.proxy import ProxyServer
from infergate.sources.manifests import apply_manifests
from infergate.telemetry import GatewayMetrics
from infergate.tracing import tracer_from_env
from infergate.types import Clock, EndpointMeta, MonotonicClock, PoolSpec

from .core import build_core, start_plugin_tasks
from .tasks import Supervisor

__all__ = ["Gateway", "annotated_max_tokens"]

MAX_TOKENS_ANNOTATION = "infergate.dev/max-tokens"

log = logging.getLogger("infergate.app")


def annotated_max_tokens(manifests: ManifestSet) -> dict[str, int]:
    """``infergate.dev/max-tokens`` on InferenceObjectives (the ``limits.objective_max_tokens``
    setting wins over them; the Director merges the two)."""
    per_objective: dict[str, int] = {}
    for obj in manifests.objectives:
        raw = obj.metadata.annotations.get(MAX_TOKENS_ANNOTATION)
        if raw is None:
            continue
        try:
            value = int(raw.strip())
        except ValueError:
            value = 0
        if value < 1:
            raise ConfigError(
                f"InferenceObjective/{obj.name}: metadata.annotations.{MAX_TOKENS_ANNOTATION}: "
                f"must be a positive integer (got {raw!r})"
            )
        per_objective[obj.name] = value
    return per_objective


def _authenticator(manifests: ManifestSet, configured: Authenticator | None) -> Authenticator | None:
    """``configured`` merged with the keys of labelled Secrets among the manifest files."""
    from_secrets = api_keys_from_manifests(manifests.files)
    if from_secrets is None:
        return configured
    if configured is None:
        return from_secrets
    if isinstance(configured, ApiKeyStore):
        return configured.merged(from_secrets)
    raise ConfigError("API keys: both a custom authenticator and labelled Secrets are configured")


def _metrics_auth(settings: Settings) -> tuple[MetricsAuthorizer | None, str | None]:
    """The admin port's token check for ``auth.metrics_auth`` and the token generated for this run
    (``token`` without ``auth.metrics_token_file``), if any."""
    mode, token_file = settings.auth.metrics_auth, settings.auth.metrics_token_file
    if mode == "kubernetes":
        raise ConfigError("auth.metrics_auth: kubernetes needs the cluster (infergate epp --pool-name)")
    if mode == "token" and token_file is None:
        token = generate_token()
        return StaticTokenAuth([token]), token
    try:
        return build_metrics_auth(mode, token_file=token_file), None
    except (ValueError, OSError) as exc:
        raise ConfigError(f"auth.metrics_token_file: {exc}") from exc


def _uses_lora(manifests: ManifestSet) -> bool:
    if manifests.lora_configs:
        return True
    if not manifests.deployments:
        return True  # unknown servers: affinity is harmless when no adapter is requested
    return any("--enable-lora" in d.vllm_argv() for d in manifests.deployments)


def _base_models(manifests: ManifestSet) -> list[str]:
    """Names the model servers serve as base models (``--model``, ``--served-model-name``), so LoRA
    affinity stays neutral for requests that need no adapter."""
    names: list[str] = []
    for d in manifests.deployments:
        argv = d.vllm_argv()
        for i, arg in enumerate(argv):
            flag, eq, value = arg.partition("=")
            if flag == "--model":
                names.append(value if eq else (argv[i + 1] if i + 1 < len(argv) else ""))
            elif flag == "--served-model-name":
                if eq:
                    names.append(value)
                else:  # nargs="+": every value up to the next flag
                    for v in argv[i + 1 :]:
                        if v.startswith("-"):
                            break
                        names.append(v)
    return [n for n in dict.fromkeys(names) if n]


class Gateway:
    """One pool's picker and the data plane the ``data_plane`` setting names, ready to :meth:`start`.

    Every component is built by its own ``from_settings``; this class only wires them and owns the
    order of start and stop.
    """

    def __init__(
        self,
        manifests: ManifestSet,
        settings: Settings | None = None,
        *,
        picker: EndpointPickerConfig | None = None,
        extra_endpoints: Sequence[EndpointMeta] = (),
        metrics_auth: MetricsAuthorizer | None = None,
        api_keys: Authenticator | None = None,
        metrics: GatewayMetrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        """``api_keys``/``metrics_auth`` replace what ``auth.api_keys``/``auth.metrics_auth`` would
        build (tests, embedding). Secrets labelled ``infergate.dev/api-keys`` in the manifests are
        added to the keys."""
        self.settings = s = settings or Settings()
        self.plane_factory = data_plane_factory(s.data_plane)
        self.clock: Clock = clock or MonotonicClock()
        self.metrics = metrics or GatewayMetrics()
        self.manifests = manifests
        self.pool: PoolSpec = manifests.pool_spec(s.pool)
        self.datastore = Datastore.from_settings(s, self.clock)
        apply_manifests(self.datastore, manifests, self.pool)
        for meta in extra_endpoints:
            self.datastore.upsert_endpoint(meta)
        picker = picker or default_picker_config(
            lora=_uses_lora(manifests), base_models=_base_models(manifests)
        )
        rng = random.Random(s.seed) if s.seed is not None else random.Random()
        factory = self.plane_factory
        core = build_core(
            self.datastore,
            self.pool,
            picker=picker,
            settings=s,
            metrics=self.metrics,
            clock=self.clock,
            rng=rng,
            honor_subset_hint=factory.honors_subset_hint and s.subset_filter,
            connection_limit=s.proxy.max_connections_per_endpoint if factory.queues_connections else None,
            objective_max_tokens=annotated_max_tokens(manifests),
        )
        self.decisions = core.decisions
        self.scheduler = core.scheduler
        self.flow = core.flow
        self.director = core.director
        if api_keys is None and s.auth.api_keys is not None:
            api_keys = load_api_keys(s.auth.api_keys)
        self.director.configure_access(
            authenticator=_authenticator(manifests, api_keys),
            limits=self.director.limits,
            control_headers=s.auth.control_headers,
        )
        self.tracer = tracer_from_env()  # OTEL_EXPORTER_OTLP_ENDPOINT; needs the [otel] extra
        self.director.set_tracer(self.tracer)
        if self.director.auth_enabled:
            log.info("API-key authentication is on for the inference listener")
        self.scraper = core.scraper
        self.data_plane: DataPlane = factory.build(
            DataPlaneContext(
                settings=s,
                director=self.director,
                datastore=self.datastore,
                pool=self.pool,
                metrics=self.metrics,
                rng=rng,
                route_prefixes=tuple(manifests.route_prefixes(self.pool.name)),
                manifests=manifests,
            )
        )
        self.admin = AdminServer.from_settings(
            s,
            self.datastore,
            self.metrics,
            ready=self.ready,
            extra=self._debug_extra,
            routes=self._liveview_routes(),
        )
        self.metrics_token: str | None = None
        """The bearer token generated for this run (``auth.metrics_auth: token`` without a file)."""
        if metrics_auth is None:
            metrics_auth, self.metrics_token = _metrics_auth(s)
        if metrics_auth is not None:
            self.admin.app.middlewares.append(metrics_auth_middleware(metrics_auth))
        self.tasks = Supervisor()
        self._started = False
        self._stopping = False

    # ------------------------------------------------------------------ state
    @property
    def proxy(self) -> ProxyServer:
        """The built-in proxy (``data_plane: builtin`` only)."""
        if not isinstance(self.data_plane, BuiltinDataPlane):
            raise AttributeError(f"data plane {self.settings.data_plane} has no built-in proxy")
        return self.data_plane.proxy

    def ready(self) -> bool:
        """Serving and at least one endpoint can take requests; false from the start of shutdown."""
        return self._started and not self._stopping and bool(self.datastore.candidates())

    def _debug_extra(self) -> dict[str, Any]:
        return {
            "pool": self.pool.name,
            "proxy_in_flight": self.data_plane.in_flight,
            "scheduler": self.scheduler.debug_state(),
        }

    def _liveview_routes(self) -> list[web.RouteDef]:
        """The live view's routes (``/live``, ``/live/state``) for the admin port."""
        return liveview_routes(
            self.datastore,
            flow=self.flow,
            decisions=self.decisions,
            pool_name=self.pool.name,
            model_state=self.scheduler.debug_state,
            base_models=_base_models(self.manifests),
        )

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
        """Where the inference listener binds: the settings, else the Gateway manifest's listener."""
        host, port = self.manifests.listener()
        lis = self.settings.listeners
        return lis.host or host, lis.port if lis.port is not None else port

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        s = self.settings
        host, port = self.listen_address()
        self.tasks.spawn("metrics-scraper", self.scraper.run)
        self._unsubscribe_plugins = start_plugin_tasks(self.scheduler, self.datastore, self.tasks.spawn)
        # in-flight requests are withdrawn from an endpoint only once it failed several probes
        self._unsubscribe_down = self.scraper.add_down_listener(self._endpoint_down)
        await self.admin.start(*self.admin_address)
        await self.data_plane.start(host, port)
        await self.data_plane.set_ready(True)
        self._started = True
        log.info(
            "gateway (%s) for pool %s on %s:%d (admin %d), %d endpoint(s)",
            s.data_plane,
            self.pool.name,
            host,
            self.port,
            self.admin.port,
            len(self.datastore.endpoints()),
        )

    def _endpoint_down(self, key: str) -> None:
        self.data_plane.endpoint_down(key)

    async def wait_ready(self, limit: float = 30.0) -> bool:
        """Wait until every known endpoint is a candidate (or ``limit`` seconds); true if any is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while loop.time() < deadline:
            eps = self.datastore.endpoints()
            if eps and len(self.datastore.candidates()) == len(eps):
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
        self.flow.close()
        await self.tasks.stop()
        await self.admin.stop()
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.shutdown)
        log.info("gateway stopped")
