"""Clocks for the engine: a wall-clock asyncio driver and a discrete-event virtual-time driver.

Both drive the same ``Engine`` with the same protocol (``begin_step`` → wait the returned duration →
``end_step``) and both add the profile's API overhead (the frontend's tokenisation/IPC cost, §1.4 of
the calibration) between submission and the request reaching the engine, with ``arrival_time``
kept at submission so TTFT includes it. Hence a request produces the same token ids either way.

The frontend is also a serial stage (``frontend.FrontendStage``): a per-request and a per-generated-token CPU
cost on one timeline, like vLLM's single API-server process, so bursts queue before the engine
(calibration §1.5: a 1,000-prompt burst's mean TTFT is ≈3× the GPU's alone). Its costs come from
the profile (``frontend_request_ms``, ``frontend_token_ms``) via :func:`profile_frontend`; the
HTTP server and the digital twin use it, engine-level tests and benchmarks leave it off.

``RealtimeDriver`` keeps an absolute step timeline: each step ends at ``previous_end + duration``
(on ``loop.time()``), so sleep overshoot is absorbed instead of accumulating; if the process falls
more than ``max_lag`` behind, the timeline is re-anchored to now and the lag is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from infergate.simulator.engine import Engine, EngineRequest, RequestOutput
from infergate.simulator.frontend import FrontendStage


def profile_frontend(engine: Engine) -> dict[str, float]:
    """Driver keyword arguments for the profile's frontend stage (``frontend_request_ms``,
    ``frontend_token_ms``), scaled like the engine's steps: what a vLLM server has in front of its
    engine. Drivers without them model the engine alone (plus the fixed API overhead)."""
    scale = float(getattr(engine, "time_scale", 1.0))
    p = engine.profile
    return {
        "frontend_serial_cost": p.frontend_request_ms / 1000.0 * scale,
        "frontend_token_cost": p.frontend_token_ms / 1000.0 * scale,
    }


@dataclass
class DriftStats:
    """How far the wall-clock driver fell behind its own step timeline."""

    steps: int = 0
    late_steps: int = 0  # steps whose end was observed > 1 ms after its deadline
    max_lag: float = 0.0  # s
    total_lag: float = 0.0  # Σ lag over steps (s)
    resyncs: int = 0  # times the timeline was re-anchored
    busy_time: float = 0.0  # Σ simulated step durations (s)

    @property
    def mean_lag(self) -> float:
        return self.total_lag / self.steps if self.steps else 0.0


class _Stream:
    """Async iterator over one request's outputs; closing or cancelling it aborts the request."""

    def __init__(self, driver: RealtimeDriver, request_id: str) -> None:
        self._driver = driver
        self._id = request_id
        self.queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self._done = False

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._done:
            raise StopAsyncIteration
        try:
            out = await self.queue.get()
        except BaseException:
            await self.aclose()
            raise
        if out.finished:
            self._done = True
            self._driver._forget(self._id)
        return out

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._driver.abort(self._id)


