"""The simulator's KV events against vLLM 0.33's published schema, decoded independently.

The decoder below is written from vLLM 0.33's ``distributed/kv_events.py`` (msgspec structs:
``EventBatch`` array_like + omit_defaults; events tagged structs with omit_defaults, *not*
array_like) and shares no code with the simulator's publisher. Block hashes are recomputed the way
vLLM's ``hash_block_tokens`` does (``--prefix-caching-hash-algo``: SHA-256 of the pickled, or of
the canonical-CBOR, ``(parent, token ids, extra keys)`` tuple; first parent ``H(PYTHONHASHSEED or
"vllm-none-hash")``; events carry the low 64 bits).
"""

from __future__ import annotations

import asyncio
import hashlib
import pickle
from collections import Counter
from typing import Any

import aiohttp
import cbor2
import msgpack
import msgspec
import openai
import pytest
import zmq
import zmq.asyncio

from infergate.simulator.args import parse_args
from infergate.simulator.server import SimServer
from tests.support import async_wait_for, free_port

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
LORA_PATH = "/adapters/sql"

ExternalBlockHash = int | bytes


class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class BlockStored(msgspec.Struct, tag=True, omit_defaults=True):
    block_hashes: list[ExternalBlockHash]
    parent_block_hash: ExternalBlockHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[tuple[Any, ...] | None] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None
    locality: str | None = None
    ownership: str | None = None
    session_id: str | None = None
    lookahead_token_ids: list[list[int]] | None = None


class BlockRemoved(msgspec.Struct, tag=True, omit_defaults=True):
    block_hashes: list[ExternalBlockHash]
    medium: str | None
    group_idx: int | None = None
    locality: str | None = None
    ownership: str | None = None


class AllBlocksCleared(msgspec.Struct, tag=True, omit_defaults=True):
    pass


class VllmBatch(EventBatch):
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]


def serialise(algo: str, obj: Any) -> bytes:
    if algo == "sha256":
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return bytes(cbor2.dumps(obj, canonical=True))


def low64(digest: bytes) -> int:
    return int.from_bytes(digest, "big") & (2**64 - 1)


async def run_traffic(server: SimServer) -> None:
    c = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="sim", max_retries=0)
    try:
        same = "the same prompt twice " * 20
        # identical concurrent requests generate identical tokens in separate physical blocks
        await asyncio.gather(
            *(
                c.completions.create(model=MODEL, prompt=same, max_tokens=40, extra_body={"ignore_eos": True})
                for _ in range(2)
            )
        )
        await c.completions.create(
            model="sql-lora", prompt="select the rows " * 10, max_tokens=20, extra_body={"ignore_eos": True}
        )
        # two large distinct prompts evict everything cached before them (40 blocks)
        for i in range(2):
            await c.completions.create(model=MODEL, prompt=list(range(2000 + i, 2560 + i)), max_tokens=2)
    finally:
        await c.close()


