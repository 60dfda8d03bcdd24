"""The picker's core, built once for every way infergate runs: scheduler, flow control, Director
and metrics scraper over one Datastore.

``Gateway`` (``serve``/``up``, endpoints from manifest files) and ``EndpointPicker`` (``epp``,
endpoints from the Kubernetes API) differ only in where the datastore's contents come from and which
servers sit in front; this module is the one place where the request path is assembled, so the two
cannot drift apart.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from infergate.config.picker import EndpointPickerConfig
from infergate.config.picker_sections import apply_sections
from infergate.config.settings import GatewaySettings
from infergate.datastore.store import Datastore
from infergate.flowcontrol import FlowController
from infergate.flowcontrol.settings import flow_control_from_settings
from infergate.requestcontrol.access import RequestLimits
from infergate.requestcontrol.director import Director
from infergate.scheduling.decisions import DecisionLog
from infergate.scheduling.scheduler import Scheduler, build_scheduler
from infergate.sources.scraper import MetricsScraper
from infergate.telemetry import GatewayMetrics
from infergate.types import Clock, PoolSpec

__all__ = ["PickerCore", "build_core", "start_plugin_tasks"]


@dataclass(frozen=True, slots=True)
class PickerCore:
    """The request path's components; the caller owns their lifecycle (scraper task, flow close)."""

    scheduler: Scheduler
    flow: FlowController
    director: Director
    scraper: MetricsScraper
    decisions: DecisionLog


def build_core(
    datastore: Datastore,
    pool: PoolSpec,
    *,
    picker: EndpointPickerConfig,
    settings: GatewaySettings,
    metrics: GatewayMetrics,
    clock: Clock,
    rng: random.Random,
    flow_control: bool = True,
    honor_subset_hint: bool = True,
    connection_limit: int | None = None,
) -> PickerCore:
    """Wire the core for ``pool``: the scraper speaks the pool's model-server dialect and health path.

    ``honor_subset_hint`` is for data planes that set ``x-gateway-destination-endpoint-subset``
    themselves (Envoy via ext_proc metadata); the built-in proxy turns it off so a client can never
    narrow the candidates by sending the header. ``connection_limit`` is the data plane's upstream
    connections per endpoint when requests beyond it wait inside the gateway (the built-in proxy);
    ``None`` when they reach the model server's own queue (Envoy), so they are not counted twice.
    """
    # flowControl / saturationDetector / featureGates of the config refine the settings.
    s, flow_control = apply_sections(picker, settings, flow_control=flow_control)
    decisions = DecisionLog()
    scheduler = build_scheduler(picker, metrics=metrics, rng=rng, clock=clock, decision_log=decisions)
    detector, flow_config = flow_control_from_settings(
        s, pool_name=pool.name, enabled=flow_control, connection_limit=connection_limit
    )
    flow = FlowController(
        datastore,
        detector=detector,
        clock=clock,
        config=flow_config,
        metrics=metrics,
    )
    director = Director(
        datastore=datastore,
        scheduler=scheduler,
        flow=flow,
        clock=clock,
        metrics=metrics,
        rng=rng,
        max_attempts=1 + s.retries,
        honor_subset_hint=honor_subset_hint,
    )
    # Limits from settings apply in every mode; `Gateway` adds per-objective annotations and keys.
    director.configure_access(
        limits=RequestLimits(
            max_messages=s.max_messages,
            max_tokens=s.max_tokens_ceiling,
            objective_max_tokens=dict(s.objective_max_tokens),
        ),
        control_headers=s.control_headers,
    )
    scraper = MetricsScraper(
        datastore,
        interval=s.scrape_interval,
        dialect=pool.model_server_type,
        health_path=pool.health_path,
        health_interval=s.health_interval,
        health_timeout=s.health_timeout,
        evict_after=s.evict_after_failed_probes,
        clock=clock,
        metrics=metrics,
        max_backoff=s.scrape_backoff_max,
        pool_metrics_interval=s.pool_metrics_interval,
    )
    return PickerCore(scheduler=scheduler, flow=flow, director=director, scraper=scraper, decisions=decisions)


def start_plugin_tasks(
    scheduler: Scheduler,
    datastore: Datastore,
    spawn: Callable[[str, Callable[[], Awaitable[None]]], None],
) -> Callable[[], None]:
    """Run the plugins' background loops (KV-event subscriber) and keep them told of the pool's
    membership; returns the function that stops the membership updates."""
    for name, run in scheduler.background_tasks():
        spawn(name, run)
    seen = -1

    def on_change() -> None:
        nonlocal seen
        version = datastore.membership_version
        if version != seen:
            seen = version
            scheduler.sync_endpoints(datastore.endpoints())

    on_change()
    return datastore.add_listener(on_change)
