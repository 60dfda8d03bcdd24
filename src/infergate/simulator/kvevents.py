"""vLLM-format KV-cache events over ZMQ PUB (``--kv-events-config``), as vLLM 0.33 publishes them.

Each engine step's events (tuples from ``kvcache``) become one ``EventBatch`` sent as a ZMQ
multipart message ``[topic, seq (uint64 big-endian), msgpack([ts, [events...], dp_rank])]``.

Encodings (``--kv-events-encoding``):

* ``map`` (default, vLLM 0.33): msgspec tagged structs without ``array_like``, i.e. maps whose
  first key is ``"type"``; ``omit_defaults`` drops fields left at their default (None), so a
  ``BlockStored`` carries ``block_hashes, parent_block_hash, token_ids, block_size, lora_id,
  medium, lora_name, extra_keys, group_idx`` and a ``BlockRemoved`` ``block_hashes, medium,
  group_idx``; the batch's ``data_parallel_rank`` is 0.
* ``array`` (vLLM 0.9-0.17, what llm-d's adapter decodes): positional arrays
  ``["BlockStored", hashes, parent, token_ids, block_size, lora_id, medium, lora_name]`` and
  ``["BlockRemoved", hashes, medium]``, rank nil.

Like vLLM, an endpoint with ``*``, ``::``, ``ipc://`` or ``inproc://`` binds; any other endpoint
connects (llm-d style, the endpoint picker listens). Sending never blocks the engine: when the peer
is slow, batches drop.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from typing import Any

import msgpack
import zmq

from infergate.simulator.kvcache import KvEvent

ENCODINGS = ("map", "array")

# field names of each event tuple's positions (after the kind), vLLM 0.33's struct order
_FIELDS: dict[str, tuple[str, ...]] = {
    "BlockStored": (
        "block_hashes",
        "parent_block_hash",
        "token_ids",
        "block_size",
        "lora_id",
        "medium",
        "lora_name",
        "extra_keys",
        "group_idx",
    ),
    "BlockRemoved": ("block_hashes", "medium", "group_idx"),
    "AllBlocksCleared": (),
}
# the positional (legacy) form has the fields of vLLM <= 0.17 only
_LEGACY_LEN = {"BlockStored": 8, "BlockRemoved": 3, "AllBlocksCleared": 1}
# fields with a default in vLLM's structs: omitted when None (omit_defaults)
_OPTIONAL = frozenset({"extra_keys", "group_idx"})


def encode_event(event: KvEvent, encoding: str = "map") -> Any:
    """One event in vLLM's wire form (``"map"`` with a type tag, or ``"array"`` positional)."""
    kind = str(event[0])
    if encoding == "array":
        return list(event[: _LEGACY_LEN[kind]])
    out: dict[str, Any] = {"type": kind}
    for name, value in zip(_FIELDS[kind], event[1:], strict=False):
        if value is not None or name not in _OPTIONAL:
            out[name] = value
    return out


# msgspec reserves a struct's map header for all its fields (then patches the count): BlockStored
# (15 fields + tag) always gets a 3-byte map16 header, smaller structs a fixmap
_MAP16_KINDS = frozenset({"BlockStored"})


def _pack_event(event: Any, packer: msgpack.Packer) -> bytes:
    if isinstance(event, dict) and event.get("type") in _MAP16_KINDS:
        parts = [b"\xde", struct.pack(">H", len(event))]
        for key, value in event.items():
            parts.append(packer.pack(key))
            parts.append(packer.pack(value))
        return b"".join(parts)
    return bytes(packer.pack(event))


def encode_batch(
    events: Sequence[KvEvent], *, ts: float, encoding: str = "map", data_parallel_rank: int | None = 0
) -> bytes:
    """msgpack of an ``EventBatch`` ``[ts, [events...], data_parallel_rank]``, byte for byte what
    vLLM's msgspec encoder writes for the same events."""
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack_array_header(3), packer.pack(ts), packer.pack_array_header(len(events))]
    parts.extend(_pack_event(encode_event(e, encoding), packer) for e in events)
    parts.append(packer.pack(data_parallel_rank))
    return b"".join(parts)


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
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


class KvEventPublisher:
    """ZMQ PUB socket publishing one batch per engine step; use ``publish`` as the engine's sink."""

    def __init__(
        self,
        endpoint: str = "tcp://*:5557",
        *,
        topic: str = "",
        encoding: str = "map",
        data_parallel_rank: int | None = None,
        hwm: int = 100_000,
    ) -> None:
        """``data_parallel_rank`` None means vLLM's default for the encoding: 0 for ``map``
        (0.33's publisher sets it), nil for the legacy ``array`` form."""
        if encoding not in ENCODINGS:
            raise ValueError(f"kv event encoding must be 'map' or 'array', not {encoding!r}")
        self.endpoint = endpoint
        self.topic = topic.encode("utf-8")
        self.encoding = encoding
        if data_parallel_rank is None and encoding == "map":
            data_parallel_rank = 0
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

    def source(self) -> dict[str, Any]:
        """This publisher as vLLM's ``GET /kv_event_sources`` reports a data-parallel rank: the
        resolved address of a bound socket (a wildcard port becomes the real one), the
        configured one of a connecting socket; no replay socket."""
        return {
            "publisher": "zmq",
            "endpoint": self.last_endpoint if binds(self.endpoint) else self.endpoint,
            "replay_endpoint": None,
            "topic": self.topic.decode("utf-8"),
        }

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
