"""Cost of the precise prefix index: memory per million blocks held and CPU per KV event.

Synthetic but shaped like vLLM's stream: each ``BlockStored`` announces one sequence's next
``--blocks-per-event`` full blocks of 16 tokens (chained to the previous event's last block), one
batch per event, in vLLM 0.33's tagged-map encoding with 64-bit hashes; ``--sources`` model servers
publish. Memory is measured with ``tracemalloc`` after the index holds ``--blocks`` blocks
(distinct per source, as when every server caches different prompts); CPU is the process CPU time of
``KvEventSubscriber.handle`` (msgpack decode + index update) per event and per block, then of
``BlockRemoved`` events evicting them, and of a scoring lookup of a 4k-token prompt.

``--keys engine`` publishes vLLM's real block hashes (``sha256``, default seed), so the index
verifies each source and keys its blocks by engine hash; ``--keys tokens`` publishes opaque hashes
no scheme reproduces, so it chains request keys from the token ids. The lookup line then includes
computing the prompt's keys (SHA-256 per block, or the token-key chain), cold.

    .venv/bin/python bench/bench_kvevents.py --blocks 1000000 --keys engine
"""

from __future__ import annotations

import argparse
import gc
import random
import struct
import time
import tracemalloc

from infergate.kvevents.index import KvBlockIndex, request_keys
from infergate.kvevents.subscriber import KvEventSubscriber
from infergate.simulator.kvevents import encode_batch
from infergate.tokenization.blockhash import BlockHasher, to_event_int

BS = 16


Frames = list[list[bytes]]


HASHER = BlockHasher("sha256")


def frames(
    sources: int, blocks: int, per_event: int, rng: random.Random, engine: bool
) -> tuple[Frames, Frames, list[int]]:
    """Stored and removed messages per source in order (every block distinct) and the tokens of
    the first sequence (64 events), for a lookup that matches in full."""
    first: list[int] = []
    stored: list[list[bytes]] = []
    removed: list[list[bytes]] = []
    per_source = blocks // sources
    seqs = [0] * sources
    for s in range(sources):
        topic = f"kv@10.0.0.{s + 1}:8000@model".encode()
        parent = None
        h = s << 40
        chain: list[bytes] = []
        sent: list[list[int]] = []
        for start in range(0, per_source, per_event):
            n = min(per_event, per_source - start)
            hashes = list(range(h + start + 1, h + start + n + 1))
            if start % (per_event * 64) == 0:
                parent = None  # a new sequence every 64 events
                chain = []
            tokens = [rng.randrange(1000, 128000) for _ in range(n * BS)]
            if engine:
                prev = chain[-1] if chain else None
                for i in range(n):
                    prev = HASHER.hash_block(prev, tokens[i * BS : (i + 1) * BS], None)
                    chain.append(prev)
                hashes = [to_event_int(d) for d in chain[-n:]]
            sent.append(hashes)
            if s == 0 and start < per_event * 64:
                first.extend(tokens)
            ev = ("BlockStored", hashes, parent, tokens, BS, None, "GPU", None, None, 0)
            stored.append([topic, struct.pack(">Q", seqs[s]), encode_batch([ev], ts=0.0)])
            seqs[s] += 1
            parent = hashes[-1]
        for hashes in sent:
            rm: tuple[object, ...] = ("BlockRemoved", hashes, "GPU", 0)
            removed.append([topic, struct.pack(">Q", seqs[s]), encode_batch([rm], ts=0.0)])
            seqs[s] += 1
    return stored, removed, first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=1_000_000)
    p.add_argument("--sources", type=int, default=8)
    p.add_argument("--blocks-per-event", type=int, default=8)
    p.add_argument("--keys", choices=("engine", "tokens"), default="engine")
    a = p.parse_args()
    rng = random.Random(1)
    engine = a.keys == "engine"
    stored, removed, first = frames(a.sources, a.blocks, a.blocks_per_event, rng, engine)
    schemes = [HASHER] if engine else []
    # memory: one pass with tracemalloc (which slows every allocation), timing: another without
    index = KvBlockIndex(max_keys=10 * a.blocks, schemes=schemes)
    sub = KvEventSubscriber(index)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for f in stored:
        sub.handle(f, None)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del sub, index
    gc.collect()
    index = KvBlockIndex(max_keys=10 * a.blocks, schemes=schemes)
    sub = KvEventSubscriber(index)
    t0 = time.process_time()
    for f in stored:
        sub.handle(f, None)
    t_store = time.process_time() - t0
    blocks = sum(index.blocks(f"10.0.0.{s + 1}:8000") for s in range(a.sources))
    source0 = "10.0.0.1:8000"
    assert (index.scheme(source0) is not None) == engine

    def lookup() -> int:
        if engine:
            keys, prev = [], None  # cold: every block hashed (the scorer's memo skipped)
            for i in range(0, len(first), BS):
                prev = HASHER.hash_block(prev, first[i : i + BS], None)
                keys.append(to_event_int(prev))
        else:
            keys = request_keys(first, BS)
        return len(index.longest_runs(keys)[source0])

    n_keys = lookup()
    assert n_keys == len(first) // BS
    t0 = time.process_time()
    for _ in range(200):
        lookup()
    t_lookup = (time.process_time() - t0) / 200
    t0 = time.process_time()
    for f in removed:
        sub.handle(f, None)
    t_remove = time.process_time() - t0
    print(
        f"keys: {a.keys}; blocks held: {blocks:,} on {a.sources} sources; left after removal: {len(index):,}"
    )
    print(f"memory: {held / blocks * 1e6 / 2**20:.0f} MiB per million blocks ({held / blocks:.0f} B/block)")
    print(
        f"BlockStored: {t_store / len(stored) * 1e6:.1f} µs/event, {t_store / blocks * 1e6:.2f} µs/block "
        f"({a.blocks_per_event} blocks/event, decode + index)"
    )
    print(
        f"BlockRemoved: {t_remove / len(removed) * 1e6:.1f} µs/event, {t_remove / blocks * 1e6:.2f} µs/block"
    )
    print(
        f"keys + lookup of a {len(first)}-token prompt held in full ({n_keys} blocks): "
        f"{t_lookup * 1e6:.1f} µs"
    )
    print(f"events {index.stats.events:,}, resyncs {index.stats.resyncs}, malformed {sub.stats.malformed}")


if __name__ == "__main__":
    main()