@pytest.mark.parametrize(("algo", "seed"), [("sha256", None), ("sha256_cbor", "42")])
async def test_kv_events_follow_vllm_033(algo: str, seed: str | None) -> None:
    port = free_port()
    env = {"PYTHONHASHSEED": seed} if seed is not None else {}
    topic = "kv@sim@" + MODEL
    config = f'{{"enable_kv_cache_events": true, "endpoint": "tcp://*:{port}", "topic": "{topic}"}}'
    argv = ["--host", "127.0.0.1", "--port", "0", "--time-scale", "0.05", "--model", MODEL]
    argv += ["--num-gpu-blocks", "40", "--kv-events-config", config, "--prefix-caching-hash-algo", algo]
    argv += ["--enable-lora", "--lora-modules", f"sql-lora={LORA_PATH}"]
    server = SimServer(parse_args(argv, env))
    await server.start()
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{port}")
    frames: list[list[bytes]] = []
    try:
        await async_wait_for(lambda: subscribed(server, sub), what="the subscription to reach the publisher")
        # forget the probes' blocks (some of their events were published before we subscribed)
        assert server.engine.reset_prefix_cache()
        await run_traffic(server)

        async def drained() -> bool:
            while await sub.poll(20):
                frames.append(await sub.recv_multipart())
            return any(b"BlockRemoved" in f[2] for f in frames) and server.engine.stats().num_running == 0

        await async_wait_for(drained, what="evictions")
        while await sub.poll(200):
            frames.append(await sub.recv_multipart())
    finally:
        sub.close(0)
        ctx.term()
        await server.stop()

    decoder = msgspec.msgpack.Decoder(VllmBatch)
    seqs = [int.from_bytes(f[1], "big") for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    none_hash = hashlib.sha256(serialise(algo, seed if seed is not None else "vllm-none-hash")).digest()
    digests: dict[int, bytes] = {}  # event hash -> full digest, learnt from stored blocks
    stored: Counter[int] = Counter()
    removed: Counter[int] = Counter()
    lora_ids: set[int | None] = set()
    cleared = False
    for topic_b, _seq, payload in frames:
        assert topic_b == topic.encode()
        batch = decoder.decode(payload)  # raises on anything vLLM 0.33's schema rejects
        assert batch.data_parallel_rank == 0
        # what vLLM's own encoder writes for these events, byte for byte (field order, omissions)
        assert msgspec.msgpack.encode(batch) == payload
        for ev in batch.events:
            if isinstance(ev, BlockStored):
                n = len(ev.block_hashes)
                assert (ev.block_size, ev.medium, ev.group_idx) == (16, "GPU", 0)
                assert len(ev.token_ids) == 16 * n
                lora = ev.lora_name
                assert ev.extra_keys == [(lora,) if lora else None] * n
                extra = (("lora", lora, LORA_PATH),) if lora else None
                parent = none_hash if ev.parent_block_hash is None else digests[int(ev.parent_block_hash)]
                for i, h in enumerate(ev.block_hashes):
                    tokens = tuple(ev.token_ids[16 * i : 16 * (i + 1)])
                    parent = hashlib.sha256(serialise(algo, (parent, tokens, extra))).digest()
                    assert h == low64(parent)
                    digests[low64(parent)] = parent
                    stored[int(h)] += 1
                lora_ids.add(ev.lora_id)
            elif isinstance(ev, BlockRemoved):
                assert len(ev.block_hashes) == 1 and (ev.medium, ev.group_idx) == ("GPU", 0)
                removed[int(ev.block_hashes[0])] += 1
            else:
                assert not stored and not removed  # the reset comes first
                cleared = True
    assert cleared and set(removed) <= set(stored)
    # duplicate content in two physical blocks: stored twice, removed once per copy
    twice = {h for h, k in stored.items() if k == 2}
    assert twice and any(removed[h] == 2 for h in twice)
    assert all(removed[h] <= stored[h] for h in removed)
    assert None in lora_ids and server.engine.lora_id("sql-lora") in lora_ids


async def subscribed(server: SimServer, sub: zmq.asyncio.Socket) -> bool:
    """PUB drops messages until the subscription arrives: probe with a request until one shows."""
    c = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="sim", max_retries=0)
    try:
        await c.completions.create(model=MODEL, prompt=[1000 + i for i in range(17)], max_tokens=1)
    finally:
        await c.close()
    got = False
    while await sub.poll(50):
        await sub.recv_multipart()
        got = True
    return got


def test_legacy_array_encoding_kept() -> None:
    from infergate.simulator.kvevents import encode_batch

    ev = ("BlockStored", [1], None, list(range(16)), 16, None, "GPU", None, [None], 0)
    _ts, events, rank = msgpack.unpackb(encode_batch([ev], ts=1.0, encoding="array", data_parallel_rank=None))
    assert events == [["BlockStored", [1], None, list(range(16)), 16, None, "GPU", None]] and rank is None


async def _sources(server: SimServer) -> Any:
    async with aiohttp.ClientSession() as s, s.get(f"{server.url}/kv_event_sources") as r:
        assert r.status == 200
        return await r.json()


async def test_kv_event_sources_reports_the_resolved_publisher() -> None:
    """vLLM's discovery route: one source per data-parallel rank with the bound address, so a
    consumer started with only the HTTP address finds the ZMQ stream (a wildcard port resolved)."""
    base = ["--host", "127.0.0.1", "--port", "0", "--time-scale", "0.05"]
    server = SimServer(
        parse_args(
            [
                *base,
                "--kv-events-config",
                '{"enable_kv_cache_events": true, "endpoint": "tcp://*:0", "topic": "kv@pod@m"}',
            ],
            {},
        )
    )
    await server.start()
    try:
        sources = await _sources(server)
        assert list(sources) == ["0"]
        src = sources["0"]
        assert (src["publisher"], src["topic"], src["replay_endpoint"]) == ("zmq", "kv@pod@m", None)
        port = int(src["endpoint"].rsplit(":", 1)[1])
        assert src["endpoint"].startswith("tcp://") and port > 0
        ctx = zmq.asyncio.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"tcp://127.0.0.1:{port}")
        c = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="sim", max_retries=0)
        probes = iter(range(1000, 10**6, 17))

        async def got_events() -> bool:
            # a fresh prompt each time: PUB drops batches until the subscription has arrived
            start = next(probes)
            await c.completions.create(model=MODEL, prompt=list(range(start, start + 17)), max_tokens=1)
            return bool(await sub.poll(50))

        try:
            await async_wait_for(got_events, timeout=15, what="events at the reported address")
        finally:
            await c.close()
            sub.close(0)
            ctx.term()
    finally:
        await server.stop()
    plain = SimServer(parse_args(base, {}))
    await plain.start()
    try:
        assert await _sources(plain) == {}
    finally:
        await plain.stop()
