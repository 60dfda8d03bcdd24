"""The digital twin's pool and gateway fronts: what :func:`~infergate.bench.twin.run_twin` wires.

:class:`TwinConfig` and :class:`TwinResult` are the twin's input and output; the rest are the
pieces a run is made of: the simulated replicas, one gateway front per gateway worker (datastore,
scheduler, flow control), what a scrape of a replica's ``/metrics`` reads, the true-state
strategy's pick, KV events fed to a precise prefix scorer, and the channel between workers.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from infergate.bench.loadgen import RequestRecord
from infergate.bench.stats import Slo
from infergate.bench.strategies import BASE_MODEL
from infergate.config.settings import Settings
from infergate.datastore.store import Datastore
from infergate.errors import NoCapacityError
from infergate.flowcontrol.core import FlowCore
from infergate.flowcontrol.queues import QueuedItem
from infergate.flowcontrol.settings import decode_guard_from_settings, flow_control_from_settings
from infergate.requestcontrol.core import RequestCore
from infergate.scheduling.engine.scheduler import Scheduler
from infergate.scheduling.plugins.precise_prefix import PrecisePrefixScorer
from infergate.simulator.drivers import VirtualDriver, VirtualLoop
from infergate.simulator.engine import Engine
from infergate.simulator.kvcache import KvEvent
from infergate.simulator.kvevents import encode_batch
from infergate.types import (
    Endpoint,
    EndpointMetrics,
    InferenceRequest,
    ModelRewrite,
    Objective,
    SchedulingResult,
)

__all__ = [
    "T0",
    "WORKER_CHANNEL_DELAY",
    "Front",
    "NoScheduler",
    "Replica",
    "TwinConfig",
    "TwinResult",
    "feed_kv_events",
    "flow_core",
    "metrics_of",
    "settings_for_slo",
    "share",
    "true_state_pick",
]

_Item = TypeVar("_Item")
_Sink = TypeVar("_Sink")

WORKER_CHANNEL_DELAY = 0.002
"""Seconds a prefix credit or latency record takes from one gateway worker to the others (two
local socket hops)."""

# Virtual time starts here, not at 0: a metrics snapshot stamped 0.0 means "never scraped".
T0 = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TwinConfig:
    """The simulated pool: the tutorial's by default (3 replicas, LoRA with 2 GPU slots)."""

    replicas: int = 3
    base_model: str = BASE_MODEL
    adapters: tuple[str, ...] = ("food-review", "cad-fabricator", "legal-summarizer")
    max_loras: int = 2
    max_cpu_loras: int = 12
    scrape_interval: float = 0.05
    staleness: float = 2.0
    profile: str = "llama3.1-8b-h100"
    profiles: tuple[str, ...] = ()
    """A mixed pool: replica ``i`` runs ``profiles[i % len(profiles)]`` (e.g. H100s beside
    A100s); empty: every replica runs ``profile``."""
    num_gpu_blocks: int | None = None
    seed: int = 0
    time_scale: float = 1.0
    """Multiplies every engine step and the frontend overhead, like ``infergate simulate
    --time-scale``: the twin of a matrix run with slowed replicas must be slowed the same way."""
    client_latency: float = 0.0
    """Seconds the real request path adds to what the client sees of every answer, beyond the
    modelled frontend overhead (client and gateway HTTP, proxying, the model server's own HTTP and
    tokenisation, each in real CPU time). Added to TTFT and e2e; 0 models a free network. Measure it
    at idle load (``bench/bench_twin_agreement.py --calibrate``), never from the run compared."""
    objectives: tuple[Objective, ...] = ()
    """InferenceObjectives of the pool: requests naming one get its priority, as in production."""
    rewrites: tuple[ModelRewrite, ...] = ()
    """InferenceModelRewrites of the pool, applied by the request-control core as in production."""
    scale: tuple[tuple[float, int], ...] = ()
    """Replicas joining (> 0) or leaving (< 0) during the run: (seconds after the first arrival,
    count), in order; ``replicas`` is the count at the start. A joining replica is a fresh server
    the gateway learns of then (as its pod watch adds a pod once Ready) and scrapes from the next
    scrape on; a
    leaving one, the last to have joined, leaves the gateway's view (a pod being deleted) and
    finishes what it runs."""
    slow: tuple[tuple[float, int, float], ...] = ()
    """Replicas whose GPUs slow down or recover during the run: (seconds after the first arrival,
    replica index in order of starting and joining, factor on its engine steps from then on, 1
    the profile's pace). The gateway is not told; its API frontend keeps its pace."""
    roles: tuple[str, ...] = ()
    """P/D: each replica's ``llm-d.ai/role`` label (``prefill``, ``decode``, ``both``), in replica
    order; empty: no labels. A request the scheduler disaggregates (``x-prefiller-host-port``) runs
    its prefill (``max_tokens`` 1, KV kept for the decoder) on the named replica, then its decode on
    the picked one, which pulls the prompt's full blocks (the engine models the transfer time)."""
    flow_control: bool = False
    """Run the gateway's flow control (saturation detector, queues, route-to-room) with
    ``Settings`` defaults, as ``infergate serve`` does unless ``--no-flow-control``, for
    strategies whose name does not say (``default`` and ``+fc`` always run it, ``+nofc`` never)."""
    gateway_workers: int = 1
    """Gateway worker processes (``proxy.workers``): that many independent schedulers, each with
    its own datastore (in-flight counts, which its flow control counts), flow control and plugin
    state (the prefix index, the predicted-latency scorer), all fed the same scrapes; what the
    ``share_*`` fields below name reaches the other workers ``WORKER_CHANNEL_DELAY`` later;
    arrivals go to them in turn (connections spread over the workers)."""
    share_prefix: bool = True
    """With several gateway workers, each prefix index also learns the others' picks after
    ``WORKER_CHANNEL_DELAY`` (what ``proxy.workers`` does); False: every index learns alone."""
    share_latency: bool = True
    """With several gateway workers, each predicted-latency scorer also accounts the others' picks
    (backlog, frontend work, prefill rate) after ``WORKER_CHANNEL_DELAY``, as ``proxy.workers``
    does; False: each scorer counts its own picks only."""
    share_ttft: bool = True
    """With ``share_latency``, each scorer's online TTFT and TPOT corrections also learn what the
    other workers observed (after ``WORKER_CHANNEL_DELAY``), as ``proxy.workers`` does; False: each
    worker corrects from its own requests' answers only."""
    share_in_flight: bool = True
    """With several gateway workers, each worker's scheduler also counts the other workers'
    in-flight requests, each count as it was ``WORKER_CHANNEL_DELAY`` earlier, as ``proxy.workers``
    does; flow control counts the worker's own only. False: the scheduler counts its own only."""
    settings: Settings | None = None
    """The gateway settings whose ``flow_control`` group the twin's flow control follows; None:
    the defaults, as ``infergate serve`` runs."""


