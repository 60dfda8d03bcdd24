"""The picker's core, built once for every way infergate runs: scheduler, flow control, Director
and metrics scraper over one Datastore.

``Gateway`` (``serve``/``up``, endpoints from manifest files) and ``EndpointPicker`` (``epp``,
endpoints from the Kubernetes API) differ only in where the datastore's contents come from and which
servers sit in front; this module is the one place where the request path is assembled, so the two
cannot drift apart.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from infergate.config.picker import EndpointPickerConfig
from infergate.config.picker_sections import apply_sections, passthrough_paths
from infergate.config.picker_units import parse_go_duration
from infergate.config.settings import Settings
from infergate.datastore.store import Datastore
from infergate.errors import ConfigError
from infergate.flowcontrol import FlowController
from infergate.requestcontrol.burst import BurstWindow
from infergate.requestcontrol.director import Director
from infergate.scheduling.engine.decisions import DecisionLog
from infergate.scheduling.engine.scheduler import Scheduler, build_scheduler
from infergate.scheduling.plugins.burst_prefix import BurstPrefixProducer
from infergate.scheduling.plugins.precise_prefix import TokenProducerParams
from infergate.scheduling.plugins.registry import (
    CoreMetricsExtractorParams,
    DcgmDataSourceParams,
    EngineConfigParams,
    MetricsDataSourceParams,
)
from infergate.sources.dcgm import DcgmPoller, DcgmSource
from infergate.sources.dialects import Dialect, engine_dialect, get_dialect
from infergate.sources.scraper import MetricsScraper, MetricsSource
from infergate.sources.token_producer import RenderTokenProducer
from infergate.telemetry import GatewayMetrics
from infergate.types import Clock, PoolSpec

from .pool_slo import reconcile_slo

__all__ = ["PickerCore", "build_core", "dcgm_source", "start_plugin_tasks"]


@dataclass(frozen=True, slots=True)
class PickerCore:
    """The request path's components; the caller owns their lifecycle (scraper task, flow close)."""

    scheduler: Scheduler
    flow: FlowController
    director: Director
    scraper: MetricsScraper
    tokens: RenderTokenProducer | None
    decisions: DecisionLog
    burst: BurstWindow | None = None


def build_core(
    datastore: Datastore,
    pool: PoolSpec,
    *,
    picker: EndpointPickerConfig,
    settings: Settings,
    metrics: GatewayMetrics,
    clock: Clock,
    rng: random.Random,
    honor_subset_hint: bool = True,
    connection_limit: int | None = None,
    objective_max_tokens: Mapping[str, int] | None = None,
) -> PickerCore:
    """Wire the core for ``pool``: the scraper speaks the pool's model-server dialect and health path.

    ``honor_subset_hint`` is for data planes that set ``x-gateway-destination-endpoint-subset``
    themselves (Envoy via ext_proc metadata); the built-in proxy turns it off so a client can never
    narrow the candidates by sending the header. ``connection_limit`` is the data plane's upstream
    connections per endpoint when requests beyond it wait inside the gateway (the built-in proxy);
    ``None`` when they reach the model server's own queue (Envoy), so they are not counted twice.
    """
    # flowControl / saturationDetector / featureGates of the config refine the settings; the
    # predicted-latency scorer and the decode guard then share one SLO.
    picker, s = reconcile_slo(picker, apply_sections(picker, settings))
    decisions = DecisionLog()
    scheduler = build_scheduler(picker, metrics=metrics, rng=rng, clock=clock, decision_log=decisions)
    # endpoint departure reaches every plugin that keeps per-endpoint state
    datastore.add_departure_listener(scheduler.forget_endpoint)
    flow = FlowController.from_settings(
        datastore, s, pool_name=pool.name, connection_limit=connection_limit, clock=clock, metrics=metrics
    )
    director = Director.from_settings(
        s,
        datastore=datastore,
        scheduler=scheduler,
        flow=flow,
        clock=clock,
        metrics=metrics,
        rng=rng,
        honor_subset_hint=honor_subset_hint,
        objective_max_tokens=objective_max_tokens,
    )
    director.configure_parsers(passthrough=passthrough_paths(picker))
    director.set_inflight_producer(
        next((p.ref for p in picker.plugins if p.type == "inflight-load-producer"), None)
    )
    tokens = token_producer(picker)
    director.set_token_producer(tokens)
    # the burst producer's window, held by this process's Director (each worker batches its own
    # and counts its overflows on its own registry, which the gateway process sums)
    burst = next(
        (BurstWindow(p, metrics=metrics) for p in scheduler.plugins() if isinstance(p, BurstPrefixProducer)),
        None,
    )
    director.set_burst_stage(burst)
    dcgm = dcgm_source(picker)
    pollers = []
    if dcgm is not None:
        pollers.append(
            DcgmPoller(
                datastore,
                dcgm,
                base_interval=s.scrape.interval,
                timeout=s.scrape.timeout,
                max_backoff=s.scrape.backoff_max,
                metrics=metrics,
                clock=clock,
            )
        )
    scraper = MetricsScraper.from_settings(
        datastore, s, pool=pool, metrics=metrics, clock=clock, source=metrics_source(picker), pollers=pollers
    )
    return PickerCore(
        scheduler=scheduler,
        flow=flow,
        director=director,
        scraper=scraper,
        tokens=tokens,
        decisions=decisions,
        burst=burst,
    )


