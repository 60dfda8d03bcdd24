"""The ``burst-prefix-cache-producer``'s batch window on the request path.

The Director awaits :meth:`BurstWindow.place` after the prompt is tokenized and before the
request is scheduled. The first request of a window starts one timer on the event loop
(``windowDurationMs``); every request with prefix hashes that arrives before it fires joins the
window and waits. When the timer fires, the window is sealed: its requests are assigned jointly
(:func:`infergate.scheduling.plugins.burst_prefix.assign`), each endpoint is recorded for the
scorer, and every waiter is released at once, so no request waits longer than the window.

That wait is upstream's documented behaviour (its producer holds each request up to the window);
an operator who configures the producer accepts it. What is not waited on:

* a request without prefix hashes (an empty prompt): upstream holds it without effect;
* a request arriving when the window already holds ``maxBatchSize`` requests: upstream fails that
  producer call and the request goes on without affinity; here likewise, counted in
  :attr:`BurstWindow.overflowed` and in ``infergate_burst_window_overflow_total`` on ``/metrics``
  (operators alert on the counter: a full window means ``maxBatchSize`` is too small for the
  bursts), and logged at most once a minute;
* anything after :meth:`close` (shutdown): the open window is sealed at once, so no waiter is left
  behind, and later requests pass straight through.

A request cancelled while it waits (the client went away) leaves the window before it seals, so
it takes no replica's share. With ``--workers N`` each worker process has its own Director and so
its own window: requests are batched with those of the same worker only, and its own counter,
which the gateway process sums over the workers as it does every worker's counters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from infergate.scheduling.plugins.burst_prefix import UNLIMITED, BurstPrefixProducer
from infergate.types import Endpoint, InferenceRequest

if TYPE_CHECKING:
    from infergate.telemetry import GatewayMetrics

__all__ = ["BurstWindow"]

log = logging.getLogger(__name__)

_WARN_EVERY = 60.0  # seconds between two warnings about a full window


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


CallLater = Callable[[float, Callable[[], None]], TimerHandle]
"""``loop.call_later`` (tests pass a fake to fire the timer themselves)."""


@dataclass(slots=True, eq=False)
class _Waiter:
    request: InferenceRequest
    hashes: list[int]
    candidates: Sequence[Endpoint]
    released: asyncio.Future[None]


@dataclass(slots=True, eq=False)
class _Window:
    waiters: list[_Waiter] = field(default_factory=list)
    timer: TimerHandle | None = None
    sealed: bool = False


class BurstWindow:
    """Collects requests for ``producer``'s window and releases them together, assigned.

    ``metrics``: where overflows are counted (the counter is registered here, so it is exported,
    at 0, only by a gateway that holds a window); None counts them in :attr:`overflowed` only.
    """

    def __init__(
        self,
        producer: BurstPrefixProducer,
        *,
        call_later: CallLater | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.producer = producer
        self._overflow_total = metrics.burst_window_overflow() if metrics is not None else None
        self._call_later = call_later
        self._open: _Window | None = None
        self._closed = False
        self.windows = 0
        """Windows sealed so far."""
        self.overflowed = 0
        """Requests that found the window full (``maxBatchSize``) and went on without affinity."""
        self._warned_at = -_WARN_EVERY

    @property
    def waiting(self) -> int:
        """Requests in the open window."""
        return len(self._open.waiters) if self._open is not None else 0

    async def place(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        """Hold ``request`` until its window seals; its endpoint (if any) is then in the
        producer's assignments, where the scorer finds it. ``candidates`` are the endpoints the
        request may go to; the window assigns over those of its first request, as upstream."""
        if self._closed:
            return
        hashes = self.producer.hashes(request)
        if not hashes:
            return
        loop = asyncio.get_running_loop()
        window = self._open
        if window is None:
            window = self._open = _Window()
            call_later = self._call_later or loop.call_later
            window.timer = call_later(self.producer.window_seconds, lambda: self._seal(window))
        limit = self.producer.params.max_batch_size
        if limit != UNLIMITED and len(window.waiters) >= limit:
            self._overflow(limit)
            return
        waiter = _Waiter(request, hashes, candidates, loop.create_future())
        window.waiters.append(waiter)
        try:
            await waiter.released
        except asyncio.CancelledError:
            self._leave(window, waiter)
            raise

    def _leave(self, window: _Window, waiter: _Waiter) -> None:
        """A waiter cancelled before its window sealed: it takes no part in the assignment."""
        if window.sealed:
            return
        window.waiters.remove(waiter)
        if not window.waiters and self._open is window:
            if window.timer is not None:
                window.timer.cancel()
            self._open = None

    def _overflow(self, limit: int) -> None:
        self.overflowed += 1
        if self._overflow_total is not None:
            self._overflow_total.inc()
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            log.warning(
                "burst-prefix-cache-producer: the window is full (maxBatchSize %d); requests beyond "
                "it are scheduled without burst affinity (%d so far)",
                limit,
                self.overflowed,
            )

    def _seal(self, window: _Window) -> None:
        """Assign the window's requests jointly, record them, and release every waiter."""
        if window.sealed:
            return
        window.sealed = True
        if self._open is window:
            self._open = None
        waiters = window.waiters
        if not waiters:
            return
        self.windows += 1
        producer = self.producer
        assignments = producer.assignments
        assignments.start_window()
        try:
            targets = producer.assign([w.hashes for w in waiters], waiters[0].candidates)
        except Exception:  # a bug here must cost the window its affinity, never its requests
            log.exception("burst-prefix-cache-producer: assigning a window of %d failed", len(waiters))
            targets = [None] * len(waiters)
        placed = 0
        for w, target in zip(waiters, targets, strict=True):
            if target is not None:
                assignments.record(w.request, target)
                placed += 1
            if not w.released.done():
                w.released.set_result(None)
        log.debug("burst-prefix: window sealed with %d request(s), %d with affinity", len(waiters), placed)

    def close(self) -> None:
        """Seal the open window now (its waiters go on) and batch nothing more."""
        self._closed = True
        window = self._open
        if window is not None:
            if window.timer is not None:
                window.timer.cancel()
            self._seal(window)

    async def hold(self) -> None:
        """Run until cancelled (the gateway's shutdown), then :meth:`close`."""
        try:
            await asyncio.Event().wait()
        finally:
            self.close()
