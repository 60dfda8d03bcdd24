"""The asyncio face of flow control: ``await admit(request)`` returns when the request may be scheduled.

A waiting request holds an :class:`asyncio.Future`. Dispatch is event-driven: the controller
listens to the datastore (every scrape, health change, and in-flight acquire/release) and runs a
dispatch cycle soon after each change, releasing as many requests as the pool has room for. A
released request is not in flight until its task runs; until then it is counted as *pending*, as if
in flight on every endpoint (an upper bound), both for further releases and for newcomers' fast
path. Releasing one request per cycle instead, and queueing every newcomer while one was in
transit, made requests under steady load file through the queue one event-loop turn at a time.
A timer wakes the dispatcher for TTL deadlines and, as a safety net, every ``recheck_interval``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from infergate.config.settings import Settings
from infergate.datastore.store import Datastore
from infergate.errors import NoCapacityError, RateLimitedError
from infergate.flowcontrol.config import FlowControlConfig
from infergate.flowcontrol.core import Decision, FlowCore
from infergate.flowcontrol.decode_guard import DecodeGuard
from infergate.flowcontrol.queues import BandSnapshot, ItemState, QueuedItem
from infergate.flowcontrol.saturation import SaturationDetector
from infergate.telemetry import GatewayMetrics
from infergate.types import Clock, Endpoint, InferenceRequest, MonotonicClock

__all__ = ["FlowController"]

log = logging.getLogger(__name__)

SHED_MESSAGE = "system saturated, sheddable request dropped"
CAPACITY_MESSAGE = "flow control queue capacity exceeded"
TTL_MESSAGE = "request timed out in the queue"
NO_ENDPOINTS_MESSAGE = "no ready endpoint in the pool can serve the request"
NO_ENDPOINTS_TTL_MESSAGE = "request timed out in the queue and no ready endpoint came"
SHUTDOWN_MESSAGE = "gateway is shutting down"

#: The reference's response header naming why a request was dropped before it reached a model
#: server, and its values (llm-d-router ``pkg/common/error``).
DROPPED_REASON = "x-llm-d-request-dropped-reason"
SATURATED = "rejected-saturated"
NO_ENDPOINTS = "rejected-no-endpoints"
TTL_EXPIRED = "rejected-ttl-expired"
SHUTTING_DOWN = "rejected-shutting-down"


def _dropped(reason: str) -> dict[str, str]:
    return {DROPPED_REASON: reason}


class FlowController:
    """Admission for one pool: pass, wait in a priority band, or be rejected.

    ``admit`` raises :class:`RateLimitedError` (429, ``Retry-After``) for a sheddable request while
    the pool is saturated, when the queues are full and when the request's TTL runs out in the queue
    (capacity exists but is contended: retry), and :class:`NoCapacityError` (503) while the pool has
    no ready endpoint and the request cannot wait for one, or its no-endpoint budget runs out. Every
    such error carries the reference's ``x-llm-d-request-dropped-reason`` header. While the pool
    has no ready endpoint requests wait (scale from zero) like under saturation. Cancelling
    ``admit`` (client gone) removes the request from its queue at once.
    """

    @classmethod
    def from_settings(
        cls,
        datastore: Datastore,
        settings: Settings,
        *,
        pool_name: str,
        connection_limit: int | None = None,
        clock: Clock | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> FlowController:
        """The ``flow_control`` settings group's controller for ``pool_name`` (see
        :func:`~infergate.flowcontrol.settings.flow_control_from_settings` for ``connection_limit``)."""
        from infergate.flowcontrol.settings import decode_guard_from_settings, flow_control_from_settings

        detector, config = flow_control_from_settings(
            settings, pool_name=pool_name, connection_limit=connection_limit
        )
        guard = decode_guard_from_settings(settings)
        return cls(datastore, detector=detector, clock=clock, config=config, metrics=metrics, guard=guard)

    def __init__(
        self,
        datastore: Datastore,
        *,
        detector: SaturationDetector,
        clock: Clock | None = None,
        config: FlowControlConfig = FlowControlConfig(),  # noqa: B008 - frozen value object
        metrics: GatewayMetrics | None = None,
        guard: DecodeGuard | None = None,
    ) -> None:
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._core = FlowCore(datastore, detector=detector, config=config, metrics=metrics, guard=guard)
        self._waiters: dict[QueuedItem, asyncio.Future[ItemState]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cycle_pending = False
        # released requests whose task has not resumed yet: their in-flight count is not visible,
        # so the pool is judged as if they had landed (FlowCore.saturation's ``pending``)
        self._in_transit = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._unsubscribe = datastore.add_listener(self._on_change)

    @property
    def core(self) -> FlowCore:
        """The synchronous state machine (for the live view and tests)."""
        return self._core

    @property
    def config(self) -> FlowControlConfig:
        return self._core.config

    def with_room(self, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        """Candidates narrowed to endpoints with room now (see :meth:`FlowCore.with_room`)."""
        return self._core.with_room(endpoints, self._clock.now())

    def observe_tpot(self, tpot_seconds: float) -> None:
        """A streamed request's time per output token after the first (the decode guard's input)."""
        self._core.observe_tpot(tpot_seconds, self._clock.now())

    def observe_ttft(self, seconds: float) -> None:
        """A request's time to first token counted from its dispatch (the decode guard's input)."""
        self._core.observe_ttft(seconds, self._clock.now())

    @property
    def tracks_programs(self) -> bool:
        """Whether the bands' flows are served program-aware (then the data plane reports each
        request's dispatch and end, :meth:`program_dispatched` and :meth:`program_completed`)."""
        return self._core.config.fairness == "program-aware"

    def program_dispatched(self, request: InferenceRequest, waited: float) -> None:
        """See :meth:`FlowCore.program_dispatched` (program-aware fairness only)."""
        self._core.program_dispatched(request, waited, self._clock.now())

    def program_completed(self, request: InferenceRequest, prompt: int, completion: int) -> None:
        """See :meth:`FlowCore.program_completed` (program-aware fairness only)."""
        self._core.program_completed(request, prompt, completion, self._clock.now())

    def queued(self) -> int:
        """Requests waiting right now."""
        return len(self._core)

    def snapshot(self) -> list[BandSnapshot]:
        """The bands, highest priority first, for the live view."""
        return self._core.snapshot()

    async def admit(self, request: InferenceRequest) -> bool:
        """Return when ``request`` may be scheduled; raise the error that ends it otherwise.

        True when it waited in a queue and was released (the caller then schedules it only onto
        endpoints with room, :meth:`with_room`); False when it was admitted at once.
        """
        if self._closed:
            raise NoCapacityError(SHUTDOWN_MESSAGE, headers=_dropped(SHUTTING_DOWN))
        now = self._clock.now()
        offer = self._core.offer(request, now, pending=self._in_transit)
        if offer.decision is Decision.ADMIT:
            return False
        retry_after = self._core.config.retry_after
        if offer.decision is Decision.REJECT_SHED:
            raise RateLimitedError(SHED_MESSAGE, retry_after=retry_after, headers=_dropped(SATURATED))
        if offer.decision is Decision.REJECT_CAPACITY:
            raise RateLimitedError(CAPACITY_MESSAGE, retry_after=retry_after, headers=_dropped(SATURATED))
        if offer.decision is Decision.REJECT_NO_ENDPOINTS:
            raise NoCapacityError(NO_ENDPOINTS_MESSAGE, headers=_dropped(NO_ENDPOINTS))
        item = offer.item
        assert item is not None
        loop = asyncio.get_running_loop()
        self._loop = loop
        future: asyncio.Future[ItemState] = loop.create_future()
        self._waiters[item] = future
        self._kick()
        try:
            outcome = await future
        except asyncio.CancelledError:
            self._waiters.pop(item, None)
            if not self._core.cancel(item, self._clock.now()) and item.state is ItemState.DISPATCHED:
                if future.done() and not future.cancelled():
                    self._in_transit -= 1
                self._kick()  # the capacity it was released into is free again
            else:
                self._arm_timer()
            raise
        if outcome is ItemState.DISPATCHED:
            # the caller schedules and acquires before its next await; the cycle kicked here
            # runs after that and sees the new in-flight count
            self._in_transit -= 1
            if len(self._core):
                self._kick()
            return True
        if outcome is ItemState.EVICTED_TTL:
            raise RateLimitedError(TTL_MESSAGE, retry_after=retry_after, headers=_dropped(TTL_EXPIRED))
        if outcome is ItemState.EVICTED_NO_ENDPOINTS:
            raise NoCapacityError(NO_ENDPOINTS_TTL_MESSAGE, headers=_dropped(NO_ENDPOINTS))
        raise NoCapacityError(SHUTDOWN_MESSAGE, headers=_dropped(SHUTTING_DOWN))

    def poke(self) -> None:
        """Run a dispatch cycle soon (e.g. after the clock moved without any datastore change)."""
        self._kick()

    def close(self) -> None:
        """Stop listening and answer every waiting request 503 (``rejected-shutting-down``); later
        admits fail at once."""
        if self._closed:
            return
        self._closed = True
        self._unsubscribe()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for item in self._core.drain(self._clock.now()):
            self._resolve(item)

    # -- dispatcher -------------------------------------------------------------------------

    def _on_change(self) -> None:
        if len(self._core):
            self._kick()

    def _kick(self) -> None:
        if self._cycle_pending or self._loop is None or self._closed or self._loop.is_closed():
            return
        self._cycle_pending = True
        self._loop.call_soon(self._cycle)

    def _cycle(self) -> None:
        self._cycle_pending = False
        if self._closed:
            return
        try:
            now = self._clock.now()
            for expired in self._core.expire(now):
                self._resolve(expired)
            while True:
                item = self._core.pop_ready(now, self._in_transit)
                if item is None:
                    break
                if self._resolve(item):
                    self._in_transit += 1  # counted until its task resumes and acquires
                # else its waiter is already gone (cancelled in the same instant): release another
        except Exception:  # a bug here must not strand the waiters without a timer
            log.exception("flow-control dispatch cycle failed")
        self._arm_timer()

    def _resolve(self, item: QueuedItem) -> bool:
        """Wake the waiter of ``item`` with its final state; False if nobody waits any more."""
        future = self._waiters.pop(item, None)
        if future is None or future.done():
            return False
        future.set_result(item.state)
        return True

    def _arm_timer(self) -> None:
        loop = self._loop
        if loop is None or self._closed or loop.is_closed():
            return
        if not len(self._core):
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        delay = self._core.config.recheck_interval
        deadline = self._core.next_wake(self._clock.now())
        if deadline is not None:
            delay = min(delay, max(0.0, deadline - self._clock.now()))
        when = loop.time() + delay
        if self._timer is not None:
            if not self._timer.cancelled() and self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._cycle()
