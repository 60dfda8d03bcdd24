"""The composition root of the gateway: builds every component once and owns their lifecycle.

``Gateway`` wires datastore ← manifests, metrics scraper, scheduler, flow control, Director,
built-in proxy and admin server. It is used by ``infergate serve`` (endpoints already running) and
``infergate up`` (after starting simulated replicas). Shutdown order matters: readiness turns
false, the proxy stops accepting and drains in-flight requests within the grace period, then the
background tasks stop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import resource
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from infergate.api.loader import ManifestSet
from infergate.config.picker import EndpointPickerConfig, default_picker_config
from infergate.config.settings import GatewaySettings
from infergate.datastore.store import Datastore
from infergate.errors import ConfigError
from infergate.requestcontrol.access import Authenticator, RequestLimits
from infergate.servers.admin import AdminServer
from infergate.servers.auth import ApiKeyStore, api_keys_from_manifests
from infergate.servers.envoy import EnvoyProcess, render_bootstrap, settings_from_manifests
from infergate.servers.extproc import ExtProcServer, serve_extproc
from infergate.servers.liveview import liveview_routes
from infergate.servers.metrics_auth import MetricsAuthorizer, metrics_auth_middleware
from infergate.servers.proxy import ProxyOptions, ProxyServer
from infergate.sources.manifests import apply_manifests
from infergate.telemetry import GatewayMetrics
from infergate.types import Clock, EndpointMeta, MonotonicClock, PoolSpec

from .core import build_core, start_plugin_tasks
from .health import HealthServer
from .tasks import Supervisor

__all__ = ["DATA_PLANES", "Gateway", "GatewayConfig"]

DATA_PLANES = ("builtin", "envoy", "epp")
MAX_TOKENS_ANNOTATION = "infergate.dev/max-tokens"

log = logging.getLogger("infergate.app")


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    """Process-level choices (ports, picker, flags) next to the tunables in ``settings``."""

    host: str = "0.0.0.0"
    port: int | None = None  # None: the Gateway listener's port from the manifests
    admin_host: str = "0.0.0.0"
    admin_port: int = 9090
    pool_name: str | None = None
    picker: EndpointPickerConfig | None = None
    settings: GatewaySettings = field(default_factory=GatewaySettings)
    flow_control: bool = True
    served_header: bool = False
    shutdown_grace: float = 10.0
    extra_endpoints: Sequence[EndpointMeta] = ()
    seed: int | None = None
    data_plane: str = "builtin"
    """``builtin`` (asyncio proxy on the listener), ``envoy`` (Envoy on the listener, calling the
    picker over ext_proc on a private port) or ``epp`` (ext_proc picker only, on ``grpc_port``)."""
    grpc_port: int = 9002
    picker_tls: bool = False
    grpc_health_port: int | None = None
    """``epp``: also serve the gRPC health service in plaintext on this port (the kubelet's probes)."""
    metrics_auth: MetricsAuthorizer | None = None
    """Checks bearer tokens on the admin ``/metrics`` and ``/debug/`` (None: open)."""
    api_keys: Authenticator | None = None
    """API keys for the inference listener (``--api-keys``); Secrets labelled
    ``infergate.dev/api-keys`` in the manifests are added. None and no such Secret: open."""


def request_limits(manifests: ManifestSet, settings: GatewaySettings) -> RequestLimits:
    """The Director's limits: settings, plus ``infergate.dev/max-tokens`` on InferenceObjectives
    (an explicit ``objective_max_tokens`` entry in the settings wins over the annotation)."""
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
    per_objective.update(settings.objective_max_tokens)
    return RequestLimits(
        max_messages=settings.max_messages,
        max_tokens=settings.max_tokens_ceiling,
        objective_max_tokens=per_objective,
    )


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


def client_connection_budget(settings: GatewaySettings) -> int:
    """``max_client_connections``, lowered to fit this process's file-descriptor limit.

    Every proxied request holds a client and an upstream socket, so clients get half of what is
    left after the admin budget and a reserve for scrapes, probes and files.
    """
    wanted = settings.max_client_connections
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # pragma: no cover - no such limit on this platform
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    room = max(16, (soft - settings.admin_max_connections - 128) // 2)
    if room < wanted:
        log.info(
            "file-descriptor limit %d: the inference listener takes at most %d connections "
            "(raise the limit with ulimit -n for more)",
            soft,
            room,
        )
    return min(wanted, room)


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


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Gateway:
    """One pool's picker and built-in data plane, ready to :meth:`start`."""

    def __init__(
        self,
        manifests: ManifestSet,
        config: GatewayConfig | None = None,
        *,
        metrics: GatewayMetrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = cfg = config or GatewayConfig()
        if cfg.data_plane not in DATA_PLANES:
            raise ConfigError(f"data plane must be one of {', '.join(DATA_PLANES)} (got {cfg.data_plane!r})")
        s = cfg.settings
        self.clock: Clock = clock or MonotonicClock()
        self.metrics = metrics or GatewayMetrics()
        self.manifests = manifests
        self.pool: PoolSpec = manifests.pool_spec(cfg.pool_name)
        self.datastore = Datastore(self.clock, staleness=s.staleness)
        apply_manifests(self.datastore, manifests, self.pool)
        for meta in cfg.extra_endpoints:
            self.datastore.upsert_endpoint(meta)
        picker = cfg.picker or default_picker_config(
            lora=_uses_lora(manifests), base_models=_base_models(manifests)
        )
        rng = random.Random(cfg.seed) if cfg.seed is not None else random.Random()
        core = build_core(
            self.datastore,
            self.pool,
            picker=picker,
            settings=s,
            metrics=self.metrics,
            clock=self.clock,
            rng=rng,
            flow_control=cfg.flow_control,
            # Only Envoy sets the subset hint; a client of the built-in proxy must not narrow routing.
            honor_subset_hint=cfg.data_plane != "builtin",
            # The built-in proxy queues requests past its per-endpoint connections itself.
            connection_limit=s.max_connections_per_endpoint if cfg.data_plane == "builtin" else None,
        )
        self.decisions = core.decisions
        self.scheduler = core.scheduler
        self.flow = core.flow
        self.director = core.director
        self.director.configure_access(
            authenticator=_authenticator(manifests, cfg.api_keys),
            limits=request_limits(manifests, s),
            control_headers=s.control_headers,
        )
        if self.director.auth_enabled:
            log.info("API-key authentication is on for the inference listener")
        self.scraper = core.scraper
        self.proxy = ProxyServer(
            self.director,
            self.datastore,
            ProxyOptions(
                route_prefixes=tuple(manifests.route_prefixes(self.pool.name)),
                max_body_bytes=s.max_body_bytes,
                max_header_bytes=s.max_header_bytes,
                connect_timeout=s.connect_timeout,
                read_timeout=min(s.request_timeout, s.first_byte_timeout or s.request_timeout),
                keepalive_timeout=s.idle_timeout,
                body_timeout=s.idle_timeout,
                shutdown_grace=cfg.shutdown_grace,
                served_header=cfg.served_header,
                max_connections_per_endpoint=s.max_connections_per_endpoint,
                stream_idle_timeout=s.stream_idle_timeout,
                evicted_idle_timeout=s.evicted_idle_timeout,
                evicted_idle_factor=s.evicted_idle_factor,
                max_client_connections=client_connection_budget(s),
            ),
            metrics=self.metrics,
        )
        self.picker: ExtProcServer | None = None
        self.health: HealthServer | None = None
        self.envoy: EnvoyProcess | None = None
        self._listen_port = 0
        self.admin = AdminServer(
            self.datastore,
            self.metrics,
            ready=self.ready,
            extra=self._debug_extra,
            routes=self._liveview_routes(),
            max_connections=s.admin_max_connections,
        )
        if cfg.metrics_auth is not None:
            self.admin.app.middlewares.append(metrics_auth_middleware(cfg.metrics_auth))
        self.tasks = Supervisor()
        self._started = False
        self._stopping = False

    # ------------------------------------------------------------------ state
    def ready(self) -> bool:
        """Serving and at least one endpoint can take requests; false from the start of shutdown."""
        return self._started and not self._stopping and bool(self.datastore.candidates())

    def _debug_extra(self) -> dict[str, Any]:
        return {
            "pool": self.pool.name,
            "proxy_in_flight": self.proxy.in_flight,
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
        )

    @property
    def port(self) -> int:
        """The inference listener's port (the picker's gRPC port for ``epp``)."""
        if self.config.data_plane == "builtin":
            return self.proxy.port
        return self._listen_port

    @property
    def admin_port(self) -> int:
        return self.admin.port

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        cfg = self.config
        host, port = self.manifests.listener()
        host = cfg.host or host
        port = cfg.port if cfg.port is not None else port
        self.tasks.spawn("metrics-scraper", self.scraper.run)
        self._unsubscribe_plugins = start_plugin_tasks(self.scheduler, self.datastore, self.tasks.spawn)
        # in-flight requests are withdrawn from an endpoint only once it failed several probes
        self._unsubscribe_down = self.scraper.add_down_listener(self._endpoint_down)
        await self.admin.start(cfg.admin_host, cfg.admin_port)
        if cfg.data_plane == "builtin":
            await self.proxy.start(host, port)
        else:
            await self._start_extproc(host, port)
        self._started = True
        log.info(
            "gateway (%s) for pool %s on %s:%d (admin %d), %d endpoint(s)",
            cfg.data_plane,
            self.pool.name,
            host,
            self.port,
            self.admin.port,
            len(self.datastore.endpoints()),
        )

    async def _start_extproc(self, host: str, port: int) -> None:
        cfg = self.config
        envoy = cfg.data_plane == "envoy"
        if not envoy and cfg.grpc_health_port is not None:
            self.health = HealthServer(host, cfg.grpc_health_port)
            await self.health.start()
        self.picker = serve_extproc(
            self.director,
            "127.0.0.1" if envoy else host,
            0 if envoy else cfg.grpc_port,
            endpoints=self.datastore,
            tls=cfg.picker_tls,
            max_body_bytes=cfg.settings.max_body_bytes,
            health=self.health.servicer if self.health is not None else None,
        )
        await self.picker.start()
        if self.health is not None:
            await self.health.set_ready(True)
        self._listen_port = self.picker.port
        if envoy:
            if port == 0:
                port = _free_port(host)
            settings = settings_from_manifests(
                self.manifests,
                picker_port=self.picker.port,
                picker_tls=cfg.picker_tls,
                pool_name=self.pool.name,
                fallback_endpoints=[e.key for e in self.datastore.endpoints()],
                listen=(host, port),
            )
            s = cfg.settings
            settings = dataclasses.replace(
                settings,
                # the picker may hold a request while it waits in flow control: bound by its TTL
                message_timeout=f"{s.request_ttl + 5:g}s",
                request_headers_timeout=f"{s.idle_timeout:g}s",
                request_timeout=f"{s.idle_timeout + s.request_ttl + 5:g}s",
                max_client_connections=s.max_client_connections,
                health_path=self.pool.health_path,
            )
            self.envoy = EnvoyProcess(render_bootstrap(settings))
            await self.envoy.start_async()
            self._listen_port = port

    def _endpoint_down(self, key: str) -> None:
        self.proxy.endpoint_down(key)  # a replaced proxy (tests) is reached too

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
        """Not-ready first, then drain the proxy, then stop background work. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        log.info("gateway stopping: draining %d in-flight request(s)", self.proxy.in_flight)
        if self.health is not None:
            await self.health.set_ready(False)
        if self.picker is not None:
            await self.picker.set_serving(False)
        if self.envoy is not None:
            await self.envoy.stop_async(self.config.shutdown_grace)
        if self.picker is not None:
            await self.picker.stop(self.config.shutdown_grace)
        if self.health is not None:
            await self.health.stop()
        await self.proxy.stop()
        self.flow.close()
        await self.tasks.stop()
        await self.admin.stop()
        log.info("gateway stopped")
