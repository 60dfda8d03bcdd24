"""The digital twin: the real scheduler against simulated engines, in virtual time.

One :class:`~infergate.simulator.drivers.VirtualLoop` drives everything: request arrivals, engine
steps and metric "scrapes". At each scrape the gateway's datastore receives what a real scrape of
the replica's ``/metrics`` would have said (queue, running, KV use, adapters), taken at that instant
and then left to go stale until the next one; the scheduler decides from those snapshots and from
the in-flight counts the gateway keeps itself, exactly as in production. Nothing sleeps, so a sweep
of thousands of requests runs in seconds and is exactly reproducible for a seed.

Requests take the gateway's own path: :class:`~infergate.requestcontrol.core.RequestCore` parses
them, applies model rewrites, resolves their objective and priority, narrows the candidates to the
replicas serving the target model (and, with flow control, to those with room) and runs the scheduler,
exactly as the director does for the built-in proxy and the ext_proc picker; nothing is copied here.

This module is the one place where gateway code and simulator code meet in one process: the
gateway never imports the simulator, and the simulator never imports the gateway.

The gateway's flow control (``FlowCore``: the saturation detector, priority queues with TTL,
route-to-room) runs for the ``default`` strategy and any ``+fc`` one (see
:mod:`infergate.bench.strategies`), or for every strategy with ``TwinConfig(flow_control=True)``,
dispatching on datastore changes as the gateway's controller does. The pool's InferenceObjectives
(``TwinConfig.objectives``) are in the twin's datastore, as the gateway's would be.
``time_scale`` slows the engines like ``infergate simulate
--time-scale``, so the twin can stand beside a matrix run with slowed replicas.

The ``greedy-true-state`` strategy reads each engine's true queue and true prefix cache at the
moment of decision and sends the request where its estimated time to first token is lowest. It is
greedy with information no real picker has, not an upper bound: the picker can beat it.

A ``monitor`` lets a caller stop a run early (steady-state runs stop once every measured request
has finished, or once the SLO verdict can no longer change; see :mod:`infergate.bench.steady`).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import replace

from infergate.app.pool_slo import reconcile_slo
from infergate.app.workers.affinity import (
    SharedPrefixIndex,
    share_latency_accounting,
    share_prefix_credits,
)
from infergate.bench.loadgen import RequestRecord
from infergate.bench.strategies import picker_config, resolve_strategy
from infergate.bench.twin_pool import (
    T0,
    WORKER_CHANNEL_DELAY,
    Front,
    NoScheduler,
    Replica,
    TwinConfig,
    TwinResult,
    feed_kv_events,
    flow_core,
    metrics_of,
    share,
    true_state_pick,
)
from infergate.bench.workloads import BenchRequest
from infergate.config.picker import EndpointPickerConfig
from infergate.config.settings import Settings
from infergate.datastore.store import Datastore
from infergate.errors import RequestError
from infergate.flowcontrol.core import Decision
from infergate.flowcontrol.queues import ItemState
from infergate.requestcontrol.core import RequestCore
from infergate.requestcontrol.usage import TPOT_REPORT_TOKENS
from infergate.scheduling.engine.scheduler import Scheduler, build_scheduler
from infergate.scheduling.plugins.disagg import PREFILLER_HEADER, ROLE_LABEL
from infergate.scheduling.plugins.latency import (
    AccountingRecord,
    PredictedLatencyScorer,
    TpotRecord,
    TtftRecord,
)
from infergate.simulator.drivers import VirtualDriver, VirtualLoop, profile_frontend
from infergate.simulator.engine import Engine, EngineConfig, EngineRequest, RequestOutput, TimedOutput
from infergate.simulator.scaled import ScaledEngine, make_engine
from infergate.tokenization.builtin import Tokenizer
from infergate.tokenization.requests import chat_token_ids, completion_token_ids
from infergate.types import (
    Endpoint,
    EndpointMeta,
    InferenceRequest,
    PoolSpec,
)

__all__ = ["TwinConfig", "TwinResult", "run_twin"]


def run_twin(
    requests: Sequence[BenchRequest],
    offsets: Sequence[float] | None,
    *,
    strategy: str,
    concurrency: int | None = None,
    ramp: float = 0.0,
    config: TwinConfig | None = None,
    sample_interval: float = 1.0,
    picker: EndpointPickerConfig | None = None,
    monitor: Callable[[float, Sequence[RequestRecord]], bool] | None = None,
    monitor_interval: float = 1.0,
    phases: Sequence[tuple[float, int]] = (),
) -> TwinResult:
    """Replay ``requests`` arriving at ``offsets`` (seconds) through ``strategy`` on a virtual pool.

    With ``concurrency`` instead of ``offsets`` the clients are a closed loop, as ``infergate bench
    --url --concurrency`` sends them: ``concurrency`` requests at the start, then the next in order
    whenever one ends (served or refused); a record's ``sent_at`` is when its client sent it
    (infinite for one no client took before a ``monitor`` stopped the run). ``ramp`` spreads the
    clients' first requests evenly over that many seconds instead of sending them all at once.
    ``picker`` replaces the strategy's scheduler configuration (weight sweeps use it). ``monitor``
    is called every ``monitor_interval`` virtual seconds with the time since the start and the
    records so far; the run stops (unfinished requests keep status 0) when it returns True.
    ``phases`` (closed loop only): ``(seconds from the start, first index)`` of each later part of
    ``requests``; a client free at a time takes the next request of the part begun by then
    (:attr:`~infergate.bench.workloads.WorkloadSpec.phases`), and a part's requests no client took
    before the next part began stay unsent.
    """
    if (offsets is None) == (concurrency is None):
        raise ValueError("run_twin: give offsets (open loop) or concurrency (closed loop), not both")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"run_twin: concurrency must be at least 1 (got {concurrency})")
    if phases and concurrency is None:
        raise ValueError("run_twin: phases place a closed loop's requests; offsets place an open loop's")
    cfg = config or TwinConfig()
    named = resolve_strategy(strategy)
    use_flow_control = cfg.flow_control if named.flow_control is None else named.flow_control
    loop = VirtualLoop()
    tokenizer = Tokenizer(reverse=False)  # the twin never decodes
    engine_cfg = EngineConfig(
        model=cfg.base_model,
        enable_lora=bool(cfg.adapters),
        max_loras=cfg.max_loras,
        max_cpu_loras=cfg.max_cpu_loras,
        profile=cfg.profile,
        num_gpu_blocks=cfg.num_gpu_blocks,
        seed=cfg.seed,
    )
    sizes = list(itertools.accumulate((n for _, n in cfg.scale), initial=cfg.replicas))
    if min(sizes) < 1:
        raise ValueError(
            f"run_twin: scale events {cfg.scale} take the pool of {cfg.replicas} below one replica"
        )
    replicas: list[Replica] = []
    for i in range(cfg.replicas + sum(n for _, n in cfg.scale if n > 0)):
        if cfg.profiles:
            engine_cfg = replace(engine_cfg, profile=cfg.profiles[i % len(cfg.profiles)])
        # an engine that slows down during the run is scaled from the start
        engine = (
            ScaledEngine(engine_cfg, cfg.time_scale) if cfg.slow else make_engine(engine_cfg, cfg.time_scale)
        )
        for name in cfg.adapters:
            engine.add_lora(name, f"/adapters/{name}")
        overhead = engine.profile.api_overhead_ms / 1000.0 * cfg.time_scale
        driver = VirtualDriver(engine, loop, api_overhead=overhead, sparse=True, **profile_frontend(engine))
        replicas.append(Replica(i, engine, driver))
    by_key = {r.key: r for r in replicas}
    for _, index, _ in cfg.slow:
        if index >= len(replicas):
            raise ValueError(
                f"run_twin: slow event for replica {index} of {len(replicas)} (joiners included)"
            )
    if cfg.roles and len(cfg.roles) < len(replicas):
        raise ValueError(
            f"run_twin: {len(cfg.roles)} roles for {len(replicas)} replicas (scale events included)"
        )
    # the replicas in the gateway's view now, in order of joining; ``fresh`` those yet to join
    active = replicas[: cfg.replicas]
    fresh = iter(replicas[cfg.replicas :])

    served = frozenset((cfg.base_model, *cfg.adapters))

    def join(datastore: Datastore, r: Replica) -> None:
        host, port = r.key.split(":")
        labels = {ROLE_LABEL: cfg.roles[r.index]} if cfg.roles else {}
        datastore.upsert_endpoint(
            EndpointMeta(name=f"replica-{r.key}", address=host, port=int(port), labels=labels)
        )
        datastore.set_models(r.key, served)  # what each replica's /v1/models lists

    def front(n: int) -> Front:
        datastore = Datastore(clock=loop, staleness=cfg.staleness)
        datastore.set_pool(PoolSpec(name="twin", selector={"app": "twin"}))
        for r in active:
            join(datastore, r)
        for objective in cfg.objectives:
            datastore.upsert_objective(objective)
        for rewrite in cfg.rewrites:
            datastore.upsert_rewrite(rewrite)
        scheduler: Scheduler | None = None
        settings = cfg.settings
        if not named.greedy:
            # one SLO for the scorer and the decode guard, as the gateway's build_core reconciles them
            chosen, settings = reconcile_slo(picker or picker_config(named.base), settings or Settings())
            scheduler = build_scheduler(chosen, rng=random.Random(cfg.seed + n), clock=loop)
        # greedy-true-state picks by itself; the core still resolves its requests (its scheduler is never run)
        core = RequestCore(
            datastore=datastore,
            scheduler=scheduler if scheduler is not None else NoScheduler(),
            rng=random.Random(cfg.seed + n),
        )
        flow = flow_core(datastore, settings) if use_flow_control and scheduler is not None else None
        return Front(datastore, scheduler, core, flow)

    fronts = [front(n) for n in range(max(1, cfg.gateway_workers))]
    for f in fronts:
        if f.scheduler is not None:
            feed_kv_events(f.scheduler, replicas, cfg.base_model)
    if len(fronts) > 1 and cfg.share_prefix:
        share(fronts, loop, share_prefix_credits, SharedPrefixIndex.add_remote)
    if len(fronts) > 1 and cfg.share_latency:

        def apply_latency(scorer: PredictedLatencyScorer, record: AccountingRecord) -> None:
            if cfg.share_ttft or not isinstance(record, TtftRecord | TpotRecord):
                scorer.apply_accounting(record)

        share(fronts, loop, share_latency_accounting, apply_latency)
    worker_of = {id(f): n for n, f in enumerate(fronts)}

    def counted(f: Front, key: str) -> None:
        """``f`` acquired or released on ``key``: the other workers' schedulers learn its count."""
        if len(fronts) < 2 or not cfg.share_in_flight:
            return
        ep = f.datastore.endpoint(key)
        count, started = (0, 0) if ep is None else (ep.in_flight, ep.in_flight_started)
        for g in fronts:
            if g is not f:
                peer = worker_of[id(f)]
                deliver = functools.partial(g.datastore.set_peer_in_flight, peer, key, count, started)
                loop.call_at(loop.now() + WORKER_CHANNEL_DELAY, deliver)

    def acquire(f: Front, key: str) -> None:
        f.datastore.acquire(key)
        counted(f, key)

    def release(f: Front, key: str, *, started: bool = False) -> None:
        f.datastore.release(key, started=started)
        counted(f, key)

    # closed loop: set when a client sends it; a request no client took stays at infinity
    sent_at = list(offsets) if offsets is not None else [math.inf] * len(requests)
    records: list[RequestRecord] = [
        RequestRecord(index=r.index, model=r.model, group=r.group, sent_at=off)
        for r, off in zip(requests, sent_at, strict=True)
    ]
    pending = len(requests)
    load_series: dict[str, list[tuple[float, float]]] = {r.key: [] for r in replicas}

    def resize(change: int) -> None:
        # joining: fresh servers the gateway learns of now; leaving: the last to join go from
        # its view first and finish what they run
        for _ in range(change):
            r = next(fresh)
            active.append(r)
            for f in fronts:
                join(f.datastore, r)
        for _ in range(-change):
            r = active.pop()
            for f in fronts:
                f.datastore.remove_endpoint(r.key)

    def slow_down(engine: Engine, time_scale: float) -> None:
        assert isinstance(engine, ScaledEngine)
        engine.time_scale = time_scale  # from its next step on

    def scrape() -> None:
        now = loop.now()
        for r in active:
            metrics = metrics_of(r.engine, now)
            for f in fronts:
                f.datastore.update_metrics(r.key, metrics)
        if pending:
            loop.call_at(now + cfg.scrape_interval, scrape)

    def sample() -> None:
        now = loop.now()
        for r in replicas:
            s = r.engine.stats()
            load_series[r.key].append((now - T0, float(s.num_running + s.num_waiting)))
        if pending:
            loop.call_at(now + sample_interval, sample)

    queued = 0

    def finish_unserved(i: int, status: int, error: str) -> None:
        nonlocal pending
        rec = records[i]
        rec.status, rec.error, rec.e2e = status, error, loop.now() - T0 - rec.sent_at
        pending -= 1
        answered(i)

    # a session's next turn waits for this answer (BenchRequest.after): index -> the turn waiting
    held: dict[int, int] = {}

    def answered(i: int) -> None:
        nxt = held.pop(i, None)
        if nxt is not None:  # sent now, and timed from now, as its client sends it; from the loop,
            # not from inside the engine's or flow control's callback that ended this one
            records[nxt].sent_at = loop.now() - T0
            loop.call_at(loop.now(), functools.partial(arrive, nxt))
        if concurrency is not None:  # a closed loop's client is free: it sends its next request
            loop.call_at(loop.now(), send_next)

    # closed loop: the requests no client has taken yet, one iterator per part (phase)
    starts = [T0 + at for at, _ in phases]
    bounds = [0, *(first for _, first in phases), len(requests)]
    unsent = [iter(range(a, b)) for a, b in itertools.pairwise(bounds)]

    def send_next() -> None:
        i = next(unsent[bisect.bisect_right(starts, loop.now())], None)
        if i is not None:
            records[i].sent_at = loop.now() - T0
            due(i)  # a turn whose previous answer has not ended waits for it, holding its client

    def due(i: int) -> None:
        after = requests[i].after
        if after is not None and records[after].e2e is None:
            held[after] = i
        else:
            arrive(i)

    def kick(f: Front) -> None:
        # the gateway's dispatcher: a cycle soon after any datastore change while requests wait
        if f.flow is not None and len(f.flow) and not f.cycle_pending:
            f.cycle_pending = True
            loop.call_at(loop.now(), functools.partial(cycle, f))

    def on_timer(f: Front) -> None:
        f.timer_at = None
        kick(f)

    def cycle(f: Front) -> None:
        # release at most one request; its acquire() is a datastore change that kicks the next cycle
        f.cycle_pending = False
        flow = f.flow
        assert flow is not None
        now = loop.now()
        for expired in flow.expire(now):
            # as the gateway answers: 429 when the pool had endpoints but no room came, else 503
            ttl = expired.state is ItemState.EVICTED_TTL
            finish_unserved(f.waiting.pop(expired)[0], 429 if ttl else 503, "request timed out in the queue")
        released = flow.pop_ready(now)
        if released is not None:
            dispatch(f, *f.waiting.pop(released), released=True)
        if len(flow) and f.timer_at is None:  # the controller's recheck / TTL timer
            deadline = flow.next_wake(now)
            f.timer_at = now + flow.config.recheck_interval
            if deadline is not None:
                f.timer_at = min(f.timer_at, deadline)
            loop.call_at(f.timer_at, functools.partial(on_timer, f))

    for f in fronts:
        if f.flow is not None:
            f.datastore.add_listener(functools.partial(kick, f))

    def arrive(i: int) -> None:
        # the gateway's own request path: parse, rewrite, served model, objective and priority
        nonlocal queued
        req = requests[i]
        f = fronts[i % len(fronts)]  # connections spread over the gateway's workers
        body = req.body()
        raw = json.dumps(body).encode()
        try:
            resolved = f.core.resolve(
                path=req.path, headers=req.headers, body=raw, request_id=f"twin-{i}", now=loop.now()
            )
        except RequestError as exc:
            finish_unserved(i, exc.status, exc.message)
            return
        ireq = resolved.request
        target = ireq.target_model
        lora = None if target == cfg.base_model else target
        # the ids a model server computes for the body (chat template; BOS first on a completion)
        tokens = (
            chat_token_ids(tokenizer, body)
            if req.messages is not None
            else completion_token_ids(tokenizer, body)[0]
        )
        if f.flow is None:
            dispatch(f, i, ireq, tokens, lora)
            return
        offer = f.flow.offer(ireq, loop.now())
        if offer.decision is Decision.ADMIT:
            dispatch(f, i, ireq, tokens, lora)
        elif offer.item is not None:
            queued += 1
            f.waiting[offer.item] = (i, ireq, tokens, lora)
            kick(f)
        else:
            finish_unserved(i, 429, f"flow control: {offer.decision}")

    first_seen: set[int] = set()
    disaggregated = 0
    programs: dict[int, InferenceRequest] = {}  # dispatched under program-aware fairness

    def dispatch(
        f: Front,
        i: int,
        ireq: InferenceRequest,
        tokens: list[int],
        lora: str | None,
        *,
        released: bool = False,
    ) -> None:
        flow = f.flow

        def room(candidates: Sequence[Endpoint]) -> list[Endpoint]:
            assert flow is not None
            return flow.with_room(candidates, loop.now())

        if f.scheduler is None:
            replica = true_state_pick(active, tokens, lora)
        else:
            try:
                # as the director: a request released from the queues goes only where there is room
                result = f.core.schedule(ireq, room=room if released else None)
            except RequestError as exc:
                finish_unserved(i, exc.status, exc.message)
                return
            replica = by_key[result.primary.key]
            if flow is not None and flow.config.fairness == "program-aware":  # as the director
                flow.program_dispatched(ireq, loop.now() - T0 - records[i].sent_at, loop.now())
                programs[i] = ireq
            prefiller = result.request_headers.get(PREFILLER_HEADER)
            if prefiller is not None:
                remote_prefill(f, i, tokens, lora, by_key[prefiller], replica)
                return
        replica.requests += 1
        acquire(f, replica.key)
        submit(f, i, replica, tokens, lora, 0)

    def remote_prefill(
        f: Front, i: int, tokens: list[int], lora: str | None, prefill: Replica, decode: Replica
    ) -> None:
        # the decode pod's sidecar: prefill on the named replica (max_tokens 1, KV kept), then decode
        nonlocal disaggregated
        disaggregated += 1
        prefill.requests += 1
        acquire(f, prefill.key)

        def done(out: RequestOutput) -> None:
            if not out.finished:
                return
            release(f, prefill.key)
            decode.requests += 1
            acquire(f, decode.key)
            full = len(tokens) // engine_cfg.block_size * engine_cfg.block_size
            submit(f, i, decode, tokens, lora, full)

        prefill.driver.submit(
            EngineRequest(
                request_id=f"twin-{i}-prefill",
                prompt_token_ids=tokens,
                max_tokens=1,
                ignore_eos=True,
                lora_name=lora,
                remote_decode=True,
            ),
            done,
        )

    def observe_tpot(f: Front, i: int, seconds: float) -> None:
        # what the data plane reports of a stream: to the scheduler, and to flow control's guard
        f.core.observe_tpot(f"twin-{i}", seconds)
        if f.flow is not None:
            f.flow.observe_tpot(seconds, loop.now())

    def submit(f: Front, i: int, replica: Replica, tokens: list[int], lora: str | None, remote: int) -> None:
        req = requests[i]
        rec = records[i]
        dispatched_at = loop.now()

        def on_output(out: RequestOutput) -> None:
            # sparse driver: only the first-token and final outputs arrive; the final one lists
            # every token's time, giving the same TTFT and ITLs as per-token outputs would
            nonlocal pending
            # an answer not streamed is seen by nobody until it ends (reported below)
            if req.stream and i not in first_seen:  # the first token: the data plane reports the TTFT
                first_seen.add(i)
                f.datastore.start(replica.key, 0)  # the data plane saw it start
                counted(f, replica.key)
                f.core.observe_ttft(f"twin-{i}", out.now - T0 - rec.sent_at + cfg.client_latency)
                if f.flow is not None:  # and, counted from dispatch, flow control's decode guard
                    f.flow.observe_ttft(out.now - dispatched_at + cfg.client_latency, out.now)
            elif req.stream and not out.finished and out.first_token_time is not None:
                # the TPOT_REPORT_TOKENS-th token (mark_at): the data plane reports the mean gap
                # after the first token so far
                gaps = TPOT_REPORT_TOKENS - 1
                observe_tpot(f, i, (out.now - out.first_token_time) / gaps)
            if out.finished:
                if isinstance(out, TimedOutput) and out.token_times:
                    times = out.token_times
                    rec.ttft = times[0] - T0 - rec.sent_at + cfg.client_latency
                    rec.itl = [b - a for a, b in itertools.pairwise(times)]
                    if req.stream and 1 < len(times) <= TPOT_REPORT_TOKENS:  # short: reported at its end
                        observe_tpot(f, i, (times[-1] - times[0]) / (len(times) - 1))
                rec.status = 200
                rec.e2e = out.now - T0 - rec.sent_at + cfg.client_latency
                if not req.stream:  # the answer came whole: its time and token count
                    f.core.observe_answer(f"twin-{i}", rec.e2e, out.num_generated)
                rec.prompt_tokens = out.num_prompt_tokens
                rec.completion_tokens = out.num_generated
                if (program := programs.pop(i, None)) is not None and f.flow is not None:
                    f.flow.program_completed(program, out.num_prompt_tokens, out.num_generated, out.now)
                release(f, replica.key, started=req.stream)
                pending -= 1
                answered(i)

        replica.driver.submit(
            EngineRequest(
                request_id=f"twin-{i}",
                prompt_token_ids=tokens,
                # a client's cap (or none): the model ends the answer at its drawn length itself
                max_tokens=req.sent_max_tokens or req.max_tokens,
                ignore_eos=not req.ends_itself,
                eos_after=req.max_tokens if req.ends_itself else None,
                lora_name=lora,
                remote_prefill_tokens=remote,
                mark_at=TPOT_REPORT_TOKENS if req.stream else 0,
            ),
            on_output,
        )

    # the first scrape before any arrival: the real gateway is ready (scraped) before load starts
    loop.call_at(T0, scrape)
    loop.call_at(T0, sample)
    for at, change in cfg.scale:
        loop.call_at(T0 + at, functools.partial(resize, change))
    for at, index, factor in cfg.slow:
        loop.call_at(T0 + at, functools.partial(slow_down, replicas[index].engine, cfg.time_scale * factor))
    if offsets is not None:
        for i, off in enumerate(offsets):
            loop.call_at(T0 + off, functools.partial(due, i))
    else:
        clients = min(concurrency or 0, len(requests))
        for k in range(clients):
            loop.call_at(T0 + ramp * k / clients, send_next)
    stopped_at: float | None = None
    if monitor is None:
        loop.run()
    else:
        while loop.pending():
            loop.run(until=loop.now() + monitor_interval)
            if monitor(loop.now() - T0, records):
                stopped_at = loop.now() - T0
                break

    queries = sum(r.engine.stats().prefix_cache_queries for r in replicas)
    hits = sum(r.engine.stats().prefix_cache_hits for r in replicas)
    return TwinResult(
        records=records,
        per_endpoint_requests={r.key: r.requests for r in replicas},
        prefix_hit_rate=hits / queries if queries else None,
        lora_swaps=sum(r.engine.stats().lora_gpu_loads for r in replicas),
        gateway_queued=queued,
        load_series=load_series,
        stopped_at=stopped_at,
        flow_control=fronts[0].flow is not None,
        disaggregated=disaggregated,
    )
