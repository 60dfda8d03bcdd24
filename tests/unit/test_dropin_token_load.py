"""``token-load-scorer`` and ``prefix-cache-affinity-filter`` (llm-d-router v0.10 names and
parameters): exact scores and filter results, the gateway's in-flight token count they read, and
their configuration errors."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from infergate.config.picker import parse_picker_config
from infergate.errors import ConfigError
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.scheduling.plugins.prefix import (
    PREFIX_MATCH,
    PrefixCacheParams,
    PrefixCacheScorer,
    PrefixMatch,
)
from infergate.scheduling.plugins.upstream_load import (
    PrefixCacheAffinityFilter,
    PrefixCacheAffinityParams,
    TokenLoadParams,
    TokenLoadScorer,
)
from infergate.scheduling.sdk.framework import CycleState
from infergate.scheduling.sdk.testing import make_endpoint
from infergate.types import Endpoint, InferenceRequest, SchedulingResult
from tests.unit.test_director import FakeClock, body, make_director, make_store

HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"


def ep(name: str, tokens: int = 0, **metrics: Any) -> Endpoint:
    return replace(make_endpoint(name, **metrics), in_flight_tokens=tokens)


def req(prompt: str = "") -> InferenceRequest:
    return InferenceRequest(request_id="r", model="m", target_model="m", prompt=prompt)


# ------------------------------------------------------------------------- token-load-scorer


def test_token_load_scores_in_flight_plus_own_tokens_against_the_threshold() -> None:
    scorer = TokenLoadScorer(TokenLoadParams(queue_threshold_tokens=4000))
    cands = [ep("a"), ep("b", 1000), ep("c", 5000)]
    # 400 bytes = 100 tokens of this request, added everywhere (no prefix match known)
    assert dict(scorer.score(req("x" * 400), cands, CycleState())) == {
        "a:8000": 1 - 100 / 4000,
        "b:8000": 1 - 1100 / 4000,
        "c:8000": 0.0,
    }
    assert dict(scorer.score(req(), [ep("a")], CycleState())) == {"a:8000": 1.0}  # nothing in flight


def test_token_load_counts_only_the_uncached_part_of_the_request_when_the_prefix_match_is_known() -> None:
    scorer = TokenLoadScorer(TokenLoadParams(queue_threshold_tokens=1000))
    state = CycleState()
    state.put(PREFIX_MATCH, PrefixMatch(hashes=[1, 2, 3, 4], matched={"a:8000": 3}))
    scores = scorer.score(req("x" * 800), [ep("a"), ep("b")], state)  # 200 tokens
    assert dict(scores) == {"a:8000": 1 - 50 / 1000, "b:8000": 1 - 200 / 1000}


def test_token_load_threshold_defaults_as_upstream() -> None:
    for given in (0, -5):
        scorer = TokenLoadScorer(TokenLoadParams(queue_threshold_tokens=given))
        assert dict(scorer.score(req(), [ep("a", 4_194_304 // 2)], CycleState())) == {"a:8000": 0.5}


async def test_the_director_counts_prompt_tokens_in_flight_until_the_first_streamed_chunk() -> None:
    clock = FakeClock()
    ds = make_store(clock, n=1)
    d = make_director(ds, clock)
    prompt = "y" * 4000  # 1000 tokens
    ctx = await d.handle_request(path="/v1/completions", headers={}, body=body(prompt=prompt, stream=True))
    key = ctx.target.key
    assert ds.endpoint(key).in_flight_tokens == 1000  # type: ignore[union-attr]
    d.handle_response_headers(ctx, 200, {"content-type": "text/event-stream"})
    d.handle_response_chunk(ctx, b'data: {"choices": [{"text": "a"}]}\n\n', end_of_stream=False)
    endpoint = ds.endpoint(key)
    assert endpoint is not None and (endpoint.in_flight, endpoint.in_flight_tokens) == (1, 0)
    d.handle_response_complete(ctx)
    endpoint = ds.endpoint(key)
    assert endpoint is not None and (endpoint.in_flight, endpoint.in_flight_tokens) == (0, 0)
    # not streamed: the tokens stay until the answer is complete
    ctx = await d.handle_request(path="/v1/completions", headers={}, body=body(prompt=prompt))
    d.handle_response_headers(ctx, 200, {"content-type": "application/json"})
    d.handle_response_chunk(ctx, b'{"choices": []}', end_of_stream=True)
    assert ds.endpoint(key).in_flight_tokens == 1000  # type: ignore[union-attr]
    d.handle_response_complete(ctx)
    assert ds.endpoint(key).in_flight_tokens == 0  # type: ignore[union-attr]


# ------------------------------------------------------------------------- prefix-cache-affinity-filter

BLOCK = 16 * 4  # blockSizeTokens 16, 4 bytes per token
PROMPT = "".join(chr(ord("a") + i) * BLOCK for i in range(4))  # exactly 4 blocks


def affinity(**params: object) -> tuple[PrefixCacheAffinityFilter, list[Endpoint]]:
    """A filter bound to a prefix index where a holds all 4 blocks of PROMPT, b the first 3."""
    scorer = PrefixCacheScorer(PrefixCacheParams(load_aware=False, auto_tune=False))
    cands = [ep("a", tokens=int(params.pop("a_tokens", 0))), ep("b"), ep("c")]  # type: ignore[call-overload]
    hashes = scorer.hashes_for(req(PROMPT), cands)
    assert len(hashes) == 4
    scorer.index.add("a:8000", hashes, 100)
    scorer.index.add("b:8000", hashes[:3], 100)
    f = PrefixCacheAffinityFilter(PrefixCacheAffinityParams.model_validate(params), rng=random.Random(0))
    f.bind_profile({"prefix-cache-scorer": (scorer, "prefix-cache-scorer")})
    return f, cands


def keys(out: object) -> list[str]:
    return [e.key for e in out]  # type: ignore[attr-defined]


def test_affinity_filter_keeps_the_endpoints_at_or_above_the_threshold() -> None:
    f, cands = affinity()
    assert f.prefix_scores(req(PROMPT), cands) == {"a:8000": 1.0, "b:8000": 0.75}
    assert keys(f.filter(req(PROMPT), cands, CycleState())) == ["a:8000"]  # default 0.80
    f, cands = affinity(affinityThreshold=0.75)
    assert keys(f.filter(req(PROMPT), cands, CycleState())) == ["a:8000", "b:8000"]


@pytest.mark.parametrize(
    "params",
    [
        {"affinityThreshold": 0.0},  # disabled
        {"affinityThreshold": 1.0, "explorationProbability": 1.0},  # always explores
    ],
)
def test_affinity_filter_keeps_all_when_disabled_or_exploring(params: dict[str, float]) -> None:
    f, cands = affinity(**params)
    assert keys(f.filter(req(PROMPT), cands, CycleState())) == ["a:8000", "b:8000", "c:8000"]


def test_affinity_filter_keeps_all_without_a_sticky_endpoint_or_a_second_candidate() -> None:
    f, cands = affinity()
    assert len(f.filter(req("no block of this prompt was ever sent" * 8), cands, CycleState())) == 3
    assert keys(f.filter(req(PROMPT), cands[:1], CycleState())) == ["a:8000"]


def test_affinity_filter_breaks_stickiness_when_the_sticky_ttft_penalty_is_too_high() -> None:
    # a has 20,000 tokens in flight: 20,000 / 1,000 tok/s = 20 s TTFT against 0 s on c
    f, cands = affinity(a_tokens=20_000, peakPrefillThroughput=1000.0)
    assert len(f.filter(req(PROMPT), cands, CycleState())) == 3  # 20,000 ms > 18,000 ms default
    f, cands = affinity(a_tokens=20_000, peakPrefillThroughput=1000.0, maxTTFTPenaltyMs=25_000)
    assert keys(f.filter(req(PROMPT), cands, CycleState())) == ["a:8000"]
    f, cands = affinity(a_tokens=20_000, peakPrefillThroughput=1000.0, maxTTFTPenaltyMs=0)
    assert keys(f.filter(req(PROMPT), cands, CycleState())) == ["a:8000"]  # 0: always stick


def test_affinity_filter_steers_a_repeated_prompt_through_the_scheduler() -> None:
    """From YAML: the queue scorer alone would move the second request to the idle endpoint; the
    filter keeps it where its prompt is cached."""
    cfg = parse_picker_config(
        HEAD
        + """plugins:
