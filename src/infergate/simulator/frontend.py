"""vLLM's API-server process as one serial CPU stage in front of the engine [est, calibration §1.5].

vLLM runs its HTTP frontend in one process: every request is parsed and tokenised there, and every
generated token is detokenised and streamed out by it. Under a burst that process, not the GPU, is
the bottleneck: a 1,000-prompt burst on an H100 shows a 9.6 s mean TTFT where the GPU model alone
gives ≈2.9 s. The stage models it with two costs on one timeline:

* ``request_cost`` per request, FIFO: a request reaches the engine when the stage has processed
  it (and not before ``latency``, the fixed IPC delay every request sees, even at idle);
* ``token_cost`` per generated token, taking priority (vLLM's output handler runs as soon as the
  engine reports a step): it extends whatever request is being processed, so heavy output slows
  the admission of new requests.

Both drivers use it with their own clock (``call_at``/``now``): wall-clock asyncio or virtual time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any


class FrontendStage:
    """FIFO single-server queue of requests with priority token work; see the module docstring."""

    def __init__(
        self,
        *,
        latency: float,
        request_cost: float,
        token_cost: float,
        call_at: Callable[[float, Callable[[], None]], Any],
        now: Callable[[], float],
        resolution: float = 0.0,
    ) -> None:
        self.latency = latency
        # how early ``call_at`` may run a callback: a request whose service ends within it is done
        self.resolution = resolution
        self.request_cost = request_cost
        self.token_cost = token_cost
        self._call_at = call_at
        self._now = now
        self._queue: deque[tuple[float, Callable[[], None]]] = deque()
        self._busy = False
        self._busy_until = 0.0  # when the request in service completes (grows with token work)
        self._free_at = float("-inf")  # when token work done while idle completes
        self.closed = False  # set when the driver stops: scheduled callbacks then do nothing

    @property
    def serial(self) -> bool:
        return self.request_cost > 0 or self.token_cost > 0

    @property
    def queued(self) -> int:
        """Requests waiting in or being processed by the stage."""
        return len(self._queue) + (1 if self._busy else 0)

    def submit(self, deliver: Callable[[], None]) -> None:
        """Process a request arriving now; ``deliver`` runs when it reaches the engine."""
        arrival = self._now()
        if not self.serial:
            self._schedule(arrival + self.latency, deliver)
            return
        self._queue.append((arrival, deliver))
        if not self._busy:
            self._start()

    def tokens_out(self, n: int) -> None:
        """The engine just produced ``n`` tokens: the stage spends ``n × token_cost`` on them first."""
        if n <= 0 or self.token_cost <= 0:
            return
        work = n * self.token_cost
        if self._busy:
            self._busy_until += work
        else:
            self._free_at = max(self._free_at, self._now()) + work

    def close(self) -> None:
        self.closed = True
        self._queue.clear()

    def _schedule(self, t: float, fn: Callable[[], None]) -> None:
        def run() -> None:
            if not self.closed:
                fn()

        self._call_at(t, run)

    def _start(self) -> None:
        self._busy = True
        self._busy_until = max(self._now(), self._free_at) + self.request_cost
        self._schedule(self._busy_until, self._check)

    def _check(self) -> None:
        """The request in service is done: deliver it and serve the next one from the moment it
        finished, not from now; every request whose service has ended is delivered in this call.

        uvloop runs timers to the millisecond, up to a millisecond early or late. Taking a timer
        that came early for not done and setting another spun the event loop until the time had
        passed. Starting each request when its predecessor's timer ran lost the lateness. Both
        together made a replica at ``--time-scale 0.02`` (0.2 ms per request here) spend ~0.9 of a
        core at ~1,000 requests a second (the data-plane benchmark's ceiling)."""
        now = self._now() + self.resolution
        while True:
            if now < self._busy_until:  # token work arrived meanwhile, or the next is not done
                self._schedule(self._busy_until, self._check)
                return
            done = self._busy_until
            arrival, deliver = self._queue.popleft()
            self._busy = False
            self._free_at = done
            ready = arrival + self.latency
            if ready > now:
                self._schedule(ready, deliver)
            else:
                deliver()
            if not self._queue or self.closed:
                return
            self._busy = True  # the next one started when this one finished, or when it arrived
            self._busy_until = max(self._free_at, self._queue[0][0]) + self.request_cost
