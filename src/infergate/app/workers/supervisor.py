"""The gateway process's side of ``proxy.workers``: starts, feeds, supervises and drains workers.

:class:`WorkerPool` stands where a data plane stands (``infergate.dataplanes.DataPlane``), so the
gateway's start, readiness and drain sequence is the same with one process or several.

- start: the data plane's front (``infergate.dataplanes.WorkerFront``) binds what the workers
  serve on: the built-in proxy's listener, which every worker inherits (so ``port`` 0 works and a
  restarted worker serves the same socket without a gap), or the ext_proc picker's ports, which
  it reserves while each worker binds its own with SO_REUSEPORT. Then each worker starts and
  answers ``ready``; a worker that cannot start fails the gateway's start with its exit code;
  then the front starts what stands before the workers (the local Envoy of ``envoy``).
- run: after every datastore change, one snapshot frame is written to every worker; the prefix
  credits a worker sends are passed on to the others (:mod:`.affinity`). A worker that exits
  while the gateway runs is restarted (back-off from 0.5 s doubling to 10 s; reset after a minute
  of service); its counters stay in ``/metrics``. The gateway's readiness goes to every worker
  (``serving``), where a plane shows it on a health signal of its own (the ext_proc port).
- stop: the front stops taking requests (gRPC health NOT_SERVING, Envoy stops), SIGTERM to every
  worker (each stops accepting and drains within ``proxy.shutdown_grace``), then SIGKILL for any
  still alive ten seconds past the grace; then the front releases its sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, cast

from infergate.config.picker import EndpointPickerConfig
from infergate.config.settings import Settings
from infergate.dataplanes import DataPlaneContext, WorkerFront, WorkerListen
from infergate.requestcontrol.access import Authenticator

from .affinity import InFlightCount
from .channel import Message, WorkerSpec, encode, read_message, snapshot_of, write_message
from .metrics import Family, MergedExposition

__all__ = ["WorkerPool"]

log = logging.getLogger("infergate.workers")

_START_LIMIT = 120.0
"""Seconds a worker may take to import, build its core and answer ready (a loaded host is slow)."""
_KILL_AFTER = 10.0
"""Seconds past ``proxy.shutdown_grace`` before a worker that does not exit is killed."""
_MAX_BACKLOG = 4 * 1024 * 1024
"""Bytes of unsent frames after which a worker that reads nothing (stopped) misses snapshots."""


def _nothing() -> None:
    return None


async def _wait(event: asyncio.Event) -> None:
    await event.wait()


class _Worker:
    __slots__ = ("done", "in_flight", "index", "pid", "port", "proc", "ready", "stale", "writer")

    def __init__(self, index: int, proc: asyncio.subprocess.Process, writer: asyncio.StreamWriter) -> None:
        self.index = index
        self.proc = proc
        self.pid = proc.pid
        self.writer = writer
        self.port = 0
        """The port the worker serves (its ``ready`` says)."""
        self.in_flight = 0
        self.ready = asyncio.Event()
        self.done = asyncio.Event()
        self.stale = False


class WorkerPool:
    """``proxy.workers`` processes serving the inference listener; see the module docstring."""

    def __init__(self, settings: Settings, front: WorkerFront) -> None:
        self._settings = settings
        self._front = front
        self._count = settings.proxy.workers
        self._ctx: DataPlaneContext | None = None
        self._picker: EndpointPickerConfig | None = None
        self._objective_max_tokens: Mapping[str, int] = {}
        self._api_keys: Authenticator | None = None
        self._listens: list[WorkerListen] = []
        self._serving: bool | None = None
        """The gateway's readiness as last told (None: not yet; a worker starts serving)."""
        self._workers: dict[int, _Worker] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._unsubscribe: Callable[[], None] = _nothing
        self._exposition: MergedExposition | None = None
        self._stopping = False
        seed = os.environ.get("PYTHONHASHSEED", "")
        # one hash seed for every worker, so their prefix-index block hashes agree (.affinity)
        self._hash_seed = seed if seed.isdigit() else str(random.SystemRandom().randrange(2**32))
        self.restarts = 0
        """Workers started again after an exit (for tests and the log)."""

    def configure(
        self,
        *,
        picker: EndpointPickerConfig,
        objective_max_tokens: Mapping[str, int],
        api_keys: Authenticator | None,
    ) -> None:
        """What the gateway resolved for the core, which each worker builds again."""
        self._picker = picker
        self._objective_max_tokens = dict(objective_max_tokens)
        self._api_keys = api_keys

    # ------------------------------------------------------------------ DataPlane
    def attach(self, ctx: DataPlaneContext) -> None:
        self._ctx = ctx
        self._front.attach(ctx)
        self._exposition = MergedExposition(ctx.metrics.registry)
        ctx.metrics.expose(self._exposition)

    @property
    def front(self) -> WorkerFront:
        """The data plane's part in this process (the local Envoy, the gRPC health port)."""
        return self._front

    @property
    def port(self) -> int:
        return self._front.port

    @property
    def in_flight(self) -> int:
        """Requests in flight over every worker, as each last reported (once a second)."""
        return sum(w.in_flight for w in self._workers.values())

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers running now."""
        return [w.pid for w in self._workers.values() if not w.done.is_set()]

    def describe(self) -> list[dict[str, Any]]:
        """Each serving worker as it last reported: pid, port, in-flight requests, requests counted
        (a worker starting again appears once it answered ``ready``)."""
        exposition = self._exposition
        return [
            {
                "index": w.index,
                "pid": w.pid,
                "port": w.port,
                "in_flight": w.in_flight,
                "requests": exposition.sample_total(w.index, "inference_objective_request_total")
                if exposition is not None
                else 0.0,
            }
            for w in sorted(self._workers.values(), key=lambda w: w.index)
            if w.ready.is_set() and not w.done.is_set()
        ]

    async def prepare(self) -> None:
        """What the front must answer before routing (the ``epp`` gRPC health port)."""
        await self._front.prepare()

    async def set_ready(self, ready: bool) -> None:
        """The front's health signal, and every worker's (the ext_proc port's health service)."""
        self._serving = ready
        await self._front.set_ready(ready)
        self._broadcast(encode(Message("serving", ready)))

    def endpoint_down(self, key: str) -> None:
        self._broadcast(encode(Message("down", key)))

    async def start(self, host: str, port: int) -> None:
        if self._ctx is None or self._picker is None:
            raise RuntimeError("the worker pool starts once the core is attached and configured")
        self._listens = self._front.bind(host, port, self._count)
        self._unsubscribe = self._ctx.datastore.add_listener(self._changed.set)
        self._spawn_task(self._publish())
        try:
            await asyncio.gather(*(self._start_worker(i) for i in range(self._count)))
            await self._front.start(host, port)
        except BaseException:
            await self.stop()
            raise
        ports = sorted({w.port for w in self._workers.values()})
        log.info("%d worker processes serve port(s) %s: pids %s", self._count, ports, self.pids)

    async def stop(self) -> None:
        """SIGTERM every worker, wait for each to drain, kill stragglers. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        self._unsubscribe()
        self._broadcast(encode(Message("serving", False)))
        await self._front.stop()
        workers = list(self._workers.values())
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGTERM)
        limit = self._settings.proxy.shutdown_grace + _KILL_AFTER
        waits = [asyncio.create_task(_wait(w.done)) for w in workers]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=limit)
            for task in pending:
                task.cancel()
        for w in workers:
            if w.proc.returncode is None:
                log.warning("worker %d (pid %d) did not drain in %.0fs: killed", w.index, w.pid, limit)
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
                await w.proc.wait()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._front.close()

    # ------------------------------------------------------------------ workers
    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spec(self, index: int) -> WorkerSpec:
        ctx = self._ctx
        assert ctx is not None and self._picker is not None
        return WorkerSpec(
            index=index,
            settings=self._settings,
            pool=ctx.pool,
            picker=self._picker,
            objective_max_tokens=self._objective_max_tokens,
            api_keys=self._api_keys,
            route_prefixes=tuple(ctx.route_prefixes),
            listen=self._listens[index],
        )

    async def _start_worker(self, index: int) -> None:
        """Start worker ``index`` and wait for its ``ready``; raises RuntimeError if it exits first."""
        assert self._ctx is not None
        listen_fd = self._listens[index].fd
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "infergate.app.workers.child",
                "--channel-fd",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(), *(() if listen_fd is None else (listen_fd,))),
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONHASHSEED": self._hash_seed},
            )
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        worker = self._workers[index] = _Worker(index, proc, writer)
        await write_message(writer, Message("spec", self._spec(index)))
        await write_message(writer, Message("snapshot", snapshot_of(self._ctx.datastore)))
        if self._serving is not None:
            await write_message(writer, Message("serving", self._serving))
        self._spawn_task(self._listen(worker, reader))
        self._spawn_task(self._watch(worker))
        ready = asyncio.create_task(_wait(worker.ready))
        exited = asyncio.create_task(_wait(worker.done))
        await asyncio.wait((ready, exited), timeout=_START_LIMIT, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        exited.cancel()
        if not worker.ready.is_set():
            if proc.returncode is None:
                proc.kill()
            raise RuntimeError(f"worker {index} did not start (exit code {proc.returncode})")

    async def _listen(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        """The worker's messages: ``ready`` once, then ``stats`` until its end closes."""
        while (msg := await read_message(reader)) is not None:
            if msg.kind == "ready":
                worker.port = int(msg.body)
                worker.ready.set()
            elif msg.kind == "credits":
                self._broadcast(encode(msg), skip=worker)
            elif msg.kind == "stats":
                in_flight, families = cast(tuple[int, list[Family]], msg.body)
                worker.in_flight = in_flight
                if self._exposition is not None:
                    self._exposition.update(worker.index, families)

    async def _watch(self, worker: _Worker) -> None:
        """Wait for the worker's exit; restart it unless the gateway is stopping."""
        code = await worker.proc.wait()
        worker.in_flight = 0
        worker.writer.close()
        # its requests are gone with it: the other workers' schedulers stop counting them
        self._broadcast(encode(Message("credits", [InFlightCount(worker.index, None)])), skip=worker)
        if self._exposition is not None:
            self._exposition.retire(worker.index)
        worker.done.set()
        if self._stopping or not worker.ready.is_set():
            return
        log.error("worker %d (pid %d) exited with code %s; restarting it", worker.index, worker.pid, code)
        await self._restart(worker.index)

    async def _restart(self, index: int) -> None:
        backoff = 0.5
        loop = asyncio.get_running_loop()
        while not self._stopping:
            started = loop.time()
            try:
                await self._start_worker(index)
                self.restarts += 1
                return
            except (RuntimeError, OSError) as exc:
                log.error("worker %d could not start again: %s; next try in %.1fs", index, exc, backoff)
            if loop.time() - started > 60.0:
                backoff = 0.5
            await asyncio.sleep(backoff)
            backoff = min(10.0, backoff * 2)

    # ------------------------------------------------------------------ snapshots
    def _broadcast(self, frame: bytes, *, skip: _Worker | None = None) -> None:
        for w in self._workers.values():
            if w is skip or w.done.is_set() or w.writer.is_closing():
                continue
            if w.writer.transport.get_write_buffer_size() > _MAX_BACKLOG:
                if not w.stale:
                    log.warning("worker %d reads no snapshots: skipping them until it does", w.index)
                w.stale = True
                continue
            w.stale = False
            w.writer.write(frame)

    async def _publish(self) -> None:
        """One snapshot per batch of datastore changes (the scraper writes several per scrape)."""
        ctx = self._ctx
        assert ctx is not None
        while True:
            await self._changed.wait()
            self._changed.clear()
            self._broadcast(encode(Message("snapshot", snapshot_of(ctx.datastore))))
