"""Receiving KV events over ZMQ in both topologies vLLM supports, into a :class:`KvBlockIndex`.

* **bind** (``zmqEndpoint`` set, as llm-d configures its indexer): the gateway binds one SUB socket
  and every model server's publisher connects to it. Publishers are told apart by their topic,
  ``kv@<pod-ip>@<model>`` (or ``kv@<pod-ip>:<port>@<model>`` when several servers share an
  address); a message whose topic names no pod cannot be attributed and is counted and dropped.
* **connect** (``discoverPods``): the gateway connects one SUB socket to each endpoint's bound
  publisher (``tcp://<address>:<socketPort>``) and the socket names the source, whatever the topic.

Both subscribe with ``topicFilter``. Each message goes through :meth:`KvBlockIndex.ingest`, which
checks its sequence number and resyncs that source on a gap or a publisher restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from infergate.kvevents.index import KvBlockIndex
from infergate.kvevents.wire import DecodeError, decode_frame, parse_topic

__all__ = ["KvEventSubscriber", "SubscriberStats"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SubscriberStats:
    messages: int = 0
    malformed: int = 0
    unattributed: int = 0
    """Messages on the bound socket whose topic names no pod (``kv@<pod>@<model>``)."""


class KvEventSubscriber:
    """Owns the SUB sockets; ``run`` receives until cancelled. Single event loop, no threads."""

    def __init__(
        self,
        index: KvBlockIndex,
        *,
        bind: str | None = None,
        topic_filter: str = "kv@",
        connect_port: int | None = None,
    ) -> None:
        self.index = index
        self.bind = bind
        self.topic_filter = topic_filter.encode()
        self.connect_port = connect_port
        self.stats = SubscriberStats()
        self.models: dict[str, str] = {}
        """Source → model named by its topic (the base model its unadapted blocks belong to)."""
        self._ctx = zmq.asyncio.Context.instance()
        self._bound: zmq.asyncio.Socket | None = None
        self._peers: dict[str, tuple[zmq.asyncio.Socket, asyncio.Task[None]]] = {}
        self._wanted: dict[str, str] = {}
        self._running: asyncio.Future[None] | None = None
        self.bound_endpoint: str | None = None

    def _socket(self) -> zmq.asyncio.Socket:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.SUBSCRIBE, self.topic_filter)
        return sock

    def open(self) -> None:
        """Bind the shared socket now (so the address is known before ``run`` is scheduled)."""
        if self.bind is not None and self._bound is None:
            self._bound = self._socket()
            self._bound.bind(self.bind)
            last = self._bound.getsockopt(zmq.LAST_ENDPOINT)
            self.bound_endpoint = last.decode() if isinstance(last, bytes) else str(last)

    def set_peers(self, peers: Iterable[tuple[str, str]]) -> None:
        """Connect mode: ``(source, zmq address)`` of every publisher to follow; others are closed."""
        self._wanted = dict(peers)
        self._reconcile()

    def _reconcile(self) -> None:
        if self._running is None:
            return
        for source in [s for s in self._peers if s not in self._wanted or self._peers[s][0].closed]:
            sock, task = self._peers.pop(source)
            task.cancel()
            sock.close(linger=0)
        for source, address in self._wanted.items():
            if source in self._peers:
                continue
            sock = self._socket()
            sock.connect(address)
            task = asyncio.get_running_loop().create_task(
                self._pump(sock, source), name=f"kv-events-{source}"
            )
            self._peers[source] = (sock, task)

    async def run(self) -> None:
        """Receive until cancelled; closes every socket on the way out."""
        self.open()
        self._running = asyncio.get_running_loop().create_future()
        self._reconcile()
        try:
            if self._bound is not None:
                await self._pump(self._bound, None)
            else:
                await self._running
        finally:
            self._running = None
            for sock, task in self._peers.values():
                task.cancel()
                sock.close(linger=0)
            self._peers.clear()
            if self._bound is not None:
                self._bound.close(linger=0)
                self._bound = None

    async def _pump(self, sock: zmq.asyncio.Socket, source: str | None) -> None:
        while True:
            parts = await sock.recv_multipart()
            self.handle(parts, source)

    def handle(self, parts: list[Any], source: str | None) -> None:
        """One received message (also the entry point for tests and the twin)."""
        self.stats.messages += 1
        try:
            frame = decode_frame([bytes(p) for p in parts])
        except DecodeError as exc:
            self.stats.malformed += 1
            log.debug("kv events: dropped malformed message: %s", exc)
            return
        parsed = parse_topic(frame.topic)
        if source is None:
            if parsed is None:
                self.stats.unattributed += 1
                return
            source = parsed[0]
        if parsed is not None and parsed[1]:
            self.models[source] = parsed[1]
        if not self.index.ingest(source, frame.seq, frame.events):
            log.info("kv events from %s: sequence gap (now %d); its blocks are rebuilt", source, frame.seq)
