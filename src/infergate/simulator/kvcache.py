"""Paged KV-cache block pool with vLLM V1 prefix caching (block hashes, refcounts, LRU eviction).

Mirrors ``vllm/v1/core/block_pool.py``: block 0 is the reserved null block; free blocks sit in one
queue whose front is evicted first; freed blocks are appended (callers free a request's blocks in
reverse so its tail goes first), and a freed block keeps its hash so a later request can revive it
until the block is reallocated. Only full blocks are hashed (``blockhash``). Two physical blocks
may hold the same hash (two requests prefilled the same text at once): both are registered, a
lookup finds the first, and each announces itself when stored and when evicted, as in vLLM.

The pool also produces vLLM's KV events as plain tuples (see ``KvEvent``), buffered until the
engine drains them once per step, with every field vLLM 0.33's ``block_pool`` sets.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from infergate.tokenization.blockhash import to_event_int

# Event tuples, positional in the order of vLLM 0.33's struct fields:
#   ("BlockStored", block_hashes, parent_block_hash | None, token_ids, block_size, lora_id | None,
#    medium "GPU", lora_name | None, extra_keys: list[list[str] | None], group_idx 0)
#   ("BlockRemoved", block_hashes (one), medium "GPU", group_idx 0)
#   ("AllBlocksCleared",)
KvEvent = tuple[object, ...]

GROUP_IDX = 0  # one KV-cache group (full attention) in a Llama model


class BlockPool:
    """Fixed set of KV blocks; owned by one engine, not thread-safe."""

    def __init__(
        self, num_blocks: int, block_size: int, *, enable_caching: bool = True, int_hashes: bool = True
    ) -> None:
        if num_blocks < 2:
            raise ValueError("num_gpu_blocks must be at least 2 (one is the reserved null block)")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.ref_cnt = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(1, num_blocks))
        self._cached: dict[bytes, int] = {}  # hash -> the block a lookup finds
        self._copies: dict[bytes, set[int]] = {}  # hash -> further blocks holding the same content
        self.int_hashes = int_hashes  # events carry 64-bit ints (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES)
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
        """``n`` fresh blocks from the front of the free queue, evicting their cached hashes
        (one ``BlockRemoved`` per evicted block, as vLLM emits them)."""
        if n > len(self._free):
            raise RuntimeError("out of KV blocks")
        out: list[int] = []
        free = self._free
        block_hash = self.block_hash
        for _ in range(n):
            b, _unused = free.popitem(last=False)
            h = block_hash[b]
            if h is not None:
                block_hash[b] = None
                self._uncache(h, b)
                if self.events_enabled:
                    self.events.append(("BlockRemoved", [self._event_hash(h)], "GPU", GROUP_IDX))
            self.ref_cnt[b] = 1
            out.append(b)
        return out

    def _uncache(self, h: bytes, b: int) -> None:
        copies = self._copies.get(h)
        if self._cached.get(h) == b:
            if copies:
                self._cached[h] = copies.pop()  # another block with the same content takes over
                if not copies:
                    del self._copies[h]
            else:
                del self._cached[h]
        elif copies is not None:
            copies.discard(b)
            if not copies:
                del self._copies[h]

    def _event_hash(self, h: bytes) -> object:
        return to_event_int(h) if self.int_hashes else h

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
        """Register blocks ``start..end-1`` of a request under their hashes and announce them in
        one ``BlockStored`` (vLLM's ``cache_full_blocks``), duplicates of cached content included."""
        if not self.enable_caching or end <= start:
            return
        block_hash = self.block_hash
        cached = self._cached
        for i in range(start, end):
            b = block_ids[i]
            if block_hash[b] is not None:
                continue  # a revived prefix-cache hit keeps its registration
            h = hashes[i]
            block_hash[b] = h
            if h in cached:
                self._copies.setdefault(h, set()).add(b)
            else:
                cached[h] = b
        if self.events_enabled:
            bs = self.block_size
            ev = self._event_hash
            self.events.append(
                (
                    "BlockStored",
                    [ev(hashes[i]) for i in range(start, end)],
                    ev(hashes[start - 1]) if start > 0 else None,
                    list(tokens[start * bs : end * bs]),
                    bs,
                    lora_id,
                    "GPU",
                    lora_name,
                    [[lora_name] if lora_name else None for _ in range(start, end)],
                    GROUP_IDX,
                )
            )

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash if no block is in use (vLLM ``reset_prefix_cache``)."""
        if len(self._free) != self.num_blocks - 1:
            return False
        self._cached.clear()
        self._copies.clear()
        self.block_hash = [None] * self.num_blocks
        if self.events_enabled:
            self.events.append(("AllBlocksCleared",))
        return True

    def drain_events(self) -> list[KvEvent]:
        out = self.events
        self.events = []
        return out
