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

import asyncio
import bisect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from infergate.config.picker_units import parse_go_duration
from infergate.kvevents.index import KvBlockIndex, request_keys
from infergate.kvevents.subscriber import KvEventSubscriber
from infergate.scheduling.plugins.prefix import PrefixCacheParams, PrefixCacheScorer
from infergate.scheduling.sdk.framework import CycleState, Params, StateKey
from infergate.telemetry.sampled import KvIndexCollector, KvIndexState
from infergate.tokenization.blockhash import HASH_ALGOS, BlockHasher, ExtraKeys, to_event_int
from infergate.tokenization.load import load_tokenizer
from infergate.tokenization.protocol import TextTokenizer
from infergate.tokenization.requests import messages_as_chat
from infergate.types import ApiKind, Endpoint, InferenceRequest, SchedulingResult

__all__ = [
    "PreciseMatch",
    "PrecisePrefixParams",
    "PrecisePrefixScorer",
    "TokenProducerParams",
    "prompt_token_ids",
]

log = logging.getLogger(__name__)

# llm-d-router's buckets for the index lookup latency (seconds)
_LOOKUP_BOUNDS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0)


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
    """Export the index's ``llm_d_epp_kv_cache_index_*`` counters on the picker's /metrics."""
    metrics_logging_interval: int = Field(default=0, ge=0)
    """Nanoseconds (upstream's unit) between log lines of the same counters; 0: none."""


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


