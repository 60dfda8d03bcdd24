"""Paged KV-cache block pool with vLLM V1 prefix caching (block hashes, refcounts, LRU eviction).

Mirrors ``vllm/v1/core/block_pool.py``: block 0 is the reserved null block; free blocks sit in one
queue whose front is evicted first; freed blocks are appended (callers free a request's blocks in
reverse so its tail goes first), and a freed block keeps its hash so a later request can revive it
until the block is reallocated. Only full blocks are hashed, each hash chaining its parent's hash,
the block's token ids and the extra keys (the LoRA name), like ``hash_block_tokens``.

The pool also produces vLLM KV events (BlockStored / BlockRemoved / AllBlocksCleared) as plain
tuples, buffered until the engine drains them once per step.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence

# Event tuples (positional, like vLLM's array_like encoding):
#   ("BlockStored", block_hashes: list[int], parent_block_hash: int | None, token_ids: list[int],
#    block_size: int, lora_id: int | None, medium: "GPU", lora_name: str | None)
#   ("BlockRemoved", block_hashes: list[int], medium: "GPU")
#   ("AllBlocksCleared",)
KvEvent = tuple[object, ...]

NONE_HASH = hashlib.sha256(b"vllm-none-hash").digest()


def hash_block(parent: bytes | None, tokens: Sequence[int], extra: str | None) -> bytes:
    """Chained SHA-256 of one full block: parent hash, token ids, extra keys (LoRA name)."""
    h = hashlib.sha256(parent if parent is not None else NONE_HASH)
    h.update(array("q", tokens).tobytes())
    if extra:
        h.update(b"\x00lora:")
        h.update(extra.encode("utf-8"))
    return h.digest()


def hash_to_int(h: bytes) -> int:
    """vLLM's integer form of a block hash (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1``): low 64 bits."""
    return int.from_bytes(h, "big") & 0xFFFFFFFFFFFFFFFF


def block_hashes(
    tokens: Sequence[int], block_size: int, extra: str | None, start: list[bytes] | None = None
) -> list[bytes]:
    """Hashes of every full block of ``tokens``, continuing the chain in ``start`` (extended in place).

    Equal to chaining :func:`hash_block` block by block; the blocks' bytes are packed once and
    each hash is memoised by (parent, block bytes, extra), so the shared prefixes that dominate
    real traffic (system prompts, earlier chat turns) are hashed once per process, not per request.
    """
    out = start if start is not None else []
    n_full = len(tokens) // block_size
    done = len(out)
    if done >= n_full:
        return out
    parent = out[-1] if out else None
    step = 8 * block_size  # bytes per block in array("q")
    buf = array("q", tokens[done * block_size : n_full * block_size]).tobytes()
    memo = _HASH_MEMO
    if len(memo) > _HASH_MEMO_LIMIT:
        memo.clear()
    for off in range(0, len(buf), step):
        chunk = buf[off : off + step]
        key = (parent, chunk, extra)
        h = memo.get(key)
        if h is None:
            hasher = hashlib.sha256(parent if parent is not None else NONE_HASH)
            hasher.update(chunk)
            if extra:
                hasher.update(b"\x00lora:")
                hasher.update(extra.encode("utf-8"))
            h = hasher.digest()
            memo[key] = h
        out.append(h)
        parent = h
    return out


_HASH_MEMO: dict[tuple[bytes | None, bytes, str | None], bytes] = {}
_HASH_MEMO_LIMIT = 100_000  # ~40 MB at most