- {type: prefix-cache-affinity-filter, name: affinity}
- {type: queue-scorer}
- {type: prefix-cache-scorer, parameters: {autoTune: false}}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: affinity}, {pluginRef: queue-scorer}, {pluginRef: prefix-cache-scorer, weight: 0}]
"""
    )
    sched = build_scheduler(cfg, rng=random.Random(0))
    first = sched.schedule(req(PROMPT), [ep("a", waiting_queue_size=0), ep("b", waiting_queue_size=5)])
    assert first.primary.key == "a:8000"
    busy_a = [ep("a", waiting_queue_size=5), ep("b", waiting_queue_size=0)]
    assert sched.schedule(req(PROMPT), busy_a).primary.key == "a:8000"
    assert sched.schedule(req("another prompt " * 30), busy_a).primary.key == "b:8000"


@pytest.mark.parametrize(
    ("yaml", "error"),
    [
        (
            "plugins: [{type: prefix-cache-affinity-filter}, {type: queue-scorer}]",
            "needs exactly one prefix-cache-scorer in the same profile",
        ),
        (
            "plugins: [{type: prefix-cache-affinity-filter, parameters: {ttftSource: latencyPredictor}}]",
            "latencyPredictor is not supported",
        ),
        (
            "plugins: [{type: prefix-cache-affinity-filter, parameters: {peakPrefillThroughput: 0}}]",
            "peakPrefillThroughput must be > 0",
        ),
        (
            "plugins: [{type: prefix-cache-affinity-filter, parameters: {affinityThreshold: 1.5}}]",
            "affinityThreshold",
        ),
        (
            "plugins: [{type: prefix-cache-affinity-filter, parameters: {explorationProbability: 2}}]",
            "explorationProbability",
        ),
        (
            "plugins: [{type: prefix-cache-scorer}, {type: prefix-cache-affinity-filter,"
            " parameters: {prefixMatchInfoProducerName: nope}}]",
            "prefixMatchInfoProducerName 'nope' names no prefix-cache-scorer",
        ),
        (
            "plugins: [{type: token-load-scorer, parameters: {inFlightLoadProducerName: mine}}]",
            "infergate keeps one in-flight token count",
        ),
        ("plugins: [{type: token-load-scorer, parameters: {threshold: 5}}]", "threshold"),
        ("plugins: [{type: inflight-load-producer, parameters: {addEstimatedOutputTokens: true}}]", "False"),
    ],
)
def test_configuration_errors_name_the_parameter(yaml: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        build_scheduler(parse_picker_config(HEAD + yaml + "\n"))


def test_post_pick_credit_feeds_the_filter() -> None:
    """The filter reads the very index the scorer fills after each pick (no copy of its own)."""
    f, cands = affinity()
    scorer = f._prefix
    assert scorer is not None
    other = req("z" * BLOCK * 2)
    state = CycleState()
    scorer.score(other, cands, state)
    scorer.post_pick(other, SchedulingResult(profile="default", targets=(cands[2],)), state)
    assert keys(f.filter(other, cands, CycleState())) == ["c:8000"]
