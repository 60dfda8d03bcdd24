"""One worker process of ``proxy.workers`` > 1 (``python -m infergate.app.workers.child``).

The gateway process starts it with its end of the channel inherited, and for the built-in proxy
the inference listener too (bound and listening, shared by every worker: the kernel hands each new
connection to one of them); an ext_proc picker worker binds its gRPC port itself with SO_REUSEPORT
(the spec's ``listen`` says where). It receives the
:class:`~infergate.app.workers.channel.WorkerSpec`, builds the same request path as a
single-process gateway (``app.core.build_core``: scheduler, flow control, Director) around its own
datastore, and applies every snapshot the gateway process publishes.
It scrapes nothing itself: its datastore's metrics, health and membership are the gateway
process's; its in-flight counts are its own.

It drains and exits on SIGTERM (sent by the gateway process on shutdown) and when the channel
closes (the gateway process is gone, even killed: no worker outlives it). SIGINT is ignored: a
terminal's Ctrl-C reaches the whole process group, and the gateway process decides the shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import socket
import sys
from typing import cast

from infergate.dataplanes import DataPlaneContext, data_plane_factory
from infergate.telemetry import GatewayMetrics
from infergate.tracing import tracer_from_env
from infergate.types import MonotonicClock

from ..core import build_core, start_plugin_tasks
from ..logs import configure_logging
from ..process import run_async, tune_gc_for_serving
from ..tasks import Supervisor
from .affinity import (
    Credit,
    InFlightCount,
    LatencyRecord,
    TpotRecord,
    TtftRecord,
    share_latency_accounting,
    share_prefix_credits,
)
from .channel import (
    Message,
    Snapshot,
    WorkerDatastore,
    WorkerSpec,
    apply_snapshot,
    encode,
    read_message,
    write_message,
)
from .metrics import PUSH_INTERVAL, export_families

__all__ = ["main"]

log = logging.getLogger("infergate.worker")

Shared = Credit | LatencyRecord | TtftRecord | TpotRecord | InFlightCount
"""What workers pass each other through the gateway process (``credits`` frames)."""


class _Worker:
    """The request path of one worker around its own datastore."""

    def __init__(self, spec: WorkerSpec, writer: asyncio.StreamWriter) -> None:
        s = spec.settings
        self.spec = spec
        self.writer = writer
        self.metrics = GatewayMetrics()
        clock = MonotonicClock()  # CLOCK_MONOTONIC: the same clock the gateway process stamps scrapes with
        self.datastore = WorkerDatastore(clock, staleness=s.scrape.staleness)
        self.datastore.set_pool(spec.pool)
        rng = random.Random(s.seed + spec.index) if s.seed is not None else random.Random()
        factory = data_plane_factory(s.data_plane)
        self.core = core = build_core(
            self.datastore,
            spec.pool,
            picker=spec.picker,
            settings=s,
            metrics=self.metrics,
            clock=clock,
            rng=rng,
            honor_subset_hint=factory.honors_subset_hint and s.subset_filter,
            connection_limit=s.proxy.max_connections_per_endpoint if factory.queues_connections else None,
            objective_max_tokens=spec.objective_max_tokens,
        )
        core.director.configure_access(
            authenticator=spec.api_keys, limits=core.director.limits, control_headers=s.auth.control_headers
        )
        core.director.set_tracer(tracer_from_env())
        if factory.worker_plane is None:
            raise RuntimeError(f"the {s.data_plane} data plane has no worker processes")
        self.plane = factory.worker_plane(s)
        self.plane.attach(
            DataPlaneContext(
                settings=s,
                director=core.director,
                datastore=self.datastore,
                pool=spec.pool,
                metrics=self.metrics,
                rng=rng,
                route_prefixes=spec.route_prefixes,
            )
        )
        self.stop = asyncio.Event()
        self._credits: list[Shared] = []
        self.indices = share_prefix_credits(core.scheduler, self._publish)
        self.latency = share_latency_accounting(core.scheduler, self._publish)
        index = spec.index
        self.datastore.on_in_flight = lambda key, count, started: self._publish(
            InFlightCount(index, key, count, started)
        )

    def _publish(self, credit: Shared) -> None:
        """Batch this worker's prefix credits, latency records, TTFT/TPOT observations and in-flight
        counts; one frame per event-loop turn."""
        if not self._credits:
            asyncio.get_running_loop().call_soon(self._flush)
        self._credits.append(credit)

    def _flush(self) -> None:
        batch, self._credits = self._credits, []
        # in-flight counts are absolute: of several for one endpoint in a turn, the last says all
        last = {c.endpoint: i for i, c in enumerate(batch) if isinstance(c, InFlightCount)}
        if len(last) < sum(isinstance(c, InFlightCount) for c in batch):
            batch = [
                c for i, c in enumerate(batch) if not isinstance(c, InFlightCount) or last[c.endpoint] == i
            ]
        if batch and not self.writer.is_closing():
            self.writer.write(encode(Message("credits", batch)))

    async def follow(self, reader: asyncio.StreamReader) -> None:
        """Apply what the gateway process sends; its end closing means it is gone: drain."""
        while True:
            msg = await read_message(reader)
            if msg is None:
                if not self.stop.is_set():
                    log.warning("worker %d: the gateway process is gone; draining", self.spec.index)
                self.stop.set()
                return
            if msg.kind == "snapshot":
                apply_snapshot(self.datastore, cast(Snapshot, msg.body))
            elif msg.kind == "down":
                self.plane.endpoint_down(str(msg.body))
            elif msg.kind == "serving":
                await self.plane.set_ready(bool(msg.body))
            elif msg.kind == "credits":
                self.apply_credits(cast(list[Shared], msg.body))

    def apply_credits(self, batch: list[Shared]) -> None:
        """Another worker's picks and answers: prefix credits to the indexes, latency records and
        TTFT/TPOT observations to the scorers, in-flight counts to the datastore."""
        for credit in batch:
            if isinstance(credit, LatencyRecord | TtftRecord | TpotRecord):
                for scorer in self.latency:
                    scorer.apply_accounting(credit)
            elif isinstance(credit, InFlightCount):
                if credit.endpoint is None:
                    self.datastore.forget_peer(credit.worker)
                else:
                    self.datastore.set_peer_in_flight(
                        credit.worker, credit.endpoint, credit.count, credit.started
                    )
            else:
                for index in self.indices:
                    index.add_remote(credit)

    async def push_stats(self) -> None:
        """The in-flight count and metric families, every ``PUSH_INTERVAL`` seconds."""
        while True:
            await self.send_stats()
            await asyncio.sleep(PUSH_INTERVAL)

    async def send_stats(self) -> None:
        stats = (self.plane.in_flight, export_families(self.metrics.registry))
        await write_message(self.writer, Message("stats", stats))

    async def run(self, reader: asyncio.StreamReader) -> int:
        tasks = Supervisor()
        unsubscribe = start_plugin_tasks(self.core, self.datastore, tasks.spawn)
        tasks.spawn("channel", lambda: self.follow(reader), restart=False)
        await self.plane.start_worker(self.spec.listen)
        await write_message(self.writer, Message("ready", self.plane.port))
        tune_gc_for_serving()
        tasks.spawn("stats", self.push_stats)
        await self.stop.wait()
        await self.plane.stop()  # stop accepting, drain within proxy.shutdown_grace
        self.core.flow.close()
        unsubscribe()
        await tasks.stop()
        try:
            await self.send_stats()  # the final counts, so /metrics keeps every request served
            self.writer.close()
        except (ConnectionError, RuntimeError):
            pass
        return 0


def _tag_logs(index: int) -> None:
    """Logger names get the worker's index (``infergate.request[w1]``): whose line it is."""
    suffix = f"[w{index}]"

    def tag(record: logging.LogRecord) -> bool:
        if not record.name.endswith(suffix):
            record.name += suffix
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)


async def _serve(channel_fd: int) -> int:
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=channel_fd))
    first = await read_message(reader)
    if first is None or first.kind != "spec":
        print("infergate worker: no spec from the gateway process", file=sys.stderr)
        return 2
    spec = cast(WorkerSpec, first.body)
    configure_logging(spec.settings)
    _tag_logs(spec.index)
    worker = _Worker(spec, writer)
    snap = await read_message(reader)  # the pool as it is now, before the first request
    if snap is None or snap.kind != "snapshot":
        return 2
    apply_snapshot(worker.datastore, cast(Snapshot, snap.body))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, worker.stop.set)
    return await worker.run(reader)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infergate-worker")
    parser.add_argument("--channel-fd", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return run_async(lambda: _serve(args.channel_fd))


if __name__ == "__main__":
    sys.exit(main())
