"""Cost of the precise prefix index: memory per million blocks held and CPU per KV event.

Synthetic but shaped like vLLM's stream: each ``BlockStored`` announces one sequence's next
``--blocks-per-event`` full blocks of 16 tokens (chained to the previous event's last block), one
batch per event, in vLLM 0.33's tagged-map encoding with 64-bit hashes; ``--sources`` model servers
publish. Memory is measured with ``tracemalloc`` after the index holds ``--blocks`` blocks
(distinct per source, as when every server caches different prompts); CPU is the process CPU time of
``KvEventSubscriber.handle`` (msgpack decode + index update) per event and per block, then of
``BlockRemoved`` events evicting them, and of a scoring lookup of a 4k-token prompt.

    .venv/bin/python bench/bench_kvevents.py --blocks 1000000
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

BS = 16


Frames = list[list[bytes]]


def frames(sources: int, blocks: int, per_event: int, rng: random.Random) -> tuple[Frames, Frames, list[int]]:
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
        for start in range(0, per_source, per_event):
            n = min(per_event, per_source - start)
            hashes = list(range(h + start + 1, h + start + n + 1))
            if start % (per_event * 64) == 0:
                parent = None  # a new sequence every 64 events
            tokens = [rng.randrange(1000, 128000) for _ in range(n * BS)]
            if s == 0 and start < per_event * 64:
                first.extend(tokens)
            ev = ("BlockStored", hashes, parent, tokens, BS, None, "GPU", None, None, 0)
            stored.append([topic, struct.pack(">Q", seqs[s]), encode_batch([ev], ts=0.0)])
            seqs[s] += 1
            parent = hashes[-1]
        for start in range(0, per_source, per_event):
            n = min(per_event, per_source - start)
            hashes = list(range(h + start + 1, h + start + n + 1))
            rm: tuple[object, ...] = ("BlockRemoved", hashes, "GPU", 0)
            removed.append([topic, struct.pack(">Q", seqs[s]), encode_batch([rm], ts=0.0)])
            seqs[s] += 1
    return stored, removed, first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=1_000_000)
    p.add_argument("--sources", type=int, default=8)
    p.add_argument("--blocks-per-event", type=int, default=8)
    a = p.parse_args()
    rng = random.Random(1)
    stored, removed, first = frames(a.sources, a.blocks, a.blocks_per_event, rng)
    # memory: one pass with tracemalloc (which slows every allocation), timing: another without
    index = KvBlockIndex(max_keys=10 * a.blocks)
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
    index = KvBlockIndex(max_keys=10 * a.blocks)
    sub = KvEventSubscriber(index)
    t0 = time.process_time()
    for f in stored:
        sub.handle(f, None)
    t_store = time.process_time() - t0
    blocks = sum(index.blocks(f"10.0.0.{s + 1}:8000") for s in range(a.sources))
    keys = request_keys(first, BS)
    assert len(index.longest_runs(keys)["10.0.0.1:8000"]) == len(keys)
    t0 = time.process_time()
    for _ in range(1000):
        index.longest_runs(keys)
    t_lookup = (time.process_time() - t0) / 1000
    t0 = time.process_time()
    for f in removed:
        sub.handle(f, None)
    t_remove = time.process_time() - t0
    print(f"blocks held: {blocks:,} on {a.sources} sources; request keys left after removal: {len(index):,}")
    print(f"memory: {held / blocks * 1e6 / 2**20:.0f} MiB per million blocks ({held / blocks:.0f} B/block)")
    print(
        f"BlockStored: {t_store / len(stored) * 1e6:.1f} µs/event, {t_store / blocks * 1e6:.2f} µs/block "
        f"({a.blocks_per_event} blocks/event, decode + index)"
    )
    print(
        f"BlockRemoved: {t_remove / len(removed) * 1e6:.1f} µs/event, {t_remove / blocks * 1e6:.2f} µs/block"
    )
    print(f"lookup of a {len(first)}-token prompt held in full ({len(keys)} blocks): {t_lookup * 1e6:.1f} µs")
    print(f"events {index.stats.events:,}, resyncs {index.stats.resyncs}, malformed {sub.stats.malformed}")


if __name__ == "__main__":
    main()