@dataclass(slots=True)
class TwinResult:
    records: list[RequestRecord]
    per_endpoint_requests: dict[str, int]
    prefix_hit_rate: float | None
    lora_swaps: int = 0
    gateway_queued: int = 0  # requests that waited in the gateway's flow-control queues
    load_series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    stopped_at: float | None = None  # virtual seconds from the start when a monitor stopped the run
    flow_control: bool = False  # whether the gateway's flow control ran
    disaggregated: int = 0  # requests prefilled on another replica (P/D)


class Replica:
    def __init__(self, index: int, engine: Engine, driver: VirtualDriver) -> None:
        self.index = index
        self.key = f"10.0.0.{index + 1}:8000"
        self.engine = engine
        self.driver = driver
        self.requests = 0


def settings_for_slo(slo: Slo, base: Settings | None = None) -> Settings | None:
    """``base`` (default: the defaults) with the gateway told ``slo`` (:meth:`Slo.gateway_settings`);
    ``base`` itself when ``slo`` is the default SLO, so default runs build nothing new."""
    default = Slo()
    if (slo.ttft_s, slo.tpot_s) == (default.ttft_s, default.tpot_s):
        return base
    return (base or Settings()).replace(slo.gateway_settings())


def flow_core(datastore: Datastore, settings: Settings | None) -> FlowCore:
    """The gateway's flow control as ``settings`` (default: the defaults) configure it (see
    ``infergate.app.core``)."""
    # no connection pool in the twin: requests reach the engine's queue
    chosen = settings if settings is not None else Settings()
    detector, config = flow_control_from_settings(chosen, pool_name="twin", connection_limit=None)
    return FlowCore(datastore, detector=detector, config=config, guard=decode_guard_from_settings(chosen))