def metrics_source(picker: EndpointPickerConfig) -> MetricsSource | None:
    """Where the config's ``metrics-data-source`` scrapes (None: ``http://<endpoint>/metrics``).

    Raises:
        ConfigError: several sources (one scrape per endpoint here), or TLS files that do not load.
    """
    specs = [spec for spec in picker.plugins if spec.type == "metrics-data-source"]
    if len(specs) > 1:
        raise ConfigError(
            "plugins: several metrics-data-source plugins; infergate scrapes each endpoint once"
        )
    extractors = [spec for spec in picker.plugins if spec.type == "core-metrics-extractor"]
    if len(extractors) > 1:
        raise ConfigError("plugins: several core-metrics-extractor plugins; infergate reads each page once")
    engine: dict[str, Any] = {}
    if extractors:
        e = CoreMetricsExtractorParams.model_validate(extractors[0].parameters)
        # vllm is upstream's default too: the pool's model server type stays in force
        engine = {
            "engine_label": e.engine_label_key,
            "default_engine": None if e.default_engine == "vllm" else e.default_engine,
            "engines": tuple(_engine_dialect(c) for c in e.engine_configs),
        }
    if not specs:
        return MetricsSource(**engine) if engine else None
    p = MetricsDataSourceParams.model_validate(specs[0].parameters)
    where = f"plugins[{specs[0].ref}].parameters"
    return MetricsSource(
        path=None if p.path == "/metrics" else p.path,  # the default: the engine dialect's paths
        port=p.port,
        tls=_scrape_tls(p, where) if p.scheme == "https" else None,
        interval=parse_go_duration(p.interval) if p.interval else None,
        **engine,
    )


def dcgm_source(picker: EndpointPickerConfig) -> DcgmSource | None:
    """Where the config's ``dcgm-data-source`` polls each endpoint's DCGM Exporter (None: it has
    none; the config check refused one that ``dataLayer.sources`` does not wire to a
    ``dcgm-extractor``)."""
    spec = next((p for p in picker.plugins if p.type == "dcgm-data-source"), None)
    if spec is None:
        return None
    p = DcgmDataSourceParams.model_validate(spec.parameters)
    tls = None
    if p.scheme == "https":
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if p.insecure_skip_verify:
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
        else:
            tls.load_default_certs()
    return DcgmSource(
        path=p.path,
        port=p.port,
        tls=tls,
        use_node_address=p.use_node_address,
        interval=parse_go_duration(p.interval) if p.interval else None,
    )


def _engine_dialect(c: EngineConfigParams) -> Dialect:
    """One ``engineConfigs`` entry as the scraper's dialect (replacing a built-in of that name)."""
    try:
        builtin: Dialect | None = get_dialect(c.name)
    except ConfigError:
        builtin = None
    return engine_dialect(
        c.name,
        queued=c.queued_requests_spec,
        running=c.running_requests_spec,
        kv_usage=c.kv_usage_spec,
        lora=c.lora_spec,
        cache_info=c.cache_info_spec,
        cache_block_size_label=c.cache_block_size_label_name,
        cache_num_blocks_label=c.cache_num_blocks_label_name,
        block_size=c.cache_block_size_spec,
        num_blocks=c.cache_num_blocks_spec,
        custom=[(m.attribute_key, m.metric_spec) for m in c.custom_metrics],
        builtin=builtin,
    )


def _scrape_tls(p: MetricsDataSourceParams, where: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if p.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif p.ca_cert_path:
            ctx.load_verify_locations(cafile=p.ca_cert_path)
        else:
            ctx.load_default_certs()
        if p.client_cert_path:
            ctx.load_cert_chain(p.client_cert_path, p.client_key_path)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where}: the TLS files do not load: {exc}") from exc
    return ctx


def token_producer(picker: EndpointPickerConfig) -> RenderTokenProducer | None:
    """The config's ``token-producer`` (at most one; the config checks refused the rest), built."""
    for spec in picker.plugins:
        if spec.type == "token-producer":
            p = TokenProducerParams.model_validate(spec.parameters)
            return RenderTokenProducer(p.render.url, p.model_name, timeout=p.render.timeout_seconds)
    return None


def start_plugin_tasks(
    core: PickerCore,
    datastore: Datastore,
    spawn: Callable[[str, Callable[[], Awaitable[None]]], None],
) -> Callable[[], None]:
    """Run the plugins' background loops (KV-event subscriber; the token producer's connections,
    closed when the task is; the burst window, whose waiters are released when it is) and keep
    them told of the pool's membership; returns the function that stops the membership updates."""
    scheduler = core.scheduler
    for name, run in scheduler.background_tasks():
        spawn(name, run)
    if core.tokens is not None:
        spawn("token-producer", core.tokens.hold)
    if core.burst is not None:
        spawn("burst-prefix-cache-producer", core.burst.hold)
    seen = -1

    def on_change() -> None:
        nonlocal seen
        version = datastore.membership_version
        if version != seen:
            seen = version
            scheduler.sync_endpoints(datastore.endpoints())

    on_change()
    return datastore.add_listener(on_change, in_flight=False)