class RealtimeDriver:
    """Runs the engine on ``loop.time()`` in one asyncio task."""

    def __init__(
        self,
        engine: Engine,
        *,
        api_overhead: float | None = None,
        frontend_serial_cost: float = 0.0,
        frontend_token_cost: float = 0.0,
        max_lag: float = 0.25,
    ) -> None:
        self.engine = engine
        self.api_overhead = engine.profile.api_overhead_ms / 1000.0 if api_overhead is None else api_overhead
        self._costs = (frontend_serial_cost, frontend_token_cost)
        self._frontend: FrontendStage | None = None  # made on start (needs the running loop)
        self.max_lag = max_lag
        self.drift = DriftStats()
        self._streams: dict[str, _Stream] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._on_step: list[Callable[[], None]] = []

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def add_step_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` after every step (the metrics exporter refreshes gauges from it)."""
        self._on_step.append(fn)

    async def start(self) -> None:
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._frontend = FrontendStage(
                latency=self.api_overhead,
                request_cost=self._costs[0],
                token_cost=self._costs[1],
                call_at=loop.call_at,
                now=loop.time,
                resolution=0.001,  # uvloop's (and asyncio's clock_resolution order of magnitude)
            )
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sim-engine")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._frontend is not None:
            self._frontend.close()

    def submit(self, req: EngineRequest) -> AsyncIterator[RequestOutput]:
        """Queue ``req``; raises ``ValueError`` at once if the engine would refuse it."""
        self.engine.validate(req)
        if req.request_id in self._streams:
            raise ValueError(f"request id {req.request_id!r} is already in use")
        if self._frontend is None:
            raise RuntimeError("the driver is not started")
        stream = _Stream(self, req.request_id)
        self._streams[req.request_id] = stream
        arrival = self.now()
        self._frontend.submit(lambda: self._add(req, arrival))
        return stream

    def _add(self, req: EngineRequest, arrival: float) -> None:
        stream = self._streams.get(req.request_id)
        if stream is None:
            return
        try:
            self.engine.add_request(req, self.now(), arrival_time=arrival)
        except ValueError:
            # state changed since validation (e.g. adapter unloaded): end the stream as aborted
            self._streams.pop(req.request_id, None)
            stream.queue.put_nowait(_aborted(req, arrival, self.now()))
            return
        self._wake.set()

    def abort(self, request_id: str, reason: str = "abort") -> None:
        """Abort a request (its stream gets no further output); ``reason`` as in ``Engine.abort``."""
        self._streams.pop(request_id, None)  # a request still in the frontend is then dropped there
        self.engine.abort(request_id, self.now(), reason)

    def _forget(self, request_id: str) -> None:
        self._streams.pop(request_id, None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        engine = self.engine
        drift = self.drift
        t = loop.time()  # when the simulated GPU becomes free (absolute timeline)
        while not self._stopping:
            if not engine.has_work():
                self._wake.clear()
                await self._wake.wait()
                t = loop.time()
                continue
            now = loop.time()
            if now - t > self.max_lag:
                drift.resyncs += 1
                t = now
            duration = engine.begin_step(t)
            if duration is None:  # pragma: no cover - has_work() guarantees a step
                continue
            deadline = t + duration
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = max(0.0, loop.time() - deadline)
            drift.steps += 1
            drift.busy_time += duration
            drift.total_lag += lag
            drift.max_lag = max(drift.max_lag, lag)
            if lag > 0.001:
                drift.late_steps += 1
            outputs = engine.end_step(deadline)
            if self._frontend is not None:
                self._frontend.tokens_out(engine.last_step_tokens)
            t = deadline
            streams = self._streams
            for out in outputs:
                stream = streams.get(out.request_id)
                if stream is not None:
                    stream.queue.put_nowait(out)
            for fn in self._on_step:
                fn()


def _aborted(req: EngineRequest, arrival: float, now: float) -> RequestOutput:
    return RequestOutput(
        request_id=req.request_id,
        new_token_ids=(),
        finished=True,
        finish_reason="abort",
        num_prompt_tokens=len(req.prompt_token_ids),
        num_cached_tokens=0,
        num_generated=0,
        arrival_time=arrival,
        first_token_time=None,
        now=now,
    )


class VirtualLoop:
    """Discrete-event loop: a heap of (time, seq, callback); time jumps, nothing sleeps."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0

    def now(self) -> float:
        return self._now

    def call_at(self, t: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` at virtual time ``t`` (clamped to now); ties run in scheduling order."""
        self._seq += 1
        heapq.heappush(self._heap, (max(t, self._now), self._seq, fn))

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.call_at(self._now + delay, fn)

    def pending(self) -> int:
        return len(self._heap)

    def run(self, until: float | None = None) -> None:
        """Run callbacks in time order until the heap is empty or the next one is after ``until``."""
        heap = self._heap
        while heap and (until is None or heap[0][0] <= until):
            t, _, fn = heapq.heappop(heap)
            self._now = t
            fn()
        if until is not None and until > self._now:
            self._now = until


class VirtualDriver:
    """Runs the engine on a ``VirtualLoop``; outputs go to per-request callbacks.

    With ``sparse=True`` a callback receives only the first-token output and the final
    :class:`~infergate.simulator.engine.TimedOutput` (which lists every token's time): the digital
    twin's mode, several times cheaper than one output per token and exactly as informative.
    """

    def __init__(
        self,
        engine: Engine,
        loop: VirtualLoop,
        *,
        api_overhead: float | None = None,
        frontend_serial_cost: float = 0.0,
        frontend_token_cost: float = 0.0,
        sparse: bool = False,
    ) -> None:
        self.engine = engine
        self.loop = loop
        self.sparse = sparse  # callbacks get first-token and final outputs only (Engine.end_step)
        self.api_overhead = engine.profile.api_overhead_ms / 1000.0 if api_overhead is None else api_overhead
        req_cost, tok_cost = frontend_serial_cost, frontend_token_cost
        self._frontend = FrontendStage(
            latency=self.api_overhead,
            request_cost=req_cost,
            token_cost=tok_cost,
            call_at=loop.call_at,
            now=loop.now,
        )
        self._callbacks: dict[str, Callable[[RequestOutput], None]] = {}
        self._stepping = False
        self._on_step: list[Callable[[], None]] = []

    def add_step_listener(self, fn: Callable[[], None]) -> None:
        self._on_step.append(fn)

    def submit(self, req: EngineRequest, on_output: Callable[[RequestOutput], None]) -> None:
        """Queue ``req``; ``ValueError`` at once if the engine would refuse it."""
        self.engine.validate(req)
        if req.request_id in self._callbacks:
            raise ValueError(f"request id {req.request_id!r} is already in use")
        self._callbacks[req.request_id] = on_output
        arrival = self.loop.now()
        self._frontend.submit(lambda: self._add(req, arrival))

    def _add(self, req: EngineRequest, arrival: float) -> None:
        cb = self._callbacks.get(req.request_id)
        if cb is None:
            return  # aborted before it reached the engine
        try:
            self.engine.add_request(req, self.loop.now(), arrival_time=arrival)
        except ValueError:
            del self._callbacks[req.request_id]
            cb(_aborted(req, arrival, self.loop.now()))
            return
        if not self._stepping:
            # start on the next callback at this instant, so simultaneous arrivals share a step
            self._stepping = True
            self.loop.call_at(self.loop.now(), self._begin)

    def abort(self, request_id: str) -> None:
        """Abort a request; its callback receives the final ``abort`` output."""
        cb = self._callbacks.pop(request_id, None)
        out = self.engine.abort(request_id, self.loop.now())
        if cb is not None and out is not None:
            cb(out)

    def _begin(self) -> None:
        duration = self.engine.begin_step(self.loop.now())
        if duration is None:
            self._stepping = False
            return
        self.loop.call_at(self.loop.now() + duration, self._end)

    def _end(self) -> None:
        engine = self.engine
        outputs = engine.end_step(self.loop.now(), sparse=self.sparse)
        self._frontend.tokens_out(engine.last_step_tokens)
        cbs = self._callbacks
        for out in outputs:
            cb = cbs.get(out.request_id)
            if cb is not None:
                if out.finished:
                    del cbs[out.request_id]
                cb(out)
        for fn in self._on_step:
            fn()
        self._begin()
