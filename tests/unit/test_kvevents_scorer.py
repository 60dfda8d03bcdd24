"""``precise-prefix-cache-scorer``: exact scores from a hand-fed index, tokenization as the model
server does it, tiers, the match-length term, the approximate fallback and configuration errors."""

from __future__ import annotations

import pytest

from infergate.errors import ConfigError
from infergate.kvevents.wire import BlockStored
from infergate.scheduling.plugins.precise_prefix import (
    PRECISE_MATCH,
    PrecisePrefixParams,
    PrecisePrefixScorer,
    prompt_token_ids,
)
from infergate.scheduling.plugins.registry import default_registry
from infergate.scheduling.sdk.framework import CycleState, PluginContext
from infergate.tokenization.load import load_tokenizer
from infergate.types import ApiKind, Endpoint, EndpointMeta, InferenceRequest, SchedulingResult

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
TOK = load_tokenizer(None)
PROMPT = "You are a careful assistant. Answer in French. " * 12 + "What is the capital of Peru?"


def ep(i: int) -> Endpoint:
    return Endpoint(meta=EndpointMeta(name=f"s{i}", address="127.0.0.1", port=8000 + i))


EPS = [ep(0), ep(1), ep(2)]


def req(
    prompt: str = PROMPT,
    *,
    api: ApiKind = ApiKind.COMPLETIONS,
    body: dict[str, object] | None = None,
    model: str = MODEL,
) -> InferenceRequest:
    return InferenceRequest(
        request_id="r",
        model=model,
        target_model=model,
        api=api,
        prompt=prompt,
        body=body if body is not None else {"model": model, "prompt": prompt},
    )


def scorer(**params: object) -> PrecisePrefixScorer:
    base: dict[str, object] = {"kvEventsConfig": {"discoverPods": False}}
    base.update(params)
    return PrecisePrefixScorer(PrecisePrefixParams.model_validate(base))


def publish(s: PrecisePrefixScorer, source: str, tokens: list[int], blocks: int, medium: str = "GPU") -> None:
    """``source`` reports holding the first ``blocks`` blocks of ``tokens`` (engine hashes 1, 2, ...)."""
    bs = s.block_size
    hashes = tuple(range(1, blocks + 1))
    s.index.ingest(source, None, [BlockStored(hashes, None, tuple(tokens[: blocks * bs]), bs, None, medium)])


def test_tokens_follow_the_model_server() -> None:
    r = req()
    assert prompt_token_ids(r, TOK) == [TOK.bos_id, *TOK.encode(PROMPT)]
    no_bos = req(body={"prompt": PROMPT, "add_special_tokens": False})
    assert prompt_token_ids(no_bos, TOK) == TOK.encode(PROMPT)
    ids = req(body={"prompt": [5, 6, 7]})
    assert prompt_token_ids(ids, TOK) == [5, 6, 7]
    msgs = [{"role": "user", "content": "hello there"}]
    chat = req("flattened", api=ApiKind.CHAT, body={"messages": msgs})
    assert prompt_token_ids(chat, TOK) == TOK.encode(TOK.apply_chat_template(msgs))


def test_scores_are_the_weighted_run_over_the_prompt_blocks() -> None:
    s = scorer()
    tokens = prompt_token_ids(req(), TOK)
    n = len(tokens) // 16
    assert n >= 6
    publish(s, "127.0.0.1:8000", tokens, 5)
    publish(s, "127.0.0.1:8001", tokens, 2, medium="CPU")
    publish(s, "127.0.0.1:8002", [7] * 160, 10)  # live, holds other text
    state = CycleState()
    scores = s.score(req(), EPS, state)
    assert scores == pytest.approx({"127.0.0.1:8000": 5 / n, "127.0.0.1:8001": 2 * 0.8 / n})
    match = state.get(PRECISE_MATCH)
    assert match is not None and match.runs == {"127.0.0.1:8000": 5, "127.0.0.1:8001": 2, "127.0.0.1:8002": 0}


