"""KV-event decoding and the block index: both encodings, per-copy counts, tiers, gaps, bounds.

Batches are produced by the simulator's publisher encoder (byte for byte what vLLM writes) and by
hand-written msgpack in the legacy array form, so the decoder is checked against both.
"""

from __future__ import annotations

import struct

import msgpack
import pytest

from infergate.kvevents.index import KvBlockIndex, request_keys
from infergate.kvevents.wire import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    DecodeError,
    decode_frame,
    decode_payload,
    parse_topic,
)
from infergate.simulator.kvevents import encode_batch

BS = 4
TOKENS = list(range(100, 116))  # 4 blocks of 4


def stored(
    hashes: list[int], parent: int | None, tokens: list[int], medium: str | None = "GPU"
) -> BlockStored:
    return BlockStored(tuple(hashes), parent, tuple(tokens), BS, None, medium)


def test_both_encodings_decode_to_the_same_events() -> None:
    ev = ("BlockStored", [11, 12], None, TOKENS[:8], BS, None, "GPU", None, None, 0)
    rm = ("BlockRemoved", [12], "GPU", 0)
    for encoding in ("map", "array"):
        ts, events, rank = decode_payload(
            encode_batch([ev, rm, ("AllBlocksCleared",)], ts=5.0, encoding=encoding)
        )
        assert ts == 5.0
        assert events == (
            BlockStored((11, 12), None, tuple(TOKENS[:8]), BS, None, "GPU", None),
            BlockRemoved((12,), "GPU"),
            AllBlocksCleared(),
        )
        assert rank == 0


def test_older_array_events_with_fewer_fields_and_unknown_kinds() -> None:
    payload = msgpack.packb([1.0, [["BlockStored", [1], None, [1, 2, 3, 4], 4, None], ["NewKind", 1]], None])
    _, events, _ = decode_payload(payload)
    assert events == (BlockStored((1,), None, (1, 2, 3, 4), 4, None, None),)


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",
        msgpack.packb({"ts": 1}),
        msgpack.packb([1.0, [["BlockStored", [1], None, [1, 2, 3], 4]], None]),  # 3 tokens for one block of 4
        msgpack.packb([1.0, [{"type": "BlockRemoved", "block_hashes": "x"}], None]),
        msgpack.packb([1.0, [3], None]),
    ],
)
def test_malformed_payloads_are_errors(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_payload(payload)


def test_frame_and_topic() -> None:
    payload = encode_batch([("AllBlocksCleared",)], ts=1.0)
    frame = decode_frame([b"kv@10.0.0.7:8000@meta/llama", struct.pack(">Q", 2**40), payload])
    assert frame.seq == 2**40
    assert parse_topic(frame.topic) == ("10.0.0.7:8000", "meta/llama")
    assert parse_topic("kv@10.0.0.7@m") == ("10.0.0.7", "m")
    assert parse_topic("") is None
    assert parse_topic("kv@@m") is None
    with pytest.raises(DecodeError):
        decode_frame([b"t", b"\x00" * 4, payload])
    with pytest.raises(DecodeError):
        decode_frame([b"t", payload])


def runs(index: KvBlockIndex, tokens: list[int] = TOKENS, lora: str | None = None) -> dict[str, int]:
    return {s: len(m) for s, m in index.longest_runs(request_keys(tokens, BS, lora=lora)).items()}


def test_index_follows_parents_and_counts_the_longest_run() -> None:
    idx = KvBlockIndex()
    idx.ingest("a", 0, [stored([1, 2], None, TOKENS[:8])])
    idx.ingest("a", 1, [stored([3], 2, TOKENS[8:12])])
    idx.ingest("b", 0, [stored([7], None, TOKENS[:4])])
    assert runs(idx) == {"a": 3, "b": 1}
    # a hole ends the run even when later blocks are held
    idx.ingest("a", 2, [BlockRemoved((2,), "GPU")])
    assert runs(idx) == {"a": 1, "b": 1}
    # another prompt sharing nothing matches nothing; another adapter neither
    assert runs(idx, [9] * 16) == {}
    assert runs(idx, lora="sql-lora") == {}


def test_every_physical_copy_counts_until_the_last_is_removed() -> None:
    idx = KvBlockIndex()
    idx.ingest("a", 0, [stored([1], None, TOKENS[:4]), stored([1], None, TOKENS[:4])])
    idx.ingest("a", 1, [BlockRemoved((1,), "GPU")])
    assert runs(idx) == {"a": 1}
    idx.ingest("a", 2, [BlockRemoved((1,), "GPU")])
    assert runs(idx) == {}
    assert idx.blocks("a") == 0


def test_tiers_are_tracked_separately() -> None:
    idx = KvBlockIndex()
    idx.ingest("a", 0, [stored([1], None, TOKENS[:4], "GPU"), stored([1], None, TOKENS[:4], "CPU")])
    idx.ingest("a", 1, [BlockRemoved((1,), "GPU")])
    masks = idx.longest_runs(request_keys(TOKENS, BS))["a"]
    assert [idx.tier_names()[i] for i in range(len(idx.tier_names())) if masks[0] >> i & 1] == ["CPU"]


def test_sequence_gap_forgets_the_source_and_rebuilds() -> None:
    idx = KvBlockIndex()
    idx.ingest("a", 5, [stored([1, 2], None, TOKENS[:8])])
    idx.ingest("b", 0, [stored([1, 2], None, TOKENS[:8])])
    assert idx.ingest("a", 6, []) is True
    # seq 7 lost: a's blocks are forgotten, b keeps its own
    assert idx.ingest("a", 8, [stored([9], None, [5, 5, 5, 5])]) is False
    assert idx.stats.resyncs == 1
    assert runs(idx) == {"b": 2}
    assert runs(idx, [5, 5, 5, 5]) == {"a": 1}
    # a stored block whose parent was forgotten cannot be reached: dropped and counted
    idx.ingest("a", 9, [stored([3], 2, TOKENS[8:12])])
    assert idx.stats.orphan_blocks == 1
    # a publisher restart (seq back to 0) is a gap too
    assert idx.ingest("a", 0, []) is False
    assert runs(idx, [5, 5, 5, 5]) == {}


def test_all_blocks_cleared_and_source_removal() -> None:
    idx = KvBlockIndex()
    idx.ingest("a", 0, [stored([1], None, TOKENS[:4])])
    idx.ingest("b", 0, [stored([1], None, TOKENS[:4])])
    idx.ingest("a", 1, [AllBlocksCleared()])
    assert runs(idx) == {"b": 1}
    assert idx.is_live("a")
    idx.remove_source("b")
    assert runs(idx) == {}
    assert not idx.is_live("b")
    assert len(idx) == 0


def test_memory_is_bounded_by_keys_and_sources_per_key() -> None:
    idx = KvBlockIndex(max_keys=3, max_sources_per_key=2)
    idx.ingest("a", 0, [stored([1, 2, 3, 4], None, TOKENS)])
    assert len(idx) == 3
    assert idx.stats.evicted_keys == 1
    # the first block's key was the least recently used: the prefix is gone, so no run
    assert runs(idx) == {}
    idx2 = KvBlockIndex(max_sources_per_key=2)
    for s in ("a", "b", "c"):
        idx2.ingest(s, 0, [stored([1], None, TOKENS[:4])])
    assert set(runs(idx2)) == {"b", "c"}


def test_blocks_of_another_size_are_refused() -> None:
    idx = KvBlockIndex(block_size=16)
    idx.ingest("a", 0, [stored([1], None, TOKENS[:4])])
    assert idx.stats.block_size_mismatch == 1
    assert runs(idx) == {}
