"""Decoding vLLM's KV-event messages: ZMQ framing, topics and both payload encodings.

A publisher sends one multipart message per engine step: ``[topic, seq, payload]`` where ``seq``
is an unsigned 64-bit big-endian counter (so a consumer can notice lost messages) and ``payload``
is a msgpack ``EventBatch`` ``[ts, [event, ...], data_parallel_rank]``. Events come in two
encodings and both are read here, per event, so one subscriber serves a mixed fleet:

* vLLM 0.33: tagged maps ``{"type": "BlockStored", "block_hashes": ..., ...}``;
* vLLM 0.9-0.17 (and what other engines copy): positional arrays
  ``["BlockStored", hashes, parent, token_ids, block_size, lora_id, medium, lora_name]``,
  ``["BlockRemoved", hashes, medium]``, ``["AllBlocksCleared"]``.

Hashes stay opaque (an int, or the raw digest bytes when the engine publishes those): the index
keys blocks by hashes it computes from ``token_ids`` and uses the engine's only to follow parents
and removals.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = [
    "AllBlocksCleared",
    "BlockRemoved",
    "BlockStored",
    "DecodeError",
    "EngineHash",
    "Event",
    "Frame",
    "decode_frame",
    "decode_payload",
    "parse_topic",
]

EngineHash = int | bytes
"""A block hash as the engine published it: the low 64 bits as an int, or the full digest."""


class DecodeError(ValueError):
    """A message that is not a vLLM KV-event message; the subscriber counts and drops it."""


@dataclass(frozen=True, slots=True)
class BlockStored:
    """Full blocks newly stored on one device tier, in prefix order; ``parent`` is the hash of the
    block before the first one (None: the first block of a sequence)."""

    block_hashes: tuple[EngineHash, ...]
    parent: EngineHash | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_name: str | None = None
    medium: str | None = None
    extra_keys: Any = None


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: tuple[EngineHash, ...]
    medium: str | None = None


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


Event = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded message: who sent it (from the topic), its sequence number and its events."""

    topic: str
    seq: int
    ts: float
    events: tuple[Event, ...]
    data_parallel_rank: int | None


def parse_topic(topic: str) -> tuple[str, str] | None:
    """``kv@<pod>@<model>`` → ``(pod, model)``; ``<pod>`` is an address or ``address:port``.

    None for any other topic (vLLM's default topic is empty: such a publisher can only be told
    apart by the socket it arrives on, i.e. when the gateway connects to it).
    """
    parts = topic.split("@", 2)
    if len(parts) != 3 or parts[0] != "kv" or not parts[1]:
        return None
    return parts[1], parts[2]


def _hashes(value: Any) -> tuple[EngineHash, ...]:
    if not isinstance(value, list | tuple):
        raise DecodeError("block_hashes must be an array")
    for h in value:
        if not isinstance(h, int | bytes):
            raise DecodeError(f"block hash of type {type(h).__name__}")
    return tuple(value)


def _parent(value: Any) -> EngineHash | None:
    if value is None or isinstance(value, int | bytes):
        return value
    raise DecodeError(f"parent_block_hash of type {type(value).__name__}")


def _stored(
    hashes: Any, parent: Any, tokens: Any, block_size: Any, medium: Any, lora: Any, extra: Any
) -> BlockStored:
    hs = _hashes(hashes)
    if not isinstance(tokens, list | tuple) or not isinstance(block_size, int) or block_size <= 0:
        raise DecodeError("BlockStored needs token_ids and a positive block_size")
    if len(tokens) != len(hs) * block_size:
        raise DecodeError(f"BlockStored: {len(tokens)} token ids for {len(hs)} blocks of {block_size}")
    return BlockStored(
        hs,
        _parent(parent),
        tuple(tokens),
        block_size,
        lora if isinstance(lora, str) else None,
        medium if isinstance(medium, str) else None,
        extra,
    )


def _event(raw: Any) -> Event | None:
    """One event in either encoding; None for an event type this consumer does not know."""
    if isinstance(raw, dict):
        kind = raw.get("type")
        if kind == "BlockStored":
            return _stored(
                raw.get("block_hashes"),
                raw.get("parent_block_hash"),
                raw.get("token_ids"),
                raw.get("block_size"),
                raw.get("medium"),
                raw.get("lora_name"),
                raw.get("extra_keys"),
            )
        if kind == "BlockRemoved":
            medium = raw.get("medium")
            return BlockRemoved(_hashes(raw.get("block_hashes")), medium if isinstance(medium, str) else None)
        if kind == "AllBlocksCleared":
            return AllBlocksCleared()
        return None
    if isinstance(raw, list | tuple) and raw:
        kind, fields = raw[0], list(raw[1:])
        fields += [None] * (7 - len(fields))
        if kind == "BlockStored":
            hashes, parent, tokens, block_size, _lora_id, medium, lora = fields[:7]
            return _stored(hashes, parent, tokens, block_size, medium, lora, None)
        if kind == "BlockRemoved":
            medium = fields[1]
            return BlockRemoved(_hashes(fields[0]), medium if isinstance(medium, str) else None)
        if kind == "AllBlocksCleared":
            return AllBlocksCleared()
        return None
    raise DecodeError(f"event of type {type(raw).__name__}")


def decode_payload(payload: bytes) -> tuple[float, tuple[Event, ...], int | None]:
    """An ``EventBatch``: ``(ts, events, data_parallel_rank)``; unknown event types are skipped
    (a newer engine may add kinds that change nothing this index tracks)."""
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise DecodeError(f"payload is not msgpack: {exc}") from None
    if not isinstance(raw, list | tuple) or len(raw) < 2 or not isinstance(raw[1], list | tuple):
        raise DecodeError("payload is not an EventBatch [ts, events, dp_rank]")
    ts = float(raw[0]) if isinstance(raw[0], int | float) else 0.0
    rank = raw[2] if len(raw) > 2 and isinstance(raw[2], int) else None
    events = tuple(e for e in (_event(r) for r in raw[1]) if e is not None)
    return ts, events, rank


def decode_frame(parts: Sequence[bytes]) -> Frame:
    """``[topic, seq, payload]`` → :class:`Frame`."""
    if len(parts) != 3:
        raise DecodeError(f"expected 3 message parts (topic, seq, payload), got {len(parts)}")
    topic, seq_raw, payload = parts
    if len(seq_raw) != 8:
        raise DecodeError(f"sequence number of {len(seq_raw)} bytes (expected 8)")
    (seq,) = struct.unpack(">Q", seq_raw)
    ts, events, rank = decode_payload(payload)
    return Frame(topic.decode("utf-8", "replace"), seq, ts, events, rank)
