"""``precise-prefix-cache-scorer``: prefix affinity from the KV blocks endpoints actually hold.

The approximate ``prefix-cache-scorer`` guesses a model server's cache from where the gateway sent
earlier prompts. This scorer reads it: model servers publish vLLM KV events (blocks stored,
removed, cleared) over ZMQ, :mod:`infergate.kvevents` keeps an index of which endpoint holds which
block, and each request is tokenized the way the model server will tokenize it (the chat template
applied to ``messages``; BOS first for completion prompts) so its blocks can be looked up.

Score of endpoint ``e`` for a prompt of ``N`` full blocks (``blockSizeTokens`` tokens each, at
most ``maxPrefixBlocksToMatch``), where ``e`` holds the first ``r_e`` of them without a hole:

* ``matchRatio_e = Σ_{i < r_e} w(tier_i) / N`` with ``w`` the largest ``kvCacheBackendConfigs``
  weight of the tiers holding block ``i`` on ``e`` (GPU 1.0, CPU 0.8 by default);
* ``matchLength_e = min(1, r_e · blockSizeTokens / matchLengthScaleTokens)²``;
* ``score_e = matchLengthWeight · matchLength_e + (1 − matchLengthWeight) · matchRatio_e``.

The request's blocks are looked up by vLLM's own block hashes on every endpoint whose events the
index verified against a known scheme (``prefixCachingHashAlgo``, ``NONE_HASH`` from
``tokenProcessorConfig.hashSeed`` = the server's ``PYTHONHASHSEED``, vLLM's default seed when
unset), and by request keys chained from token ids on the others and for LoRA requests (see
:mod:`infergate.kvevents.index`): the scores are the same either way, the engine hashes are
cheaper to ingest and survive lost parents.

Endpoints whose events are not flowing (no batch received from them yet) are scored by the
approximate scorer's ``matchedBlocks / totalBlocks`` instead, so a pool that is partly
instrumented still gets prefix affinity everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Literal

from pydantic import Field, field_validator, model_validator

from infergate.kvevents.index import KvBlockIndex, request_keys
from infergate.kvevents.subscriber import KvEventSubscriber
from infergate.scheduling.plugins.prefix import PrefixCacheParams, PrefixCacheScorer
from infergate.scheduling.sdk.framework import CycleState, Params, StateKey
from infergate.tokenization.blockhash import HASH_ALGOS, BlockHasher, ExtraKeys, to_event_int
from infergate.tokenization.load import load_tokenizer
from infergate.tokenization.protocol import TextTokenizer
from infergate.types import ApiKind, Endpoint, InferenceRequest, SchedulingResult

__all__ = ["PreciseMatch", "PrecisePrefixParams", "PrecisePrefixScorer", "prompt_token_ids"]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- parameters


class TokenProcessorConfig(Params):
    block_size_tokens: int = Field(default=16, gt=0)
    block_size: int | None = Field(default=None, gt=0)
    """Deprecated upstream name of ``blockSizeTokens``; still accepted."""
    hash_seed: str = ""
    """The model servers' ``PYTHONHASHSEED`` (empty: unset, vLLM's default ``NONE_HASH`` seed)."""


class InMemoryConfig(Params):
    size: int = Field(default=10_000_000, gt=0)
    pod_cache_size: int = Field(default=10, gt=0)


class KvBlockIndexConfig(Params):
    in_memory_config: InMemoryConfig = InMemoryConfig()
    enable_metrics: bool = False

    @field_validator("enable_metrics")
    @classmethod
    def _no_metrics(cls, value: bool) -> bool:
        if value:
            raise ValueError("no index metrics are exported; blocks per endpoint are in /debug/endpoints")
        return value


class BackendConfig(Params):
    name: str = Field(min_length=1)
    weight: float = Field(ge=0.0, le=1.0)


class IndexerConfig(Params):
    kv_block_index_config: KvBlockIndexConfig = KvBlockIndexConfig()
    kv_cache_backend_configs: tuple[BackendConfig, ...] = (
        BackendConfig(name="gpu", weight=1.0),
        BackendConfig(name="cpu", weight=0.8),
    )


class PodDiscoveryConfig(Params):
    socket_port: int = Field(default=5557, gt=0, lt=65536)
    pod_label_selector: str = ""
    pod_namespace: str = ""


class KvEventsConfig(Params):
    zmq_endpoint: str = ""
    topic_filter: str = "kv@"
    engine_type: Literal["vllm"] = "vllm"
    discover_pods: bool = True
    pod_discovery_config: PodDiscoveryConfig = PodDiscoveryConfig()
    concurrency: int | None = None

    @field_validator("concurrency")
    @classmethod
    def _no_workers(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError("events are decoded on the picker's event loop (no worker pool); remove it")
        return value


class PrecisePrefixParams(Params):
    """Upstream's parameters (``tokenProcessorConfig``, ``indexerConfig``, ``kvEventsConfig``,
    ``speculativeIndexing``), the ``prefix-cache-scorer`` ones it forwards (``matchLengthWeight``,
    ``matchLengthScaleTokens``) and infergate's ``tokenizer`` (a ``tokenizer.json``; the built-in
    tokenizer when unset) and ``maxPrefixBlocksToMatch``."""

    token_processor_config: TokenProcessorConfig = TokenProcessorConfig()
    indexer_config: IndexerConfig = IndexerConfig()
    kv_events_config: KvEventsConfig = KvEventsConfig()
    speculative_indexing: bool = False
    speculative_ttl: str | None = None
    match_length_weight: float = Field(default=0.0, ge=0.0, le=1.0)
    match_length_scale_tokens: int = Field(default=8192, gt=0)
    max_prefix_blocks_to_match: int = Field(default=8192, gt=0)
    tokenizer: str | None = None
    prefix_caching_hash_algo: Literal["auto", "sha256", "sha256_cbor", "none"] = "auto"
    """The servers' ``--prefix-caching-hash-algo``: ``auto`` verifies each server against both,
    ``none`` matches by token ids only."""
    lora_adapter_paths: dict[str, str] = Field(default_factory=dict)
    """Adapter name → the path the servers loaded it from (vLLM hashes it into the adapter's
    blocks); adapters not listed are matched by token ids."""

    @field_validator("speculative_indexing")
    @classmethod
    def _no_speculation(cls, value: bool) -> bool:
        if value:
            raise ValueError("speculative indexing is not implemented; the index holds reported blocks only")
        return value

    @model_validator(mode="after")
    def _one_mode(self) -> PrecisePrefixParams:
        if self.speculative_ttl is not None and not self.speculative_indexing:
            raise ValueError("speculativeTTL needs speculativeIndexing (not implemented)")
        return self

    @property
    def block_size(self) -> int:
        tp = self.token_processor_config
        return tp.block_size if tp.block_size is not None else tp.block_size_tokens

    def hash_schemes(self) -> list[BlockHasher]:
        """The engine hash schemes servers are verified against (see :mod:`infergate.kvevents.index`)."""
        algo = self.prefix_caching_hash_algo
        algos = HASH_ALGOS if algo == "auto" else () if algo == "none" else (algo,)
        seed = self.token_processor_config.hash_seed or None
        return [BlockHasher(a, seed) for a in algos]


# ----------------------------------------------------------------------------- tokens


def prompt_token_ids(
    request: InferenceRequest, tokenizer: TextTokenizer, limit: int | None = None
) -> list[int]:
    """The request's prompt token ids as the model server computes them.

    Chat: the chat template over ``messages``, no BOS added (the template carries it) unless
    ``add_special_tokens`` is true. Completions: a string prompt gets BOS first unless
    ``add_special_tokens`` is false; a token-id prompt is used as is. Anything else falls back
    to the flattened prompt text.
    """
    body = request.body or {}
    add_special = body.get("add_special_tokens")
    bos = tokenizer.bos_id
    if request.api is ApiKind.CHAT and isinstance(body.get("messages"), list):
        text = tokenizer.apply_chat_template(list(body["messages"]))
        prefix = [bos] if add_special is True and bos is not None else []
        return prefix + tokenizer.encode(text, limit)
    if request.api is ApiKind.COMPLETIONS:
        prompt = body.get("prompt", request.prompt)
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        if isinstance(prompt, str):
            prefix = [bos] if add_special is not False and bos is not None else []
            return prefix + tokenizer.encode(prompt, limit)
    return tokenizer.encode(request.prompt, limit)


# ----------------------------------------------------------------------------- scorer


class PreciseMatch:
    """What the scorer found for one request (left in CycleState for later stages and the P/D
    handler): request keys, and per endpoint key the matched run in blocks (None: scored by the
    approximate fallback)."""

    __slots__ = ("block_size", "keys", "runs", "tokens")

    def __init__(self, tokens: int, block_size: int, keys: list[int], runs: dict[str, int | None]) -> None:
        self.tokens = tokens
        self.block_size = block_size
        self.keys = keys
        self.runs = runs


PRECISE_MATCH: StateKey[PreciseMatch] = StateKey("precise-prefix-match")


def _selector(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"podLabelSelector: {part!r} is not key=value (only equality is supported)")
        out[key.strip()] = value.strip().lstrip("=")
    return out


class PrecisePrefixScorer:
    """Scores endpoints by the longest run of the request's blocks their KV events say they hold."""

    def __init__(
        self, params: PrecisePrefixParams | None = None, *, tokenizer: TextTokenizer | None = None
    ) -> None:
        """``tokenizer`` overrides the ``tokenizer`` parameter (tests)."""
        p = params or PrecisePrefixParams()
        self._p = p
        self.block_size = p.block_size
        self._tokenizer = tokenizer if tokenizer is not None else load_tokenizer(p.tokenizer, reverse=False)
        mem = p.indexer_config.kv_block_index_config.in_memory_config
        self.index = KvBlockIndex(
            max_keys=mem.size,
            max_sources_per_key=mem.pod_cache_size,
            seed=hash(p.token_processor_config.hash_seed),
            block_size=self.block_size,
            schemes=p.hash_schemes(),
            lora_paths=p.lora_adapter_paths,
        )
        ev = p.kv_events_config
        self._discover = ev.discover_pods
        self._socket_port = ev.pod_discovery_config.socket_port
        self._selector = _selector(ev.pod_discovery_config.pod_label_selector)
        self._namespace = ev.pod_discovery_config.pod_namespace
        self.subscriber = KvEventSubscriber(
            self.index,
            bind=ev.zmq_endpoint or None,
            topic_filter=ev.topic_filter,
        )
        self._weights = {b.name.upper(): b.weight for b in p.indexer_config.kv_cache_backend_configs}
        self._mask_weight: dict[int, float] = {}
        self.fallback = PrefixCacheScorer(
            PrefixCacheParams(load_aware=False, auto_tune=False, block_size_tokens=self.block_size)
        )

    # -------------------------------------------------------------- lifecycle (app wiring)
    def background_tasks(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """The subscriber's receive loop, run by the app for the gateway's lifetime. Binds the
        shared socket first, so a taken ``zmqEndpoint`` fails the gateway's start."""
        self.subscriber.open()
        return [("kv-events", self.subscriber.run)]

    def sync_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """The pool's endpoints changed: follow the new ones' publishers (``discoverPods``) and
        forget the blocks of those that left."""
        keys = {e.key for e in endpoints}
        addresses = {e.meta.address for e in endpoints}
        for source in self.index.known_sources():
            if source not in keys and source not in addresses:
                self.index.remove_source(source)
        if self._discover:
            peers = []
            for e in endpoints:
                if self._namespace and e.meta.namespace != self._namespace:
                    continue
                if any(e.meta.labels.get(k) != v for k, v in self._selector.items()):
                    continue
                peers.append((e.meta.address, f"tcp://{_host(e.meta.address)}:{self._socket_port}"))
            self.subscriber.set_peers(peers)

    def remove_endpoint(self, key: str) -> None:
        self.index.remove_source(key)
        self.fallback.remove_endpoint(key)

    def debug_state(self) -> dict[str, dict[str, float]]:
        """Per endpoint: blocks held, and 1 when they are keyed by verified engine hashes (0: token keys)."""
        return {
            s: {
                "blocks": float(self.index.blocks(s)),
                "engine_hash_keys": 1.0 if self.index.scheme(s) is not None else 0.0,
            }
            for s in self.index.sources()
        }

    # -------------------------------------------------------------- scoring
    def _source(self, e: Endpoint) -> str | None:
        if self.index.is_live(e.key):
            return e.key
        if self.index.is_live(e.meta.address):
            return e.meta.address
        return None

    def _lora(self, request: InferenceRequest) -> str | None:
        base = set(self.subscriber.models.values())
        if not base or request.target_model in base:
            return None
        return request.target_model

    def _weight(self, mask: int) -> float:
        w = self._mask_weight.get(mask)
        if w is None:
            names = self.index.tier_names()
            w = max(
                (self._weights.get(n, 0.0) for i, n in enumerate(names) if mask >> i & 1),
                default=0.0,
            )
            self._mask_weight[mask] = w
        return w

    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Mapping[str, float]:
        sources = {e.key: self._source(e) for e in candidates}
        approx: Mapping[str, float] = {}
        if any(s is None for s in sources.values()):
            approx = self.fallback.score(request, candidates, state)
        bs = self.block_size
        limit = self._p.max_prefix_blocks_to_match
        tokens = prompt_token_ids(request, self._tokenizer, limit * bs + 1)
        n = min(len(tokens) // bs, limit)
        lora = self._lora(request)
        # per verified hash scheme (and adapter keys), the sources keyed by engine hash
        by_scheme: dict[tuple[BlockHasher, ExtraKeys], set[str]] = {}
        by_tokens: set[str] = set()
        for source in sources.values():
            if source is None:
                continue
            scheme = self.index.scheme(source)
            extra = None if lora is None else self.index.lora_keys(source, lora)
            if scheme is None or (lora is not None and extra is None):
                by_tokens.add(source)
            else:
                by_scheme.setdefault((scheme, extra), set()).add(source)
        runs: dict[str, list[int]] = {}
        keys: list[int] = []
        if n and by_tokens:
            keys = request_keys(tokens, bs, lora=lora, seed=self.index.seed, limit=limit)
            runs.update(self.index.longest_runs(keys, by_tokens))
        for (scheme, extra), members in by_scheme.items():
            digests = scheme.block_hashes(tokens[: n * bs], bs, extra) if n else []
            keys = [to_event_int(d) for d in digests]
            runs.update(self.index.longest_runs(keys, members))
        out: dict[str, float] = {}
        found: dict[str, int | None] = {}
        mlw = self._p.match_length_weight
        scale = self._p.match_length_scale_tokens
        for key, source in sources.items():
            if source is None:
                found[key] = None
                if key in approx:
                    out[key] = approx[key]
                continue
            masks = runs.get(source, ())
            found[key] = len(masks)
            if not masks:
                continue
            ratio = sum(self._weight(m) for m in masks) / n
            length = min(1.0, len(masks) * bs / scale) ** 2
            out[key] = mlw * length + (1.0 - mlw) * ratio
        state.put(PRECISE_MATCH, PreciseMatch(len(tokens), bs, keys, found))
        return out

    def post_pick(self, request: InferenceRequest, result: SchedulingResult, state: CycleState, /) -> None:
        """Credit the approximate fallback too, so it knows where prompts went if events stop."""
        self.fallback.post_pick(request, result, state)


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address and not address.startswith("[") else address
