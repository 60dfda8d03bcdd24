"""The local channel between the gateway process and its workers: framed messages and the
endpoint snapshot they carry.

Each worker holds one end of a Unix socket pair inherited from the gateway process. A frame is a
4-byte big-endian length and a pickled :class:`Message`. Pickle is safe here: both ends are the
same program, the socket pair is never reachable from outside the two processes, and it spares a
schema for the frozen dataclasses the datastore already holds.

The gateway process publishes a :class:`Snapshot` of its datastore after every change (scrapes,
health, membership, models, objectives); a worker applies it to its own datastore, which keeps the
worker's own in-flight counts, so each worker schedules on the shared scrape plus what it sent.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from infergate.config.picker import EndpointPickerConfig
from infergate.config.settings import Settings
from infergate.dataplanes import WorkerListen
from infergate.datastore.store import Datastore
from infergate.requestcontrol.access import Authenticator
from infergate.types import Clock, Endpoint, ModelRewrite, Objective, PoolSpec

__all__ = [
    "Message",
    "Snapshot",
    "WorkerDatastore",
    "WorkerSpec",
    "apply_snapshot",
    "read_message",
    "snapshot_of",
    "write_message",
]

_HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024
"""A frame longer than this is a broken channel, not a message (a snapshot is a few KiB)."""

Kind = Literal["spec", "snapshot", "down", "serving", "stats", "ready", "credits"]


@dataclass(frozen=True, slots=True)
class Message:
    """One frame's content: ``kind`` says what ``body`` is.

    Gateway -> worker: ``spec`` (a WorkerSpec, first), ``snapshot`` (:class:`Snapshot`), ``down``
    (an endpoint key the scraper declared down), ``serving`` (the gateway's readiness, a bool,
    which a plane with a health signal of its own shows: the ext_proc port's health service).
    Worker -> gateway: ``ready`` (serving, on the port its body names), ``stats`` (its in-flight
    count and metric families). Both ways: ``credits`` (what a worker's picks credit: prefix-index
    credits, predicted-latency accounting records, observed-TTFT ratios and in-flight counts, see
    ``.affinity``; the gateway process passes them on to the other workers, and tells them when a
    worker exited).
    """

    kind: Kind
    body: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpec:
    """Everything a worker needs to build the same request path as a single-process gateway."""

    index: int
    settings: Settings
    pool: PoolSpec
    picker: EndpointPickerConfig
    objective_max_tokens: Mapping[str, int]
    api_keys: Authenticator | None
    route_prefixes: tuple[str, ...]
    listen: WorkerListen
    """Where this worker serves (an inherited socket, or an address it binds with SO_REUSEPORT)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What every worker must know about the pool, as the gateway process last saw it."""

    pool: PoolSpec | None
    endpoints: tuple[Endpoint, ...]
    models: Mapping[str, frozenset[str]] = field(default_factory=dict)
    context: Mapping[str, int] = field(default_factory=dict)
    objectives: tuple[Objective, ...] = ()
    rewrites: tuple[ModelRewrite, ...] = ()


def snapshot_of(ds: Datastore) -> Snapshot:
    """The datastore's pool, endpoints (metrics, health), model lists, objectives and rewrites."""
    eps = tuple(ds.endpoints())
    return Snapshot(
        pool=ds.pool,
        endpoints=eps,
        models={e.key: ds.models(e.key) for e in eps},
        context=ds.context_lengths(),
        objectives=tuple(ds.objectives()),
        rewrites=tuple(ds.rewrites()),
    )


class WorkerDatastore(Datastore):
    """A worker's datastore: it also remembers when its in-flight counts changed, so a scrape that
    arrives late (it went through the gateway process) is corrected for what this worker sent and
    saw finish since the scrape was taken.

    Flow control reads a scrape's waiting queue as of the moment it first sees the scrape, and
    adds only the requests sent after that moment. In a worker that moment comes one channel hop
    after the scrape (milliseconds to tens of them on a loaded host); the requests this worker sent
    in between are not in the scraped queue either, and without the correction every new scrape
    erased them: in a test two workers pushed 18 requests into a one-sequence replica's queue
    while each believed it held none.
    """

    _HISTORY = 5.0
    """Seconds of in-flight changes kept (scrapes older than this are stale anyway)."""

    def __init__(self, clock: Clock | None = None, *, staleness: float = 2.0) -> None:
        super().__init__(clock, staleness=staleness)
        self._history: dict[str, deque[tuple[float, int]]] = {}
        self.on_in_flight: Callable[[str, int, int], None] | None = None
        """Called with (endpoint key, in-flight count, of them seen to start) after every change of
        this worker's counts: the worker passes it on to the others (``.affinity.InFlightCount``)."""

    def _record(self, key: str, before: int | None) -> None:
        """Log the count before and after one change (both at the same instant)."""
        ep = self.endpoint(key)
        if ep is None or before is None:
            return
        now = self.clock.now()
        log = self._history.setdefault(key, deque())
        log.append((now, before))
        log.append((now, ep.in_flight))
        while log and log[0][0] < now - self._HISTORY:
            log.popleft()
        if self.on_in_flight is not None and ep.in_flight != before:
            self.on_in_flight(key, ep.in_flight, ep.in_flight_started)

    def _count(self, key: str) -> int | None:
        ep = self.endpoint(key)
        return None if ep is None else ep.in_flight

    def acquire(self, key: str, tokens: int = 0) -> None:
        before = self._count(key)
        super().acquire(key, tokens)
        self._record(key, before)

    def release(self, key: str, tokens: int = 0, *, started: bool = False) -> None:
        before = self._count(key)
        super().release(key, tokens, started=started)
        self._record(key, before)

    def start(self, key: str, tokens: int) -> None:
        old = self.endpoint(key)
        super().start(key, tokens)
        ep = self.endpoint(key)
        if self.on_in_flight is not None and ep is not None and ep is not old:
            self.on_in_flight(key, ep.in_flight, ep.in_flight_started)

    def in_flight_since(self, key: str, when: float) -> int:
        """How many more requests this worker has in flight on ``key`` now than at ``when``."""
        ep = self.endpoint(key)
        log = self._history.get(key)
        if ep is None or not log:
            return 0
        then = ep.in_flight
        for t, count in reversed(log):
            if t <= when:
                then = count
                break
        else:
            then = log[0][1]
        return ep.in_flight - then

    def remove_endpoint(self, key: str) -> None:
        self._history.pop(key, None)
        super().remove_endpoint(key)


def apply_snapshot(ds: Datastore, snap: Snapshot) -> None:
    """Make ``ds`` show ``snap`` while keeping its own in-flight counts (what this process sent);
    a :class:`WorkerDatastore` also counts what it sent since each scrape as waiting."""
    if snap.pool is not None and ds.pool != snap.pool:
        ds.set_pool(snap.pool)
    keys = {e.key for e in snap.endpoints}
    for gone in [e.key for e in ds.endpoints() if e.key not in keys]:
        ds.remove_endpoint(gone)
    for ep in snap.endpoints:
        ds.upsert_endpoint(ep.meta)
        mine = ds.endpoint(ep.key)
        if mine is None:  # pragma: no cover - upsert just added it
            continue
        metrics = ep.metrics
        if metrics.updated_at != mine.metrics.updated_at:  # a new scrape
            late = ds.in_flight_since(ep.key, metrics.updated_at) if isinstance(ds, WorkerDatastore) else 0
            if late:
                metrics = replace(metrics, waiting_queue_size=max(0, metrics.waiting_queue_size + late))
            ds.replace_metrics(ep.key, metrics)
        elif (
            metrics.attributes is not mine.metrics.attributes
            and metrics.attributes != mine.metrics.attributes
        ):
            # set between scrapes (dcgm-data-source)
            ds.replace_metrics(ep.key, replace(mine.metrics, attributes=metrics.attributes))
        ds.set_healthy(ep.key, ep.healthy)
        ds.set_models(ep.key, snap.models.get(ep.key, frozenset()))
        ds.set_max_model_len(ep.key, snap.context.get(ep.key))
    names = {o.name for o in snap.objectives}
    for o in ds.objectives():
        if o.name not in names:
            ds.remove_objective(o.name)
    for o in snap.objectives:
        ds.upsert_objective(o)
    rewrites = {r.name for r in snap.rewrites}
    for r in ds.rewrites():
        if r.name not in rewrites:
            ds.remove_rewrite(r.name)
    for r in snap.rewrites:
        ds.upsert_rewrite(r)


def encode(msg: Message) -> bytes:
    """One frame: length and pickled message."""
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


async def write_message(writer: asyncio.StreamWriter, msg: Message) -> None:
    writer.write(encode(msg))
    await writer.drain()


async def read_message(reader: asyncio.StreamReader) -> Message | None:
    """The next message, or None when the other end closed the channel."""
    try:
        head = await reader.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(head)
        if size > MAX_FRAME:
            raise ValueError(f"worker channel: frame of {size} bytes")
        msg = pickle.loads(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    if not isinstance(msg, Message):
        raise ValueError(f"worker channel: unexpected {type(msg).__name__}")
    return msg
