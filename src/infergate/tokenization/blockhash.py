"""vLLM 0.33's prefix-cache block hashes (``--prefix-caching-hash-algo``), reproducible outside.

vLLM hashes each full block of a request as ``H((parent, tuple(token_ids), extra_keys))``, chaining
the parent block's hash; the first block's parent is ``NONE_HASH = H(seed)``, the seed being
``PYTHONHASHSEED`` when set and ``"vllm-none-hash"`` otherwise. ``H`` serialises its argument and
takes SHA-256 of the bytes: ``sha256`` (vLLM's default) pickles it with the highest protocol,
``sha256_cbor`` writes canonical CBOR (what llm-d's indexer recomputes in Go). ``extra_keys`` is
``None`` or a tuple of tagged keys; the simulator only has LoRA's, ``("lora", name, path)``.

KV events publish a hash as its low 64 bits (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1``, the
default) or as the raw 32-byte digest, so a consumer that follows vLLM's scheme on the events'
token ids gets the same values the simulator announces.

``block_hashes`` is the whole scheme as one pure function, for callers outside an engine (a gateway
computing which blocks a request would hit); ``BlockHasher`` is the same with the seed's hash
precomputed, for an engine hashing every request.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import cbor2

HASH_ALGOS = ("sha256", "sha256_cbor")
DEFAULT_SEED = "vllm-none-hash"

ExtraKeys = tuple[tuple[str, ...], ...] | None


def _pickle(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _cbor(obj: Any) -> bytes:
    return bytes(cbor2.dumps(obj, canonical=True))


_SERIALISERS: dict[str, Callable[[Any], bytes]] = {"sha256": _pickle, "sha256_cbor": _cbor}


def lora_extra_keys(name: str | None, path: str | None) -> ExtraKeys:
    """The extra keys of a request's blocks: LoRA name and path (vLLM includes the path so that
    re-pointing a name at another adapter cannot reuse the old adapter's KV)."""
    if not name:
        return None
    return (("lora", name, path or ""),)


def to_event_int(digest: bytes) -> int:
    """A hash as KV events carry it by default: the low 64 bits of the big-endian digest."""
    return int.from_bytes(digest, "big") & 0xFFFFFFFFFFFFFFFF


class BlockHasher:
    """One engine's block-hash function (algorithm and ``NONE_HASH`` seed)."""

    def __init__(self, algo: str = "sha256", seed: str | None = None) -> None:
        if algo not in _SERIALISERS:
            raise ValueError(
                f"--prefix-caching-hash-algo {algo!r} is not supported by the simulator "
                f"(supported: {', '.join(HASH_ALGOS)})"
            )
        self.algo = algo
        self.seed = DEFAULT_SEED if seed is None else seed
        self._serialise = _SERIALISERS[algo]
        self.none_hash = hashlib.sha256(self._serialise(self.seed)).digest()
        self._memo = _MEMOS[algo]

    def hash_block(self, parent: bytes | None, tokens: Sequence[int], extra: ExtraKeys) -> bytes:
        """The hash of one full block given its parent's (None for the first block)."""
        key = (parent or self.none_hash, tuple(tokens), extra)
        return hashlib.sha256(self._serialise(key)).digest()

    def block_hashes(
        self, tokens: Sequence[int], block_size: int, extra: ExtraKeys, start: list[bytes] | None = None
    ) -> list[bytes]:
        """Hashes of every full block of ``tokens``, continuing the chain in ``start`` (extended in
        place and returned), so a request's hashes grow with its generated tokens."""
        out = start if start is not None else []
        n_full = len(tokens) // block_size
        done = len(out)
        if done >= n_full:
            return out
        parent = out[-1] if out else self.none_hash
        serialise = self._serialise
        sha = hashlib.sha256
        memo = self._memo
        if len(memo) > _MEMO_LIMIT:
            memo.clear()
        for i in range(done * block_size, n_full * block_size, block_size):
            key = (parent, tuple(tokens[i : i + block_size]), extra)
            h = memo.get(key)
            if h is None:
                h = memo[key] = sha(serialise(key)).digest()
            out.append(h)
            parent = h
        return out


# Shared prefixes dominate real traffic (system prompts, earlier chat turns): each distinct block
# is serialised and hashed once per process and algorithm, not once per request (or per replica:
# the digital twin runs many engines in one process).
_MEMOS: dict[str, dict[tuple[bytes, tuple[int, ...], ExtraKeys], bytes]] = {a: {} for a in HASH_ALGOS}
_MEMO_LIMIT = 200_000  # entries (~300 B each)


_HASHERS: dict[tuple[str, str | None], BlockHasher] = {}


def block_hashes(
    token_ids: Sequence[int],
    block_size: int,
    *,
    algo: str = "sha256",
    seed: str | None = None,
    parent: bytes | None = None,
    extra_keys: ExtraKeys = None,
) -> list[bytes]:
    """vLLM's hashes of the full blocks of ``token_ids``, as 32-byte digests (``to_event_int`` gives
    the integer KV events carry).

    ``algo`` is ``--prefix-caching-hash-algo`` (``sha256`` or ``sha256_cbor``); ``seed`` is the
    engine's ``PYTHONHASHSEED`` (None: vLLM's default seed); ``parent`` is the hash of the block
    before ``token_ids[0]`` when hashing a continuation (None: the tokens start the request);
    ``extra_keys`` applies to every block (``lora_extra_keys`` for a LoRA request). A trailing
    partial block has no hash. Equal arguments give equal results in every process.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    hasher = _HASHERS.get((algo, seed))
    if hasher is None:
        hasher = _HASHERS[(algo, seed)] = BlockHasher(algo, seed)
    if parent is None:
        return hasher.block_hashes(token_ids, block_size, extra_keys)
    out: list[bytes] = []
    for i in range(0, len(token_ids) // block_size * block_size, block_size):
        parent = hasher.hash_block(parent, token_ids[i : i + block_size], extra_keys)
        out.append(parent)
    return out
