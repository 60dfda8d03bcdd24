"""The flow-control state machine, synchronous and clock-agnostic.

:class:`FlowCore` decides what happens to each request (pass, queue, reject), which queued request
goes next, and which ones outlived their TTL; it records the ``inference_extension_flow_control_*``
metrics. It never awaits and never reads a clock itself: the caller passes ``now``. The asyncio
:class:`~infergate.flowcontrol.controller.FlowController` wraps it for the data planes, and the
digital twin can drive it directly on a virtual clock.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Sequence
from enum import StrEnum
from typing import Protocol

from infergate.datastore.store import Datastore
from infergate.flowcontrol.config import FlowControlConfig
from infergate.flowcontrol.decode_guard import DecodeGuard, GuardCap
from infergate.flowcontrol.program_aware import ProgramAwareFairness
from infergate.flowcontrol.queues import BandSnapshot, ItemState, PriorityQueues, QueuedItem
from infergate.flowcontrol.saturation import SaturationDetector
from infergate.flowcontrol.usage_limits import PriorityLevels, UsageLimitPolicy, usage_limit_policy
from infergate.telemetry import BandUtilization, FlowControlState, GatewayMetrics
from infergate.types import ROLE_LABEL, Endpoint, InferenceRequest, typed_frozen

__all__ = ["Decision", "FlowCore", "Offer"]

# Most labelled queue-duration series kept looked up; the cache is emptied when it reaches this.
_SERIES_CACHE = 1024

# The ``outcome`` label of the flow-control metrics, spelled as llm-d-router spells its outcomes.
DISPATCHED = "Dispatched"
_EVICTED = {
    ItemState.EVICTED_TTL: "EvictedTTL",
    ItemState.EVICTED_NO_ENDPOINTS: "EvictedNoEndpoints",
    ItemState.CANCELLED: "EvictedContextCancelled",
    ItemState.REJECTED: "EvictedOther",  # queued, then dropped at shutdown
    ItemState.DISPATCHED: DISPATCHED,
}


class _Observer(Protocol):
    def observe(self, value: float) -> None: ...


class _Gauge(Protocol):
    def set(self, value: float) -> None: ...


class _Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Decision(StrEnum):
    """What :meth:`FlowCore.offer` decided for a new request."""

    ADMIT = "admit"  # go ahead and schedule now
    QUEUED = "queued"  # wait for :meth:`FlowCore.pop_ready` (or expiry / cancellation)
    REJECT_SHED = "sheddable"  # priority < 0 while saturated: 429
    REJECT_CAPACITY = "capacity"  # queue capacity exhausted: 429
    REJECT_NO_ENDPOINTS = "no_endpoints"  # the pool has no ready endpoint and the request cannot wait: 503


_ENQUEUE_OUTCOME = {Decision.ADMIT: DISPATCHED, Decision.QUEUED: "NotYetFinalized"}
_REJECTED = {
    Decision.REJECT_SHED: "RejectedCapacity",  # backpressure, as a full queue
    Decision.REJECT_CAPACITY: "RejectedCapacity",
    Decision.REJECT_NO_ENDPOINTS: "RejectedNoEndpoints",
}


@typed_frozen
class Offer:
    decision: Decision
    item: QueuedItem | None = None


class FlowCore:
    """Priority bands, fairness, TTL and capacities over one pool's saturation.

    Args:
        datastore: source of the pool's endpoints (health, metrics, in-flight counts).
        detector: the saturation rule.
        config: capacities, TTL and whether queueing is enabled at all.
        metrics: where to record; None records nothing.
        guard: holds newcomers briefly while streams decode slower than the TPOT bound
            (:mod:`infergate.flowcontrol.decode_guard`); None never holds.
    """

    def __init__(
        self,
        datastore: Datastore,
        *,
        detector: SaturationDetector,
        config: FlowControlConfig | None = None,
        metrics: GatewayMetrics | None = None,
        guard: DecodeGuard | None = None,
    ) -> None:
        self._ds = datastore
        self._detector = detector
        self._guard = guard
        self._guard_cap = GuardCap(guard) if guard is not None else None
        self._config = config if config is not None else FlowControlConfig()
        self._metrics = metrics
        self._programs: ProgramAwareFairness | None = None
        if self._config.fairness == "program-aware":
            programs = metrics.programs() if metrics is not None else None
            self._programs = ProgramAwareFairness(self._config.program_aware, metrics=programs)
        chooser = self._programs.choose if self._programs is not None else None
        self._queues = PriorityQueues(self._config.ordering, self._config.fairness, chooser=chooser)
        self._deadlines: list[tuple[float, int, QueuedItem]] = []
        self._seq = itertools.count()
        self._last_saturation = 0.0
        # whether the pool had no ready endpoint when the queued requests' deadlines were last set
        self._empty = False
        # labelled queue-duration and outcome-count children by (fairness, priority, pool, model,
        # target, outcome)
        self._wait_series: dict[tuple[str, int, str, str, str, str], tuple[_Observer, _Counter]] = {}
        self._enqueue_series: dict[tuple[str, int, Decision], _Observer] = {}
        self._saturation_gauges: dict[str, dict[str, _Gauge]] = {}  # pool name -> stage -> child
        self._judged_at: float | None = None  # ``now`` of the last saturation judgement
        self._staged = (-1, False)  # (membership version, whether the pool has P/D roles)
        c = self._config
        self._limit: UsageLimitPolicy = usage_limit_policy(
            c.usage_limit,
            headroom=c.headroom,
            top=self._ds.top_priority if c.top_priority is None else lambda: c.top_priority,
            ceiling=c.usage_limit_ceiling,
            min_ceiling=c.usage_limit_min_ceiling,
            domain="value" if c.usage_limit_domain == "value" else "rank",
        )
        self._levels = PriorityLevels(c.priority_bands)
        if metrics is not None:
            metrics.watch_flow_control(self.metrics_state)

    # -- inspection -------------------------------------------------------------------------

    @property
    def config(self) -> FlowControlConfig:
        return self._config

    @property
    def detector(self) -> SaturationDetector:
        return self._detector

    def __len__(self) -> int:
        return len(self._queues)

    @property
    def queued_bytes(self) -> int:
        return self._queues.bytes

    @property
    def last_saturation(self) -> float:
        """The pool saturation computed by the most recent decision."""
        return self._last_saturation

    def snapshot(self) -> list[BandSnapshot]:
        return self._queues.snapshot()

    @property
    def guard(self) -> DecodeGuard | None:
        return self._guard

    def observe_tpot(self, tpot_seconds: float, now: float) -> None:
        """A streamed request's time per output token after the first (for the decode guard)."""
        if self._guard is not None:
            self._guard.observe(tpot_seconds, now)

    def observe_ttft(self, seconds: float, now: float) -> None:
        """A request's time to first token counted from its dispatch (for the decode guard)."""
        if self._guard is not None:
            self._guard.observe_ttft(seconds, now)

    def program_dispatched(self, request: InferenceRequest, waited: float, now: float) -> None:
        """``request`` left for a model server after ``waited`` seconds in the gateway (the
        program-aware policy's in-flight count and mean wait; nothing under other policies)."""
        if self._programs is not None:
            self._programs.dispatched(request.fairness_id, waited, now)

    def program_completed(
        self, request: InferenceRequest, prompt_tokens: int, completion_tokens: int, now: float
    ) -> None:
        """``request`` ended having used these tokens: its program's attained service grows."""
        if self._programs is not None:
            self._programs.completed(request.fairness_id, prompt_tokens, completion_tokens, now)

    def _holding(self, now: float) -> bool:
        """Whether the decode guard keeps requests back now (:class:`GuardCap`)."""
        cap = self._guard_cap
        if cap is None:
            return False
        holding = cap.holding(now, queued=self._queues, in_flight=self._in_flight)
        if holding is not None and self._metrics is not None:  # the guard's verdict changed
            self._metrics.fc_decode_guard_holding.labels(inference_pool=self.pool_name()).set(int(holding))
        return cap.capped_now

    def _in_flight(self) -> int:
        return sum(e.in_flight for e in self._ds.endpoints())

    def pool_name(self) -> str:
        pool = self._ds.pool
        return pool.name if pool is not None else self._config.pool_name

    def saturation(self, now: float, pending: int = 0) -> float:
        """The pool's current saturation (>= 1.0: saturated); updates the saturation gauge.

        ``pending`` counts requests already released but not yet in flight anywhere (their
        tasks have not run): each is counted as in flight on *every* healthy endpoint, an upper
        bound whatever the scheduler picks, so releasing or admitting while they land never
        overfills the pool, and admission need not wait for them to land.

        In a pool of one priority a server's frontend may hold up to what it takes in over
        ``frontend_wait`` (:class:`SaturationDetector`'s ``intake``): the gateway's queue and the
        frontend's are then one first-come-first-served order, and holding a burst in the gateway
        only adds a dispatch delay. Where priorities differ, the hold orders who gets in, and
        every band keeps the completions' allowance.
        """
        endpoints = self._ds.endpoints()
        intake = not self._ds.priorities_differ()
        if self._staged[0] == self._ds.membership_version and not self._staged[1]:
            value, stages = self._detector.saturation(endpoints, now, intake=intake), None  # one stage
        else:
            value, stages = self._judge(endpoints, now, intake)
        if pending > 0 and value < 1.0:
            landed = [e.with_load(e.in_flight + pending, e.in_flight_tokens) for e in endpoints]
            value = max(value, self._judge(landed, now, intake)[0])
        self._last_saturation = value
        self._judged_at = now
        if self._metrics is not None:
            pool = self.pool_name()
            gauges = self._saturation_gauges.get(pool)
            if gauges is None:  # "effective" on both names; a P/D pool's stages on llm-d's only
                gauges = self._saturation_gauges[pool] = {
                    "effective": self._metrics.fc_pool_saturation.labels(
                        inference_pool=pool, stage="effective"
                    )
                }
            gauges["effective"].set(value)
            for stage, level in stages.items() if stages else ():
                if stage not in gauges:
                    gauges[stage] = self._metrics.fc_pool_saturation.llmd.labels(
                        inference_pool=pool, stage=stage
                    )
                gauges[stage].set(level)
        return value

    def _judge(
        self, endpoints: Sequence[Endpoint], now: float, intake: bool = False
    ) -> tuple[float, dict[str, float] | None]:
        """The pool's saturation and each P/D stage's: a pool with ``llm-d.ai/role`` labels is as
        saturated as its fuller stage (:meth:`SaturationDetector.stages`, llm-d-router's rule);
        any other is one decode stage of all its endpoints (None)."""
        version = self._ds.membership_version
        if self._staged[0] != version:
            self._staged = (version, any(ROLE_LABEL in e.meta.labels for e in endpoints))
        stages = self._detector.stages(endpoints, now, intake=intake) if self._staged[1] else None
        if not stages:
            return self._detector.saturation(endpoints, now, intake=intake), None
        return max(stages.values()), stages

    def threshold(self, priority: int, *, saturation: float | None = None, now: float | None = None) -> float:
        """Pool saturation at which requests of ``priority`` stop being admitted or released: the
        usage-limit policy's ceiling for its band (:mod:`.usage_limits`).

        The default (``headroom``): 1.0 for the top band (``top_priority``, else the highest
        objective priority, or above); ``1 - headroom`` below it, so the top band always finds
        the last bit of room. ``saturation`` and ``now`` default to the last judgement's.
        """
        policy = self._limit
        levels: list[int] = []
        if policy.ranked:
            at = (self._judged_at or 0.0) if now is None else now
            levels = self._levels.levels(priority, at, [o.priority for o in self._ds.objectives()])
        return policy.ceiling(self._last_saturation if saturation is None else saturation, priority, levels)

    def with_room(self, endpoints: Sequence[Endpoint], now: float) -> list[Endpoint]:
        """Scheduling candidates for a request released from the queues: those with room.

        ``endpoints`` unchanged when flow control is off, routing to room is disabled, or no
        endpoint has room (the pool is then saturated and the scheduler picks among all);
        otherwise only the endpoints whose own saturation score is below 1. A request released
        from the queues thus never lands in a full model server's queue while another has room,
        so replica queues stay short and the gateway's priority order decides who waits.

        Only a pool whose requests can differ in priority is narrowed (an InferenceObjective with a
        priority other than the default 0 exists): narrowing is there for the priority order, so that
        a released request does not wait in a model server behind requests the gateway would have
        ranked below it, nor put itself ahead of later, higher-priority ones. With one priority the
        gateway's queue order and a server's are the same (first come, first served), and narrowing
        would only override the scheduler's placement. On a pool whose tenants' prefixes are
        partitioned over the replicas that is ruinous: during a short burst (cold caches right after
        a start) every replica shows a few waiting requests, the released ones went to whichever
        replica was momentarily below the threshold, away from their prefix, and the extra prefill
        kept the pool saturated (seen in the twin: a many-tenant workload's prefix-hit rate fell
        from 85 % to 51 % and its SLO rate from 135 to under 100 QPS; the issue's real-time run
        showed the same 79 % → 34 %). The scheduler itself weighs a replica's queue against the
        request's prefix and adapter there.

        Requests admitted at once (the pool not saturated, nothing queued) are not narrowed: the
        scheduler weighs a replica's queue against its prefix cache and adapters itself. Narrowing
        them too forced LoRA requests off the replicas holding their adapter whenever a few
        requests waited there for a slot, and the adapter swaps that followed turned a pool with
        room into a saturated one (seen in the twin: a multi-LoRA workload fell from 35 to under
        20 QPS).
        """
        c = self._config
        if not c.enabled or not c.route_to_room or len(endpoints) < 2 or not self._ds.priorities_differ():
            return list(endpoints)
        roomy = [e for e in endpoints if self._detector.endpoint_score(e, now) < 1.0]
        return roomy or list(endpoints)

    def pool_empty(self) -> bool:
        """True while the pool has no ready (healthy) endpoint at all: nothing can be dispatched
        until one comes (scale from zero), so waiting runs on the no-endpoint budget."""
        return not self._ds.has_healthy()

    # -- decisions --------------------------------------------------------------------------

    def offer(self, request: InferenceRequest, now: float, *, pending: int = 0) -> Offer:
        """:meth:`_offer`, timed into the enqueue-duration histogram (the reference's outcome labels:
        ``Dispatched`` admitted at once, ``NotYetFinalized`` queued, ``Rejected*``)."""
        if self._metrics is None:
            return self._offer(request, now, pending)
        started = time.perf_counter()
        offer = self._offer(request, now, pending)
        seconds = time.perf_counter() - started
        key = (request.fairness_id, request.priority, offer.decision)
        child = self._enqueue_series.get(key)
        if child is None:
            if len(self._enqueue_series) >= _SERIES_CACHE:  # client-chosen fairness ids: stay bounded
                self._enqueue_series.clear()
            outcome = _ENQUEUE_OUTCOME.get(offer.decision) or _REJECTED[offer.decision]
            child = self._enqueue_series[key] = self._metrics.fc_enqueue_duration.labels(
                fairness_id=request.fairness_id, priority=str(request.priority), outcome=outcome
            )
        child.observe(seconds)
        return offer

    def _offer(self, request: InferenceRequest, now: float, pending: int) -> Offer:
        """Decide for a newly arrived request.

        Nothing waiting, the pool not saturated and the decode guard not holding is the fast path:
        admit. Otherwise a sheddable request (priority < 0) is rejected if the pool is saturated,
        the guard holds or others already wait (it would only wait behind them, which is what
        shedding avoids); any other request joins its band's flow queue, unless that would exceed
        a capacity, which rejects it. A request never
        overtakes queued ones: while anything waits, newcomers queue too, and the dispatcher
        decides the order. ``pending``: requests the caller released that are not in flight yet;
        the pool is judged as if they had landed (see :meth:`saturation`).
        """
        level = self.saturation(now, pending)
        empty = self._regime(now)
        if empty and (not self._config.enabled or request.priority < 0):
            # nothing to wait for without queueing; a sheddable request does not wait out a cold start
            return self._reject(request, Decision.REJECT_NO_ENDPOINTS)
        if not self._config.enabled:
            if level >= 1.0 and request.priority < 0:
                return self._reject(request, Decision.REJECT_SHED)
            self._observe_wait(request, DISPATCHED, 0.0)
            return Offer(Decision.ADMIT)
        saturated = level >= self.threshold(request.priority, saturation=level, now=now) or self._holding(now)
        if not saturated and not self._queues:
            self._observe_wait(request, DISPATCHED, 0.0)
            return Offer(Decision.ADMIT)
        if request.priority < 0 and (saturated or self._queues):
            return self._reject(request, Decision.REJECT_SHED)
        size = max(0, request.body_size)
        if not self._fits(request.priority, size):
            return self._reject(request, Decision.REJECT_NO_ENDPOINTS if empty else Decision.REJECT_CAPACITY)
        ttl = self._config.empty_pool_ttl if empty else self._config.default_ttl
        item = QueuedItem(
            request=request,
            size=size,
            enqueued_at=now,
            deadline=None if ttl is None else now + ttl,
            seq=next(self._seq),
            pool=self.pool_name(),
        )
        self._queues.push(item)
        if item.deadline is not None:
            heapq.heappush(self._deadlines, (item.deadline, item.seq, item))
        self._gauge(item, +1)
        return Offer(Decision.QUEUED, item)

    def pop_ready(self, now: float, pending: int = 0) -> QueuedItem | None:
        """Release the next request if the pool has room, else None.

        Only the head of the highest non-empty band is considered (head-of-line blocking, as in
        the reference, so a lower band never overtakes a higher one). Call again after the released
        request was scheduled (its in-flight count is then visible), or at once with ``pending``
        counting the released requests not yet in flight (see :meth:`saturation`). While the
        decode guard holds, and after it lets go until its queue has drained, the head goes once
        the pool has fewer requests in flight than when holding began (one finished) or once the
        request queued longest, in any band, has waited the guard's ``hold``: timing only the head
        let a lower band wait as long as higher-priority arrivals kept coming (the twin's
        priorities-prefix with the guard at a tighter TPOT bound than its streams needed: p90
        TTFT 3 s, against 0.66 s with every request timed).
        """
        head = self._queues.peek(now)
        if head is None:
            return None
        started = time.perf_counter()
        try:
            level = self.saturation(now, pending)
            if level >= self.threshold(head.priority, saturation=level, now=now):
                return None
            guard = self._guard
            if guard is not None and self._holding(now):
                oldest = self._queues.oldest_enqueued_at()
                if oldest is not None and now < guard.released_at(oldest):
                    return None
            item = self._queues.pop(now)
            assert item is not None
            self._finish(item, ItemState.DISPATCHED, now)
            return item
        finally:
            if self._metrics is not None:
                self._metrics.fc_dispatch_cycle_duration.observe(time.perf_counter() - started)

    def expire(self, now: float) -> list[QueuedItem]:
        """Take out every queued request whose budget has passed.

        Their state says how to answer: ``EVICTED_TTL`` (429, the pool has endpoints but no room
        came) or ``EVICTED_NO_ENDPOINTS`` (503, no ready endpoint came). Switches the budget first
        if the pool gained its first or lost its last ready endpoint since the last call.
        """
        empty = self._regime(now)
        state, reason = (
            (ItemState.EVICTED_NO_ENDPOINTS, "no_endpoints") if empty else (ItemState.EVICTED_TTL, "ttl")
        )
        out: list[QueuedItem] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, item = heapq.heappop(self._deadlines)
            if item.state is ItemState.QUEUED and self._queues.remove(item):
                self._finish(item, state, now)
                if self._metrics is not None:
                    self._metrics.fc_rejected_total.labels(priority=str(item.priority), reason=reason).inc()
                out.append(item)
        if len(self._deadlines) > 2 * len(self._queues) + 64:
            self._deadlines = [d for d in self._deadlines if d[2].state is ItemState.QUEUED]
            heapq.heapify(self._deadlines)
        return out

    def cancel(self, item: QueuedItem, now: float) -> bool:
        """The client went away: drop ``item`` from its queue at once. False if no longer queued."""
        if item.state is not ItemState.QUEUED or not self._queues.remove(item):
            return False
        self._finish(item, ItemState.CANCELLED, now)
        return True

    def next_deadline(self) -> float | None:
        """The earliest TTL deadline among queued requests (may be of an item already gone)."""
        while self._deadlines and self._deadlines[0][2].state is not ItemState.QUEUED:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def next_wake(self, now: float) -> float | None:
        """When the dispatcher must look again without any datastore change: the earliest TTL
        deadline or, while it is ahead, the time the decode guard lets the queue go (the request
        queued longest has waited its hold; once that has passed, a head still queued waits for
        room, and datastore changes wake the dispatcher)."""
        deadline = self.next_deadline()
        guard = self._guard
        oldest = None if guard is None else self._queues.oldest_enqueued_at()
        if guard is None or oldest is None:
            return deadline
        release = guard.released_at(oldest)
        if release <= now or (deadline is not None and deadline <= release):
            return deadline
        return release

    def drain(self, now: float) -> list[QueuedItem]:
        """Remove every queued request (shutdown); each is marked rejected."""
        out = list(self._queues)
        for item in out:
            self._queues.remove(item)
            self._finish(item, ItemState.REJECTED, now)
        self._deadlines.clear()
        return out

    # -- helpers ----------------------------------------------------------------------------

    def _regime(self, now: float) -> bool:
        """Whether the pool is empty now; on a change, every queued request gets a fresh budget.

        The new deadline is ``now`` + the budget of the new regime, but never later than the
        request's arrival + the longer of the two budgets, so a pool flapping between empty and not
        cannot keep a request waiting forever (the reference bounds the wait the same way).
        """
        empty = self.pool_empty()
        if empty is self._empty:
            return empty
        self._empty = empty
        if not self._queues:
            return empty
        c = self._config
        budget = c.empty_pool_ttl if empty else c.default_ttl
        budgets = (c.default_ttl, c.empty_pool_ttl)
        longest = None if None in budgets else max(b for b in budgets if b is not None)
        self._deadlines = []
        for item in self._queues:
            deadline = None if budget is None else now + budget
            if longest is not None:
                cap = item.enqueued_at + longest
                deadline = cap if deadline is None else min(deadline, cap)
            item.deadline = deadline
            if deadline is not None:
                heapq.heappush(self._deadlines, (deadline, item.seq, item))
        return empty

    def _fits(self, priority: int, size: int) -> bool:
        c = self._config
        q = self._queues
        if c.max_requests is not None and len(q) + 1 > c.max_requests:
            return False
        if c.max_bytes is not None and q.bytes + size > c.max_bytes:
            return False
        if c.band_max_requests is not None and q.band_count(priority) + 1 > c.band_max_requests:
            return False
        return not (c.band_max_bytes is not None and q.band_bytes(priority) + size > c.band_max_bytes)

    def _reject(self, request: InferenceRequest, decision: Decision) -> Offer:
        if self._metrics is not None:
            self._metrics.fc_rejected_total.labels(
                priority=str(request.priority), reason=decision.value
            ).inc()
        self._observe_wait(request, _REJECTED[decision], 0.0)
        return Offer(decision)

    def _finish(self, item: QueuedItem, state: ItemState, now: float) -> None:
        item.state = state
        self._gauge(item, -1)
        self._observe_wait(item.request, _EVICTED[state], max(0.0, now - item.enqueued_at), item.pool)

    def _labels(self, request: InferenceRequest, pool: str | None = None) -> dict[str, str]:
        return {
            "fairness_id": request.fairness_id,
            "priority": str(request.priority),
            "inference_pool": self.pool_name() if pool is None else pool,
            "model_name": request.model,
            "target_model_name": request.target_model,
        }

    def _gauge(self, item: QueuedItem, sign: int) -> None:
        if self._metrics is None:
            return
        labels = self._labels(item.request, item.pool)
        self._metrics.fc_queue_size.labels(**labels).inc(sign)
        self._metrics.fc_queue_bytes.labels(**labels).inc(sign * item.size)

    def _observe_wait(
        self, request: InferenceRequest, outcome: str, seconds: float, pool: str | None = None
    ) -> None:
        """Every request passes here once, admitted at once or not, with its terminal ``outcome``
        (the queue-duration histogram and the outcome counter): the labelled children are looked
        up in a small cache (resolving six label values costs more than the observation)."""
        m = self._metrics
        if m is None:
            return
        pool_name = self.pool_name() if pool is None else pool
        key = (request.fairness_id, request.priority, pool_name, request.model, request.target_model, outcome)
        children = self._wait_series.get(key)
        if children is None:
            if len(self._wait_series) >= _SERIES_CACHE:  # client-chosen fairness ids: stay bounded
                self._wait_series.clear()
            children = self._wait_series[key] = (
                m.fc_request_queue_duration.labels(**self._labels(request, pool_name), outcome=outcome),
                m.fc_requests_total.labels(
                    outcome=outcome, priority=str(request.priority), inference_pool=pool_name
                ),
            )
        children[0].observe(seconds)
        children[1].inc()

    def metrics_state(self) -> FlowControlState:
        """The flow-control gauges read at scrape time: endpoints the last saturation judgement
        had to count as saturated for stale metrics, and how full each band's queue is."""
        c, q = self._config, self._queues
        now = self._judged_at
        endpoints = self._ds.endpoints()
        stale = sum(1 for e in endpoints if now is None or not self._detector.is_fresh(e, now))
        bands = sorted({0, *q.bands(), *(o.priority for o in self._ds.objectives())})
        return FlowControlState(
            pool=self.pool_name(),
            detector=self._detector.plugin_type,
            stale_endpoints=stale,
            bands=tuple(
                BandUtilization(
                    priority=p,
                    requests=None if c.band_max_requests is None else q.band_count(p) / c.band_max_requests,
                    bytes=None if c.band_max_bytes is None else q.band_bytes(p) / c.band_max_bytes,
                )
                for p in bands
            ),
            global_requests=None if c.max_requests is None else len(q) / c.max_requests,
            global_bytes=None if c.max_bytes is None else q.bytes / c.max_bytes,
        )
