"""vLLM-format KV-cache events over ZMQ PUB (``--kv-events-config``), calibration doc §6.

Each engine step's events (tuples from ``kvcache``) become one ``EventBatch`` sent as a ZMQ
multipart message ``[topic, seq (uint64 big-endian), msgpack([ts, [events...], dp_rank])]``.
Events are encoded either as positional arrays (``"array"``, vLLM 0.9-0.17 ``array_like``
msgspec structs: ``["BlockStored", hashes, parent, token_ids, block_size, lora_id, medium,
lora_name]``) or as maps with a ``"type"`` key (``"map"``, newer releases). Like vLLM, an
endpoint with ``*``, ``::`` or ``ipc://`` binds; any other endpoint connects (llm-d style, the
endpoint picker listens). Sending never blocks the engine: when the peer is slow, batches drop.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from typing import Any

import msgpack
import zmq

from infergate.simulator.kvcache import KvEvent

_FIELDS: dict[str, tuple[str, ...]] = {
    "BlockStored": (
        "block_hashes",
        "parent_block_hash",
        "token_ids",
        "block_size",
        "lora_id",
        "medium",
        "lora_name",
    ),
    "BlockRemoved": ("block_hashes", "medium"),
    "AllBlocksCleared": (),
}


def encode_event(event: KvEvent, encoding: str = "array") -> Any:
    """One event in vLLM's wire form (``"array"`` positional or ``"map"`` with a type tag)."""
    kind = str(event[0])
    if encoding == "array":
        return list(event)
    fields = _FIELDS[kind]
    out: dict[str, Any] = {"type": kind}
    out.update(zip(fields, event[1:], strict=False))
    return out


def encode_batch(
    events: Sequence[KvEvent], *, ts: float, encoding: str = "array", data_parallel_rank: int | None = None
) -> bytes:
    """msgpack of an ``EventBatch``: ``[ts, [events...], data_parallel_rank]`` (rank None by default,
    as msgspec's array_like encoding writes every field)."""
    batch: list[Any] = [ts, [encode_event(e, encoding) for e in events], data_parallel_rank]
    return bytes(msgpack.packb(batch, use_bin_type=True))


def decode_batch(payload: bytes) -> tuple[float, list[KvEvent]]:
    """Inverse of :func:`encode_batch` for either encoding; events come back as tuples."""
    raw = msgpack.unpackb(payload, raw=False)
    ts = float(raw[0])
    events: list[KvEvent] = []
    for ev in raw[1]:
        if isinstance(ev, dict):
            kind = ev["type"]
            events.append((kind, *(ev.get(f) for f in _FIELDS[kind])))
        else:
            events.append(tuple(ev))
    return ts, events


def binds(endpoint: str) -> bool:
    """vLLM's rule: wildcard hosts and ipc endpoints bind, concrete addresses connect."""
    return "*" in endpoint or "::" in endpoint or endpoint.startswith("ipc://")


class KvEventPublisher:
    """ZMQ PUB socket publishing one batch per engine step; use ``publish`` as the engine's sink."""

    def __init__(
        self,
        endpoint: str = "tcp://*:5557",
        *,
        topic: str = "",
        encoding: str = "array",
        data_parallel_rank: int | None = None,
        hwm: int = 100_000,
    ) -> None:
        if encoding not in ("array", "map"):
            raise ValueError(f"kv event encoding must be 'array' or 'map', not {encoding!r}")
        self.endpoint = endpoint
        self.topic = topic.encode("utf-8")
        self.encoding = encoding
        self.data_parallel_rank = data_parallel_rank
        self._ctx: zmq.Context[Any] = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        if binds(endpoint):
            self._sock.bind(endpoint)
        else:
            self._sock.connect(endpoint)
        self._seq = 0
        self.sent = 0
        self.dropped = 0

    @property
    def last_endpoint(self) -> str:
        """The bound address (resolves a ``tcp://*:0`` wildcard port)."""
        value = self._sock.getsockopt(zmq.LAST_ENDPOINT)
        return value.decode() if isinstance(value, bytes) else str(value)

    def publish(self, events: list[KvEvent]) -> None:
        if not events:
            return
        payload = encode_batch(
            events, ts=time.time(), encoding=self.encoding, data_parallel_rank=self.data_parallel_rank
        )
        seq = struct.pack(">Q", self._seq)
        self._seq += 1
        try:
            self._sock.send_multipart([self.topic, seq, payload], flags=zmq.NOBLOCK)
            self.sent += 1
        except zmq.Again:
            self.dropped += 1

    def close(self) -> None:
        self._sock.close(linger=0)
