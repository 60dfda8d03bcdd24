"""The KV-block index: which endpoint holds which prompt prefix, from the engines' own events.

A block is indexed under one of two keys, chosen per source (one model server, named by its
topic or its address):

* its **engine hash**, the value the event carries, when the source is verified to hash blocks as
  vLLM does with a scheme the index knows (``--prefix-caching-hash-algo`` and the ``NONE_HASH``
  seed from ``PYTHONHASHSEED``): the first base-model block that source announces is re-hashed
  from its token ids with each candidate scheme, and the one that reproduces the announced hash is
  that source's scheme. A request then finds its blocks by computing the same hashes
  (:func:`infergate.tokenization.blockhash.block_hashes`), as llm-d's indexer does with
  ``tokenProcessorConfig.hashSeed``. Ingesting costs no hashing at all, and a block whose parent
  the index never saw (batches lost: a sequence gap) is still indexed;
* a **request key** otherwise (no candidate scheme reproduces the hash: another seed, another
  algorithm, an engine that is not vLLM), and for LoRA blocks unless the adapter's path is known
  (``lora_paths``): vLLM's extra key for an adapter, ``("lora", name, path)``, includes the path
  the adapter was loaded from, which neither the events nor the request carry. A known path is
  verified like the scheme, on the adapter's first root block per source. Request keys are
  computed here from the events' token ids, chained block by block:
  ``k_0 = H(seed, lora, tokens_0)``, ``k_i = H(k_{i-1}, tokens_i)``; the scorer computes the same
  chain from the request's tokens, so a request finds its blocks whatever hash scheme the engine
  runs, and the same text under another LoRA adapter never matches.

Per source the index keeps the engine hashes it holds with a count per device tier (vLLM
announces every physical copy of a block and removes them one at a time, so a block stored twice
and removed once is still held); the engine hash also finds what a ``BlockRemoved`` removes. The
reverse map key → {source: tier mask} answers lookups. Memory is bounded: at most ``max_keys``
keys (least recently stored or matched evicted first) and ``max_sources_per_key`` sources per
key; a source's engine hashes are bounded by its KV capacity as long as its events arrive in
order, and are dropped whole when they do not (gap in sequence numbers, publisher restart): the
source then rebuilds from new events (and verifies its hash scheme again after a restart or a
reconnect).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from infergate.kvevents.wire import AllBlocksCleared, BlockRemoved, BlockStored, EngineHash, Event
from infergate.tokenization.blockhash import BlockHasher, ExtraKeys, lora_extra_keys, to_event_int

__all__ = ["DEFAULT_TIER", "IndexStats", "KvBlockIndex", "engine_key", "request_keys"]

log = logging.getLogger(__name__)

DEFAULT_TIER = "GPU"
"""The tier of a block whose event names no medium (vLLM: the GPU's KV cache)."""


def _first_key(seed: int, lora: str | None) -> int:
    return hash(("infergate-kv", seed, lora or ""))


def engine_key(h: EngineHash) -> int:
    """The index key of an engine hash: the int as published, or the low 64 bits of a digest
    (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0``), so both publish modes share one key space."""
    return h if isinstance(h, int) else to_event_int(h)


_UNVERIFIED = -2
_TOKEN_KEYS = -1


def request_keys(
    tokens: Sequence[int],
    block_size: int,
    *,
    lora: str | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> list[int]:
    """The chained request keys of every full block of ``tokens`` (at most ``limit`` blocks).

    Python's ``hash`` of int tuples is deterministic and fast; the keys live in one process only.
    """
    n = len(tokens) // block_size
    if limit is not None:
        n = min(n, limit)
    key = _first_key(seed, lora)
    out: list[int] = []
    for i in range(0, n * block_size, block_size):
        key = hash((key, tuple(tokens[i : i + block_size])))
        out.append(key)
    return out


@dataclass(slots=True)
class IndexStats:
    """Counters for operators and benchmarks (exported as metrics by the scorer)."""

    batches: int = 0
    events: int = 0
    resyncs: int = 0
    orphan_blocks: int = 0
    """Stored blocks whose parent this index does not know (dropped: no request can reach them)."""
    admissions: int = 0
    """Keys that entered the index (a block some source holds that none held before)."""
    evicted_keys: int = 0
    block_size_mismatch: int = 0
    """Stored blocks of another size than the index's (dropped: requests are cut in its size)."""
    hash_mismatches: int = 0
    """Sources whose block hashes no candidate scheme reproduced, and adapters whose configured
    path did not reproduce theirs (indexed by request keys)."""


class _Source:
    """One model server's blocks: engine hash → ``[index key, count of tier 0, count of tier 1, ...]``
    (the index key is the engine hash itself or a request key, see the module docstring)."""

    __slots__ = ("batches", "blocks", "loras", "next_seq", "scheme")

    def __init__(self, scheme: int) -> None:
        self.blocks: dict[EngineHash, list[int]] = {}
        self.next_seq: int | None = None
        self.batches = 0
        self.scheme = scheme
        """Index of the verified hash scheme in ``KvBlockIndex.schemes``, or _UNVERIFIED / _TOKEN_KEYS."""
        self.loras: dict[str, bool] = {}
        """Per adapter with a known path: whether its blocks verified under the scheme with it."""


class KvBlockIndex:
    """Block index fed by :meth:`ingest`, read by :meth:`longest_runs`; owned by one event loop."""

    def __init__(
        self,
        *,
        max_keys: int = 10_000_000,
        max_sources_per_key: int = 10,
        seed: int = 0,
        block_size: int | None = None,
        schemes: Sequence[BlockHasher] = (),
        lora_paths: Mapping[str, str] | None = None,
    ) -> None:
        """``block_size`` None accepts blocks of any size (keys then only match requests cut in
        the same size); set, blocks of another size are counted and dropped. ``schemes`` are the
        engine hash schemes a source may be verified against (none: request keys only);
        ``lora_paths`` the path each adapter was loaded from, to key its blocks by engine hash."""
        if max_keys <= 0 or max_sources_per_key <= 0:
            raise ValueError("index bounds must be > 0")
        self.block_size = block_size
        self.max_keys = max_keys
        self.max_sources_per_key = max_sources_per_key
        self.seed = seed
        self.schemes = tuple(schemes)
        self.lora_paths = dict(lora_paths or {})
        self._holders: OrderedDict[int, dict[str, int]] = OrderedDict()
        self._sources: dict[str, _Source] = {}
        self._tiers: dict[str, int] = {DEFAULT_TIER: 0}
        self.stats = IndexStats()

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        """Request keys held by at least one source."""
        return len(self._holders)

    def tier_names(self) -> list[str]:
        """Tier names in bit order (bit ``i`` of a holder's mask is tier ``i``)."""
        return list(self._tiers)

    def sources(self) -> list[str]:
        """Sources that have delivered at least one batch (their events are flowing)."""
        return [name for name, s in self._sources.items() if s.batches]

    def known_sources(self) -> list[str]:
        """Every source with state, live or not."""
        return list(self._sources)

    def is_live(self, source: str) -> bool:
        s = self._sources.get(source)
        return s is not None and s.batches > 0

    def scheme(self, source: str) -> BlockHasher | None:
        """The engine hash scheme ``source``'s base-model blocks are indexed under (None: request
        keys, or not verified yet)."""
        s = self._sources.get(source)
        if s is None or s.scheme < 0:
            return None
        return self.schemes[s.scheme]

    def lora_keys(self, source: str, lora: str) -> ExtraKeys | None:
        """The extra keys that find ``lora``'s blocks on ``source`` by engine hash (None: they are
        under request keys: path unknown or not verified there, or no verified scheme)."""
        s = self._sources.get(source)
        if s is None or s.scheme < 0 or not s.loras.get(lora):
            return None
        return lora_extra_keys(lora, self.lora_paths[lora])

    def blocks(self, source: str) -> int:
        """Distinct engine blocks ``source`` holds (any tier)."""
        s = self._sources.get(source)
        return 0 if s is None else len(s.blocks)

    def longest_runs(self, keys: Sequence[int], sources: Iterable[str] | None = None) -> dict[str, list[int]]:
        """For each source holding ``keys[0]``: the tier masks of the consecutive blocks it holds
        from the start (``len`` = the run length). ``sources`` limits the answer to those.

        Matched keys count as recently used for the LRU bound.
        """
        holders = self._holders
        wanted = None if sources is None else set(sources)
        runs: dict[str, list[int]] = {}
        alive: set[str] | None = None
        for k in keys:
            held = holders.get(k)
            if not held:
                break
            holders.move_to_end(k)
            if alive is None:
                alive = {s for s in held if wanted is None or s in wanted}
                for s in alive:
                    runs[s] = [held[s]]
            else:
                alive = {s for s in alive if s in held}
                for s in alive:
                    runs[s].append(held[s])
            if not alive:
                break
        return runs

    # ------------------------------------------------------------------ writing
    def ingest(self, source: str, seq: int | None, events: Sequence[Event]) -> bool:
        """Apply one batch from ``source``. Returns False when it had to resync first.

        ``seq`` is the batch's sequence number (None when the transport has none). A batch that is
        not the next one expected means batches were lost (a gap) or the publisher restarted: the
        source's blocks are forgotten and rebuilt from this batch on.
        """
        src = self._sources.get(source)
        if src is None:
            src = self._sources[source] = _Source(self._initial_scheme())
        in_order = True
        if seq is not None:
            if src.next_seq is not None and seq != src.next_seq:
                # behind: a new publisher (restart), which may hash differently; ahead: lost batches
                self._forget_blocks(source, src, reverify=seq < src.next_seq)
                self.stats.resyncs += 1
                in_order = False
            src.next_seq = seq + 1
        src.batches += 1
        self.stats.batches += 1
        self.stats.events += len(events)
        for ev in events:
            if isinstance(ev, BlockStored):
                self._stored(source, src, ev)
            elif isinstance(ev, BlockRemoved):
                self._removed(source, src, ev)
            elif isinstance(ev, AllBlocksCleared):
                self._forget_blocks(source, src)
        return in_order

    def resync(self, source: str) -> None:
        """Forget ``source``'s blocks but keep it live (its connection was re-established, maybe
        to a new process: its hash scheme is verified again)."""
        src = self._sources.get(source)
        if src is not None:
            self._forget_blocks(source, src, reverify=True)
            src.next_seq = None
            self.stats.resyncs += 1

    def remove_source(self, source: str) -> None:
        """Forget ``source`` entirely (its endpoint left the pool)."""
        src = self._sources.pop(source, None)
        if src is not None:
            self._forget_blocks(source, src)

    def _initial_scheme(self) -> int:
        return _UNVERIFIED if self.schemes else _TOKEN_KEYS

    def _verify(self, source: str, src: _Source, ev: BlockStored) -> None:
        """Settle ``source``'s scheme from a root base-model block: the first candidate scheme
        that reproduces its announced hash, else request keys."""
        tokens = ev.token_ids[: ev.block_size]
        announced = ev.block_hashes[0]
        for i, hasher in enumerate(self.schemes):
            digest = hasher.hash_block(None, tokens, None)
            if (to_event_int(digest) if isinstance(announced, int) else digest) == announced:
                src.scheme = i
                return
        src.scheme = _TOKEN_KEYS
        self.stats.hash_mismatches += 1
        tried = ", ".join(f"{h.algo} with seed {h.seed!r}" for h in self.schemes)
        log.warning(
            "kv events from %s: block hashes are not vLLM's %s; matching its blocks by token ids "
            "(set the precise scorer's tokenProcessorConfig.hashSeed to the server's PYTHONHASHSEED "
            "and prefixCachingHashAlgo to its --prefix-caching-hash-algo to match by engine hash)",
            source,
            tried,
        )

    def _verify_lora(self, source: str, src: _Source, ev: BlockStored, lora: str) -> None:
        extra = lora_extra_keys(lora, self.lora_paths[lora])
        digest = self.schemes[src.scheme].hash_block(None, ev.token_ids[: ev.block_size], extra)
        announced = ev.block_hashes[0]
        ok = (to_event_int(digest) if isinstance(announced, int) else digest) == announced
        src.loras[lora] = ok
        if not ok:
            self.stats.hash_mismatches += 1
            log.warning(
                "kv events from %s: blocks of adapter %s do not hash with path %r; matching them by "
                "token ids (loraAdapterPaths must name the path the server loaded it from)",
                source,
                lora,
                self.lora_paths[lora],
            )

    def _tier(self, medium: str | None) -> int:
        name = (medium or DEFAULT_TIER).upper()
        bit = self._tiers.get(name)
        if bit is None:
            bit = self._tiers[name] = len(self._tiers)
        return bit

    def _stored(self, source: str, src: _Source, ev: BlockStored) -> None:
        if self.block_size is not None and ev.block_size != self.block_size:
            if not self.stats.block_size_mismatch:
                log.error(
                    "kv events from %s: blocks of %d tokens, the index cuts prompts in %d "
                    "(tokenProcessorConfig.blockSizeTokens must equal the engine's --block-size)",
                    source,
                    ev.block_size,
                    self.block_size,
                )
            self.stats.block_size_mismatch += len(ev.block_hashes)
            return
        if not ev.block_hashes:
            return
        tier = self._tier(ev.medium)
        blocks = src.blocks
        lora = ev.lora_name
        if lora is None and src.scheme == _UNVERIFIED and ev.parent is None and _plain(ev.extra_keys):
            self._verify(source, src, ev)
        if lora is None and src.scheme >= 0:
            self._stored_by_hash(source, src, ev, tier)
            return
        if lora is not None and src.scheme >= 0 and lora in self.lora_paths:
            if lora not in src.loras and ev.parent is None:
                self._verify_lora(source, src, ev, lora)
            if src.loras.get(lora):
                self._stored_by_hash(source, src, ev, tier)
                return
        if ev.parent is None:
            key = _first_key(self.seed, lora)
        else:
            parent = blocks.get(ev.parent)
            if parent is None:
                self.stats.orphan_blocks += len(ev.block_hashes)
                return
            key = parent[0]
        size = ev.block_size
        tokens = ev.token_ids
        for i, h in enumerate(ev.block_hashes):
            key = hash((key, tokens[i * size : (i + 1) * size]))
            self._count(source, src, h, key, tier)

    def _stored_by_hash(self, source: str, src: _Source, ev: BlockStored, tier: int) -> None:
        for h in ev.block_hashes:
            self._count(source, src, h, engine_key(h), tier)

    def _count(self, source: str, src: _Source, h: EngineHash, key: int, tier: int) -> None:
        entry = src.blocks.get(h)
        if entry is None:
            entry = src.blocks[h] = [key] + [0] * len(self._tiers)
        elif len(entry) <= tier + 1:
            entry.extend([0] * (tier + 2 - len(entry)))
        entry[tier + 1] += 1
        if entry[tier + 1] == 1:
            self._hold(entry[0], source, 1 << tier)

    def _removed(self, source: str, src: _Source, ev: BlockRemoved) -> None:
        tier = self._tier(ev.medium)
        blocks = src.blocks
        for h in ev.block_hashes:
            entry = blocks.get(h)
            if entry is None or len(entry) <= tier + 1 or entry[tier + 1] == 0:
                continue
            entry[tier + 1] -= 1
            if entry[tier + 1] == 0:
                self._release(entry[0], source, 1 << tier)
                if not any(entry[1:]):
                    del blocks[h]

    def _hold(self, key: int, source: str, bit: int) -> None:
        holders = self._holders
        held = holders.get(key)
        if held is None:
            held = holders[key] = {}
            self.stats.admissions += 1
            if len(holders) > self.max_keys:
                holders.popitem(last=False)
                self.stats.evicted_keys += 1
        else:
            holders.move_to_end(key)
        mask = held.get(source)
        if mask is None:
            if len(held) >= self.max_sources_per_key:
                del held[next(iter(held))]
            held[source] = bit
        else:
            held[source] = mask | bit

    def _release(self, key: int, source: str, bit: int) -> None:
        held = self._holders.get(key)
        if held is None:
            return
        mask = held.get(source)
        if mask is None:
            return
        mask &= ~bit
        if mask:
            held[source] = mask
            return
        del held[source]
        if not held:
            del self._holders[key]

    def _forget_blocks(self, source: str, src: _Source, *, reverify: bool = False) -> None:
        for entry in src.blocks.values():
            for tier, count in enumerate(entry[1:]):
                if count:
                    self._release(entry[0], source, 1 << tier)
        src.blocks = {}
        if reverify:
            src.scheme = self._initial_scheme()
            src.loras = {}


def _plain(extra_keys: object) -> bool:
    """Whether a stored event's blocks carry no extra keys (cache salt, multimodal inputs), so
    its first block hashes like a plain prompt's."""
    if extra_keys is None:
        return True
    return isinstance(extra_keys, list | tuple) and all(k is None for k in extra_keys)