class BlockPool:
    """Fixed set of KV blocks; owned by one engine, not thread-safe."""

    def __init__(self, num_blocks: int, block_size: int, *, enable_caching: bool = True) -> None:
        if num_blocks < 2:
            raise ValueError("num_gpu_blocks must be at least 2 (one is the reserved null block)")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.ref_cnt = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(1, num_blocks))
        self._cached: dict[bytes, int] = {}
        self.events: list[KvEvent] = []
        self.events_enabled = False

    # -- queries ---------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        """Free blocks, including cached-but-unreferenced (evictable) ones."""
        return len(self._free)

    def usage(self) -> float:
        """``vllm:kv_cache_usage_perc``: 1 − free/(num_blocks − 1)."""
        return 1.0 - len(self._free) / (self.num_blocks - 1)

    def lookup(self, hashes: Sequence[bytes], max_blocks: int) -> list[int]:
        """Longest cached prefix (block ids) among the first ``max_blocks`` hashes."""
        if not self.enable_caching:
            return []
        found: list[int] = []
        cached = self._cached
        for h in hashes[:max_blocks]:
            bid = cached.get(h)
            if bid is None:
                break
            found.append(bid)
        return found

    def num_evictable(self, block_ids: Sequence[int]) -> int:
        """How many of ``block_ids`` are currently free (would leave the free queue on touch)."""
        rc = self.ref_cnt
        return sum(1 for b in block_ids if rc[b] == 0)

    # -- mutations -------------------------------------------------------------------------
    def touch(self, block_ids: Sequence[int]) -> None:
        """Take a reference on cached blocks, reviving free ones."""
        rc = self.ref_cnt
        free = self._free
        for b in block_ids:
            if rc[b] == 0:
                del free[b]
            rc[b] += 1

    def allocate(self, n: int) -> list[int]:
        """``n`` fresh blocks from the front of the free queue, evicting their cached hashes."""
        if n > len(self._free):
            raise RuntimeError("out of KV blocks")
        out: list[int] = []
        removed: list[int] = []
        free = self._free
        for _ in range(n):
            b, _unused = free.popitem(last=False)
            h = self.block_hash[b]
            if h is not None:
                self.block_hash[b] = None
                if self._cached.get(h) == b:
                    del self._cached[h]
                    removed.append(hash_to_int(h))
            self.ref_cnt[b] = 1
            out.append(b)
        if removed and self.events_enabled:
            self.events.append(("BlockRemoved", removed, "GPU"))
        return out

    def free(self, block_ids: Sequence[int]) -> None:
        """Drop one reference from each block (callers pass a request's blocks tail first)."""
        rc = self.ref_cnt
        free = self._free
        for b in block_ids:
            rc[b] -= 1
            if rc[b] == 0:
                free[b] = None

    def cache_blocks(
        self,
        block_ids: Sequence[int],
        hashes: Sequence[bytes],
        start: int,
        end: int,
        tokens: Sequence[int],
        lora_id: int | None,
        lora_name: str | None,
    ) -> None:
        """Register blocks ``start..end-1`` of a request under their hashes (first holder wins)."""
        if not self.enable_caching or end <= start:
            return
        stored: list[int] = []
        for i in range(start, end):
            b = block_ids[i]
            h = hashes[i]
            if self.block_hash[b] is not None:
                continue
            if h in self._cached:
                continue  # duplicate content already cached in another block
            self.block_hash[b] = h
            self._cached[h] = b
            stored.append(i)
        if stored and self.events_enabled:
            # one event per contiguous run of newly stored blocks (vLLM: one per request per step)
            run_start = 0
            for j in range(1, len(stored) + 1):
                if j == len(stored) or stored[j] != stored[j - 1] + 1:
                    self._stored_event(stored[run_start:j], hashes, tokens, lora_id, lora_name)
                    run_start = j

    def _stored_event(
        self,
        idx: list[int],
        hashes: Sequence[bytes],
        tokens: Sequence[int],
        lora_id: int | None,
        lora_name: str | None,
    ) -> None:
        bs = self.block_size
        first, last = idx[0], idx[-1]
        parent = hash_to_int(hashes[first - 1]) if first > 0 else None
        self.events.append(
            (
                "BlockStored",
                [hash_to_int(hashes[i]) for i in idx],
                parent,
                list(tokens[first * bs : (last + 1) * bs]),
                bs,
                lora_id,
                "GPU",
                lora_name,
            )
        )

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash if no block is in use (vLLM ``reset_prefix_cache``)."""
        if len(self._free) != self.num_blocks - 1:
            return False
        self._cached.clear()
        self.block_hash = [None] * self.num_blocks
        if self.events_enabled:
            self.events.append(("AllBlocksCleared",))
        return True

    def drain_events(self) -> list[KvEvent]:
        out = self.events
        self.events = []
        return out