def test_match_length_term_and_backend_weights() -> None:
    s = scorer(
        matchLengthWeight=0.5,
        matchLengthScaleTokens=128,
        indexerConfig={
            "kvCacheBackendConfigs": [{"name": "gpu", "weight": 1.0}, {"name": "cpu", "weight": 0.5}]
        },
    )
    tokens = prompt_token_ids(req(), TOK)
    n = len(tokens) // 16
    publish(s, "127.0.0.1:8000", tokens, 4)
    publish(s, "127.0.0.1:8001", tokens, 3, medium="CPU")
    scores = s.score(req(), EPS[:2], CycleState())
    assert scores["127.0.0.1:8000"] == pytest.approx(0.5 * min(1, 64 / 128) ** 2 + 0.5 * 4 / n)
    assert scores["127.0.0.1:8001"] == pytest.approx(0.5 * min(1, 48 / 128) ** 2 + 0.5 * 3 * 0.5 / n)


def test_address_topics_cover_every_endpoint_at_that_address() -> None:
    s = scorer()
    tokens = prompt_token_ids(req(), TOK)
    publish(s, "127.0.0.1", tokens, 3)
    scores = s.score(req(), EPS[:2], CycleState())
    assert set(scores) == {"127.0.0.1:8000", "127.0.0.1:8001"}


def test_endpoints_without_events_fall_back_to_the_approximate_scorer() -> None:
    s = scorer()
    tokens = prompt_token_ids(req(), TOK)
    publish(s, "127.0.0.1:8000", tokens, 1)
    state = CycleState()
    s.score(req(), EPS, state)
    # the approximate index learns where the gateway sent the prompt: endpoint 2 (no events)
    s.post_pick(req(), SchedulingResult(profile="p", targets=(EPS[2],)), state)
    scores = s.score(req(), EPS, CycleState())
    assert scores["127.0.0.1:8002"] == 1.0  # every character block was sent there
    assert scores["127.0.0.1:8000"] == pytest.approx(1 / (len(tokens) // 16))
    assert "127.0.0.1:8001" not in scores


def test_adapters_match_only_their_own_blocks() -> None:
    s = scorer()
    s.subscriber.models["127.0.0.1:8000"] = MODEL
    tokens = prompt_token_ids(req(), TOK)
    bs = s.block_size
    s.index.ingest(
        "127.0.0.1:8000", None, [BlockStored((1, 2), None, tuple(tokens[: 2 * bs]), bs, "sql-lora", "GPU")]
    )
    assert s.score(req(), EPS[:1], CycleState()) == {}
    lora = req(model="sql-lora")
    assert s.score(lora, EPS[:1], CycleState())["127.0.0.1:8000"] == pytest.approx(2 / (len(tokens) // 16))


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"speculativeIndexing": True}, "speculative"),
        ({"kvEventsConfig": {"concurrency": 4}}, "concurrency"),
        ({"kvEventsConfig": {"engineType": "sglang"}}, "engineType"),
        ({"kvEventsConfig": {"podDiscoveryConfig": {"podLabelSelector": "app in (a)"}}}, "podLabelSelector"),
        ({"blockSizeTokens": 16}, "blockSizeTokens"),
        ({"indexerConfig": {"kvBlockIndexConfig": {"metricsLoggingInterval": -1}}}, "metricsLoggingInterval"),
    ],
)
def test_unsupported_parameters_are_errors(params: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        default_registry().create("precise-prefix-cache-scorer", "p", params, PluginContext())


def test_upstream_parameters_are_read() -> None:
    params = {
        "tokenProcessorConfig": {"blockSize": 64, "hashSeed": "x"},
        "indexerConfig": {"kvBlockIndexConfig": {"inMemoryConfig": {"size": 1000, "podCacheSize": 3}}},
        "kvEventsConfig": {"zmqEndpoint": "tcp://127.0.0.1:0", "topicFilter": "kv@", "discoverPods": False},
    }
    p = default_registry().create("precise-prefix-cache-scorer", "p", params, PluginContext())
    assert isinstance(p, PrecisePrefixScorer)
    assert p.block_size == 64
    assert p.index.max_keys == 1000 and p.index.max_sources_per_key == 3
    assert p.subscriber.bind == "tcp://127.0.0.1:0"