class VllmRenderConfig(Params):
    url: str = "http://localhost:8000"
    timeout: str = "5s"
    mm_timeout: str = "30s"
    """Upstream's timeout for multimodal renders; infergate renders text prompts only."""

    @field_validator("timeout", "mm_timeout")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_go_duration(value)
        return value

    @field_validator("url")
    @classmethod
    def _plain_http(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{value!r} must be http://host[:port] (TLS is not supported, as upstream)")
        return value

    @property
    def timeout_seconds(self) -> float:
        return parse_go_duration(self.timeout)


class TokenProducerParams(Params):
    """``token-producer``: prompts rendered by vLLM (``modelName``, ``vllm.url``), whose token ids
    the ``precise-prefix-cache-scorer`` then uses (:mod:`infergate.sources.token_producer`).
    Upstream's byte-packing ``estimate`` backend and its deprecated UDS sidecar are refused: the
    scorer's own tokenizer stands in for the first, and nothing serves the second."""

    model_name: str = ""
    vllm: VllmRenderConfig | None = None
    estimate: dict[str, object] | None = None
    uds_tokenizer_config: dict[str, object] | None = None

    @model_validator(mode="after")
    def _render_backend(self) -> TokenProducerParams:
        if self.uds_tokenizer_config is not None:
            raise ValueError("udsTokenizerConfig (a deprecated gRPC sidecar) is not supported; use vllm.url")
        if self.estimate is not None or (self.vllm is None and not self.model_name):
            raise ValueError(
                "only the vllm render backend is supported (modelName and vllm.url); without one, "
                "remove the token-producer: precise-prefix-cache-scorer tokenizes prompts itself"
            )
        if not self.model_name:
            raise ValueError("modelName is required with vllm: the model whose tokenizer renders prompts")
        return self

    @property
    def render(self) -> VllmRenderConfig:
        return self.vllm if self.vllm is not None else VllmRenderConfig()


# ----------------------------------------------------------------------------- tokens


def prompt_token_ids(
    request: InferenceRequest, tokenizer: TextTokenizer, limit: int | None = None
) -> list[int]:
    """The request's prompt token ids as the model server computes them.

    Chat: the chat template over ``messages``, no BOS added (the template carries it) unless
    ``add_special_tokens`` is true; an Anthropic message as the chat vLLM runs it as.
    Completions: a string prompt gets BOS first unless ``add_special_tokens`` is false; a
    token-id prompt is used as is. Anything else falls back to the flattened prompt text.
    """
    body = request.body or {}
    add_special = body.get("add_special_tokens")
    bos = tokenizer.bos_id
    if request.api is ApiKind.CHAT and isinstance(body.get("messages"), list):
        text = tokenizer.apply_chat_template(list(body["messages"]))
        prefix = [bos] if add_special is True and bos is not None else []
        return prefix + tokenizer.encode(text, limit)
    if request.api is ApiKind.MESSAGES:
        try:  # an Anthropic message runs as this chat on vLLM
            return tokenizer.encode(tokenizer.apply_chat_template(messages_as_chat(body)), limit)
        except ValueError:
            pass  # images, tools: the flattened text below
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
        self,
        params: PrecisePrefixParams | None = None,
        *,
        tokenizer: TextTokenizer | None = None,
        metrics: Any = None,
    ) -> None:
        """``tokenizer`` overrides the ``tokenizer`` parameter (tests); ``metrics`` (the
        gateway's) gets the index counters when ``enableMetrics`` is set."""
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
        self.lookups = self.lookup_hits = self.max_pod_hits = 0
        self._latency = [0] * (len(_LOOKUP_BOUNDS) + 1)
        self._latency_sum = 0.0
        kv = p.indexer_config.kv_block_index_config
        self._log_every = kv.metrics_logging_interval / 1e9
        if kv.enable_metrics and metrics is not None:
            metrics.registry.register(KvIndexCollector(self.index_state))

    def index_state(self) -> KvIndexState:
        """The index counters as exported (``enableMetrics``) and logged (``metricsLoggingInterval``)."""
        return KvIndexState(
            admissions=self.index.stats.admissions,
            evictions=self.index.stats.evicted_keys,
            lookups=self.lookups,
            lookup_hits=self.lookup_hits,
            max_pod_hits=self.max_pod_hits,
            latency_bounds=_LOOKUP_BOUNDS,
            latency_counts=tuple(self._latency),
            latency_sum=self._latency_sum,
        )

    async def _log_index(self) -> None:
        while True:
            await asyncio.sleep(self._log_every)
            st = self.index_state()
            log.info(
                "kv-block index: keys=%d admissions=%d evictions=%d lookups=%d lookup_hits=%d",
                len(self.index),
                st.admissions,
                st.evictions,
                st.lookups,
                st.lookup_hits,
            )

    # -------------------------------------------------------------- lifecycle (app wiring)
    def background_tasks(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """The subscriber's receive loop, run by the app for the gateway's lifetime. Binds the
        shared socket first, so a taken ``zmqEndpoint`` fails the gateway's start."""
        self.subscriber.open()
        tasks: list[tuple[str, Callable[[], Awaitable[None]]]] = [("kv-events", self.subscriber.run)]
        if self._log_every > 0:
            tasks.append(("kv-index-log", self._log_index))
        return tasks

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
        rendered = request.prompt_token_ids  # the model server's own ids (token-producer)
        tokens = (
            list(rendered[: limit * bs + 1])
            if rendered is not None
            else prompt_token_ids(request, self._tokenizer, limit * bs + 1)
        )
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
        started = time.perf_counter()
        if n and by_tokens:
            keys = request_keys(tokens, bs, lora=lora, seed=self.index.seed, limit=limit)
            runs.update(self.index.longest_runs(keys, by_tokens))
        for (scheme, extra), members in by_scheme.items():
            digests = scheme.block_hashes(tokens[: n * bs], bs, extra) if n else []
            keys = [to_event_int(d) for d in digests]
            runs.update(self.index.longest_runs(keys, members))
        if n and (by_tokens or by_scheme):
            elapsed = time.perf_counter() - started
            self.lookups += 1
            best = max((len(r) for r in runs.values()), default=0)
            self.lookup_hits += best
            self.max_pod_hits += best
            self._latency[bisect.bisect_left(_LOOKUP_BOUNDS, elapsed)] += 1
            self._latency_sum += elapsed
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
