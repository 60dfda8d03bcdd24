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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from infergate.config.picker import EndpointPickerConfig
from infergate.config.settings import Settings
from infergate.datastore.store import Datastore
from infergate.requestcontrol.access import Authenticator
from infergate.types import Endpoint, ModelRewrite, Objective, PoolSpec

__all__ = [
    "Message",
    "Snapshot",
    "WorkerSpec",
    "apply_snapshot",
    "read_message",
    "snapshot_of",
    "write_message",
]

_HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024
"""A frame longer than this is a broken channel, not a message (a snapshot is a few KiB)."""

Kind = Literal["spec", "snapshot", "down", "stats", "ready"]


@dataclass(frozen=True, slots=True)
class Message:
    """One frame's content: ``kind`` says what ``body`` is.

    Gateway -> worker: ``spec`` (a WorkerSpec, first), ``snapshot`` (:class:`Snapshot`), ``down``
    (an endpoint key the scraper declared down). Worker -> gateway: ``ready`` (serving), ``stats``
    (its in-flight count and metric families).
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


def apply_snapshot(ds: Datastore, snap: Snapshot) -> None:
    """Make ``ds`` show ``snap`` while keeping its own in-flight counts (what this process sent)."""
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
        if mine.metrics != ep.metrics:
            ds.update_metrics(ep.key, ep.metrics)
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