@dataclass(slots=True, eq=False)
class Front:
    """One gateway worker: what it keeps for itself; the scrapes are every worker's."""

    datastore: Datastore
    scheduler: Scheduler | None
    core: RequestCore
    flow: FlowCore | None
    waiting: dict[QueuedItem, tuple[int, InferenceRequest, list[int], str | None]] = field(
        default_factory=dict
    )
    cycle_pending: bool = False
    timer_at: float | None = None


class NoScheduler:
    """Stands in for the scheduler when the strategy picks from true engine state instead."""

    def schedule(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> SchedulingResult:
        raise NoCapacityError("the true-state strategy does not use the scheduler")

    def observe_ttft(self, request_id: str, ttft_seconds: float | None) -> None:
        return None

    def observe_tpot(self, request_id: str, tpot_seconds: float | None) -> None:
        return None

    def observe_answer(self, request_id: str, seconds: float | None, output_tokens: int | None) -> None:
        return None


def metrics_of(engine: Engine, now: float) -> EndpointMetrics:
    """What the gateway's scraper would read from this engine's ``/metrics`` at ``now``."""
    s = engine.stats()
    return EndpointMetrics(
        waiting_queue_size=s.num_waiting,
        running_requests=s.num_running,
        kv_cache_usage=s.kv_cache_usage,
        running_adapters=frozenset(s.running_loras),
        waiting_adapters=frozenset(s.waiting_loras),
        max_active_adapters=s.max_loras,
        block_size=s.block_size,
        num_gpu_blocks=s.num_gpu_blocks,
        finished_requests=float(sum(s.request_success_total.values())),
        updated_at=now,
    )


def true_state_pick(replicas: Sequence[Replica], tokens: list[int], lora: str | None) -> Replica:
    """Lowest estimated TTFT from true engine state: uncached prompt tokens plus the queue ahead,
    with a penalty for an adapter that would have to wait for a free slot."""

    def cost(r: Replica) -> tuple[float, int]:
        s = r.engine.stats()
        uncached = len(tokens) - r.engine.prefix_cache_contains(tokens, lora)
        queue = s.num_waiting * 512 + s.num_running * 8
        lora_wait = 0.0
        if lora is not None and lora not in s.running_loras and len(set(s.running_loras)) >= s.max_loras:
            lora_wait = 4096.0
        return (uncached + queue + lora_wait, r.requests)

    return min(replicas, key=cost)


def feed_kv_events(scheduler: Scheduler, replicas: Sequence[Replica], model: str) -> None:
    """Every ``precise-prefix-cache-scorer`` receives each engine's KV events of each step, in
    vLLM's wire form and with the topic a pod would use, at the step's virtual time (after the
    engine's earlier sinks: each gateway worker's scorer gets them)."""
    scorers = [p for p in scheduler.plugins() if isinstance(p, PrecisePrefixScorer)]
    for scorer in scorers:
        for r in replicas:
            topic = f"kv@{r.key}@{model}".encode()
            seq = itertools.count()
            previous = r.engine.kv_event_sink

            def sink(
                events: list[KvEvent],
                topic: bytes = topic,
                seq: Iterator[int] = seq,
                s: PrecisePrefixScorer = scorer,
                previous: Callable[[list[KvEvent]], None] | None = previous,
            ) -> None:
                if previous is not None:
                    previous(events)
                payload = encode_batch(events, ts=0.0)
                s.subscriber.handle([topic, struct.pack(">Q", next(seq)), payload], None)

            r.engine.set_kv_event_sink(sink)


def share(
    fronts: Sequence[Front],
    loop: VirtualLoop,
    attach: Callable[[Scheduler, Callable[[_Item], None]], Sequence[_Sink]],
    apply: Callable[[_Sink, _Item], None],
) -> None:
    """What each worker's picks publish (``attach`` wires a scheduler's plugins to a publisher and
    returns them) reaches the other workers' plugins ``WORKER_CHANNEL_DELAY`` later (``apply``)."""
    sinks: list[Sequence[_Sink]] = []

    def publisher(n: int) -> Callable[[_Item], None]:
        def publish(item: _Item) -> None:
            def deliver() -> None:
                for m, theirs in enumerate(sinks):
                    if m != n:
                        for sink in theirs:
                            apply(sink, item)

            loop.call_at(loop.now() + WORKER_CHANNEL_DELAY, deliver)

        return publish

    for n, f in enumerate(fronts):
        assert f.scheduler is not None
        sinks.append(attach(f.scheduler, publisher(n)))
