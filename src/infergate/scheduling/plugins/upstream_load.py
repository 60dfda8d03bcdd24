"""llm-d-router v0.10's token-load plugins under their upstream names and parameters.

- ``token-load-scorer``: scores endpoints by the prompt tokens in flight there, which is what the
  reference's ``inflight-load-producer`` counts; here the gateway counts them itself
  (``Endpoint.in_flight_tokens``: each request's prompt, estimated as UTF-8 bytes / 4, from the
  moment it is sent until its first streamed chunk, or its end when not streamed).
- ``prefix-cache-affinity-filter``: keeps only the "sticky" endpoints, those holding most of the
  request's prompt in their prefix cache, unless they are so loaded that the estimated TTFT penalty
  outweighs the cache hit. The prefix match comes from the profile's ``prefix-cache-scorer`` index
  (the filter runs before any scorer, so it asks that index itself).

Both are exact functions of the snapshot (and, for exploration, the injected ``rng``), so the unit
tests state their results as numbers.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import Field, field_validator, model_validator

from infergate.scheduling.plugins.prefix import PREFIX_MATCH, PrefixCacheScorer
from infergate.scheduling.sdk.framework import CycleState, Params
from infergate.types import Endpoint, InferenceRequest

__all__ = [
    "PrefixCacheAffinityFilter",
    "PrefixCacheAffinityParams",
    "TokenLoadParams",
    "TokenLoadScorer",
    "prompt_tokens",
]

CHARS_PER_TOKEN = 4
DEFAULT_QUEUE_THRESHOLD_TOKENS = 4_194_304  # the reference: 128 requests of 32K tokens


def prompt_tokens(request: InferenceRequest) -> int:
    """The request's prompt length in tokens, estimated as UTF-8 bytes / 4 (as the director counts
    the tokens it puts in flight)."""
    return len(request.prompt.encode("utf-8")) // CHARS_PER_TOKEN


def _one_counter(value: str) -> str:
    if value:
        raise ValueError(
            "infergate keeps one in-flight token count per endpoint (no producer plugin to choose); remove it"
        )
    return value


class TokenLoadParams(Params):
    """``queueThresholdTokens``: in-flight tokens at which an endpoint scores 0 (``<= 0``: the
    default, as upstream)."""

    queue_threshold_tokens: int = DEFAULT_QUEUE_THRESHOLD_TOKENS
    in_flight_load_producer_name: str = ""

    @field_validator("in_flight_load_producer_name")
    @classmethod
    def _producer(cls, value: str) -> str:
        return _one_counter(value)


def _uncached_fraction(state: CycleState) -> Mapping[str, float] | None:
    """Per endpoint, the share of the request's hashed prompt blocks not cached there, when a
    ``prefix-cache-scorer`` earlier in the profile left its match; None otherwise."""
    match = state.get(PREFIX_MATCH)
    if match is None or not match.hashes:
        return None
    total = len(match.hashes)
    return {k: 1.0 - n / total for k, n in match.matched.items()}


class TokenLoadScorer:
    """``token-load-scorer``: ``1 − min(1, tokens / queueThresholdTokens)`` where ``tokens`` is the
    endpoint's in-flight prompt tokens plus this request's tokens not cached there (all of them
    unless a ``prefix-cache-scorer`` ran earlier in the profile); no tokens → 1.0."""

    def __init__(self, params: TokenLoadParams | None = None) -> None:
        p = params or TokenLoadParams()
        threshold = p.queue_threshold_tokens
        self._threshold = float(threshold if threshold > 0 else DEFAULT_QUEUE_THRESHOLD_TOKENS)

    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Mapping[str, float]:
        own = prompt_tokens(request)
        uncached = _uncached_fraction(state)
        out = {}
        for e in candidates:
            share = 1.0 if uncached is None else uncached.get(e.key, 1.0)
            tokens = e.in_flight_tokens + own * share
            out[e.key] = 1.0 if tokens <= 0 else 1.0 - min(tokens, self._threshold) / self._threshold
        return out


class PrefixCacheAffinityParams(Params):
    """The reference's parameters and defaults (``peakPrefillThroughput`` 15928 tokens/s was
    calibrated upstream for one model and GPU pair; retune it for yours)."""

    affinity_threshold: float = Field(default=0.80, le=1.0)
    exploration_probability: float = Field(default=0.0, ge=0.0, le=1.0)
    max_ttft_penalty_ms: float = Field(default=18000.0, ge=0.0, alias="maxTTFTPenaltyMs")
    ttft_source: Literal["prefillThroughput", "latencyPredictor"] = Field(
        default="prefillThroughput", alias="ttftSource"
    )
    peak_prefill_throughput: float = Field(default=15928.0, ge=0.0)
    prefix_match_info_producer_name: str = ""
    latency_prediction_info_producer_name: str = ""
    in_flight_load_producer_name: str = ""

    @field_validator("ttft_source")
    @classmethod
    def _no_predictor(cls, value: str) -> str:
        if value == "latencyPredictor":
            raise ValueError(
                "latencyPredictor is not supported (no latency-predictor sidecar); use prefillThroughput"
            )
        return value

    @field_validator("latency_prediction_info_producer_name", "in_flight_load_producer_name")
    @classmethod
    def _producer(cls, value: str) -> str:
        return _one_counter(value)

    @model_validator(mode="after")
    def _throughput(self) -> PrefixCacheAffinityParams:
        if self.max_ttft_penalty_ms > 0 and self.peak_prefill_throughput == 0:
            raise ValueError("peakPrefillThroughput must be > 0 when ttftSource is prefillThroughput")
        return self


PREFIX_TYPES = ("prefix-cache-scorer", "approx-prefix-cache-producer")


class PrefixCacheAffinityFilter:
    """``prefix-cache-affinity-filter``: an endpoint is sticky when its prefix score
    ``matchedBlocks / totalBlocks`` (the ``prefix-cache-scorer`` index) is at least
    ``affinityThreshold``; the filter keeps only the sticky endpoints, except:

    * one candidate or fewer, ``affinityThreshold <= 0``, or (with ``explorationProbability``) a
      random exploration draw: all kept;
    * no sticky endpoint: all kept;
    * the TTFT load gate: with ``maxTTFTPenaltyMs > 0`` and some non-sticky endpoint, if the best
      sticky TTFT exceeds the best non-sticky TTFT by more than ``maxTTFTPenaltyMs``, all kept. An
      endpoint's TTFT is ``in_flight_tokens / peakPrefillThroughput × 1000`` ms.

    Needs a ``prefix-cache-scorer`` in the same profile (it keeps the index; named by
    ``prefixMatchInfoProducerName`` when there are several).
    """

    def __init__(
        self, params: PrefixCacheAffinityParams | None = None, *, rng: random.Random | None = None
    ) -> None:
        p = params or PrefixCacheAffinityParams()
        self._p = p
        self._rng = rng or random.Random()
        self._prefix: PrefixCacheScorer | None = None

    def bind_profile(self, plugins: Mapping[str, tuple[object, str]]) -> None:
        """Find the profile's ``prefix-cache-scorer`` (called when the profile is built)."""
        wanted = self._p.prefix_match_info_producer_name
        if wanted:
            found = plugins.get(wanted)
            if found is None or found[1] not in PREFIX_TYPES:
                raise ValueError(
                    f"prefixMatchInfoProducerName {wanted!r} names no prefix-cache-scorer in this profile"
                )
        scorers = [inst for inst, type_ in plugins.values() if isinstance(inst, PrefixCacheScorer)]
        if wanted and isinstance(plugins[wanted][0], PrefixCacheScorer):
            scorers = [plugins[wanted][0]]  # type: ignore[list-item]
        if len(scorers) != 1:
            raise ValueError(
                "needs exactly one prefix-cache-scorer in the same profile (it keeps the prefix index "
                f"this filter reads; found {len(scorers)}); name one with prefixMatchInfoProducerName"
            )
        scorer = scorers[0]
        if self._prefix is not None and self._prefix is not scorer:
            raise ValueError("is used in two profiles with different prefix-cache-scorers")
        self._prefix = scorer

    def prefix_scores(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> dict[str, float]:
        """``matchedBlocks / totalBlocks`` per candidate key (missing: 0)."""
        if self._prefix is None:
            return {}
        hashes = self._prefix.hashes_for(request, candidates)
        if not hashes:
            return {}
        total = len(hashes)
        return {k: n / total for k, n in self._prefix.index.match(hashes).items()}

    def _ttft_ms(self, e: Endpoint) -> float:
        return e.in_flight_tokens / self._p.peak_prefill_throughput * 1000.0

    def filter(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Sequence[Endpoint]:
        p = self._p
        if len(candidates) <= 1 or p.affinity_threshold <= 0:
            return candidates
        if p.exploration_probability > 0 and self._rng.random() < p.exploration_probability:
            return candidates
        scores = self.prefix_scores(request, candidates)
        sticky = [e for e in candidates if scores.get(e.key, 0.0) >= p.affinity_threshold]
        if not sticky:
            return candidates
        if p.max_ttft_penalty_ms > 0 and len(sticky) < len(candidates):
            others = [e for e in candidates if scores.get(e.key, 0.0) < p.affinity_threshold]
            best_sticky = min(self._ttft_ms(e) for e in sticky)
            best_other = min(self._ttft_ms(e) for e in others)
            if best_sticky - best_other > p.max_ttft_penalty_ms:
                return candidates
        return sticky
