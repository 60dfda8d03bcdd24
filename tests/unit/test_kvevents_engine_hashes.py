"""The precise scorer looks requests up by vLLM's own block hashes: the hashes it computes for a
request body are exactly those the simulator engine publishes for it (pickle and CBOR schemes, a
``PYTHONHASHSEED``, 64-bit and raw-digest publishing), each source's scheme is verified from its
events, and a source whose scheme is unknown (another seed) or a LoRA request falls back to keys
chained from token ids, with the same scores."""

from __future__ import annotations

import functools
import struct
from typing import Any

import pytest

from infergate.kvevents.wire import BlockStored, decode_payload
from infergate.scheduling.plugins.precise_prefix import (
    PRECISE_MATCH,
    PrecisePrefixParams,
    PrecisePrefixScorer,
    prompt_token_ids,
)
from infergate.scheduling.sdk.framework import CycleState
from infergate.simulator.drivers import VirtualDriver, VirtualLoop
from infergate.simulator.engine import Engine
from infergate.simulator.engine_types import EngineConfig, EngineRequest
from infergate.simulator.kvevents import encode_batch
from infergate.tokenization.blockhash import block_hashes, lora_extra_keys, to_event_int
from infergate.tokenization.load import load_tokenizer
from infergate.tokenization.requests import chat_token_ids, completion_token_ids
from infergate.types import ApiKind, Endpoint, EndpointMeta, InferenceRequest

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
TOK = load_tokenizer(None)
SYSTEM = "You are the support agent of a bakery; answer politely and briefly. " * 10
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "When do you open?"}]
PROMPT = SYSTEM + "Customer: when do you open?"
EP = Endpoint(meta=EndpointMeta(name="sim", address="127.0.0.1", port=8000))
SOURCE = EP.key


def chat(messages: list[dict[str, str]] = MESSAGES, **extra: object) -> InferenceRequest:
    return InferenceRequest(
        request_id="r",
        model=MODEL,
        target_model=MODEL,
        api=ApiKind.CHAT,
        prompt="flattened",
        body={"model": MODEL, "messages": messages, **extra},
    )


def completion(prompt: str = PROMPT, model: str = MODEL, **extra: object) -> InferenceRequest:
    return InferenceRequest(
        request_id="r",
        model=model,
        target_model=model,
        api=ApiKind.COMPLETIONS,
        prompt=prompt,
        body={"model": model, "prompt": prompt, **extra},
    )


def server_tokens(request: InferenceRequest) -> list[int]:
    """The ids the simulator's HTTP frontend computes for the body."""
    body = request.body or {}
    if request.api is ApiKind.CHAT:
        return chat_token_ids(TOK, body)
    return completion_token_ids(TOK, body)[0]


def engine_frames(config: EngineConfig, requests: list[tuple[list[int], str | None]]) -> list[list[bytes]]:
    """Run ``requests`` (token ids, LoRA) one after another on a simulator engine in virtual time
    and return the KV-event messages it publishes, as a pod's publisher frames them."""
    engine = Engine(config)
    if config.enable_lora:
        engine.add_lora("sql-lora", "/adapters/sql-lora")
    frames: list[list[bytes]] = []
    topic = f"kv@{SOURCE}@{MODEL}".encode()

    def sink(events: list[Any]) -> None:
        payload = encode_batch(events, ts=0.0)
        frames.append([topic, struct.pack(">Q", len(frames)), payload])

    engine.set_kv_event_sink(sink)
    loop = VirtualLoop()
    driver = VirtualDriver(engine, loop, api_overhead=0.0, sparse=True)

    def ignore(out: object) -> None:
        pass

    for i, (tokens, lora) in enumerate(requests):
        req = EngineRequest(f"r{i}", tokens, max_tokens=2, ignore_eos=True, lora_name=lora)
        loop.call_at(float(i), functools.partial(driver.submit, req, ignore))
    loop.run()
    return frames


def stored_hashes(frames: list[list[bytes]]) -> list[int | bytes]:
    out: list[int | bytes] = []
    for f in frames:
        for ev in decode_payload(f[2])[1]:
            if isinstance(ev, BlockStored):
                out.extend(ev.block_hashes)
    return out


def scorer(**params: object) -> PrecisePrefixScorer:
    base: dict[str, object] = {"kvEventsConfig": {"discoverPods": False}}
    base.update(params)
    return PrecisePrefixScorer(PrecisePrefixParams.model_validate(base))


def feed(s: PrecisePrefixScorer, frames: list[list[bytes]]) -> None:
    for f in frames:
        s.subscriber.handle(f, None)


@pytest.mark.parametrize(
    ("algo", "seed", "int_hashes"),
    [
        ("sha256", None, True),
        ("sha256_cbor", "1234", True),
        ("sha256_cbor", None, False),
        ("sha256", "7", False),
    ],
)
@pytest.mark.parametrize("make", [chat, completion], ids=["chat", "completion"])
def test_the_scorer_computes_the_hashes_the_simulator_publishes(
    algo: str, seed: str | None, int_hashes: bool, make: Any
) -> None:
    request = make()
    tokens = server_tokens(request)
    assert prompt_token_ids(request, TOK) == tokens  # tokenized as the server does (BOS rules)
    cfg = EngineConfig(
        model=MODEL, prefix_caching_hash_algo=algo, hash_seed=seed, kv_events_int_hashes=int_hashes
    )
    published = stored_hashes(engine_frames(cfg, [(tokens, None)]))
    n = len(tokens) // 16
    assert n >= 8 and len(published) >= n
    digests = block_hashes(tokens, 16, algo=algo, seed=seed)
    expected: list[int | bytes] = [to_event_int(d) for d in digests] if int_hashes else list(digests)
    assert published[:n] == expected

    s = scorer(tokenProcessorConfig={"hashSeed": seed or ""}, prefixCachingHashAlgo=algo)
    feed(s, engine_frames(cfg, [(tokens, None)]))
    scheme = s.index.scheme(SOURCE)
    assert scheme is not None and (scheme.algo, scheme.seed) == (algo, seed or "vllm-none-hash")
    state = CycleState()
    assert s.score(request, [EP], state) == {SOURCE: pytest.approx(1.0)}
    match = state.get(PRECISE_MATCH)
    assert match is not None and match.runs == {SOURCE: n}
    assert match.keys == [to_event_int(d) for d in digests]  # looked up by engine hash


def test_auto_finds_the_scheme_and_a_wrong_seed_falls_back_to_token_keys() -> None:
    request = completion()
    tokens = server_tokens(request)
    cfg = EngineConfig(model=MODEL, prefix_caching_hash_algo="sha256_cbor", hash_seed="42")
    frames = engine_frames(cfg, [(tokens, None)])
    auto = scorer(tokenProcessorConfig={"hashSeed": "42"})
    feed(auto, frames)
    scheme = auto.index.scheme(SOURCE)
    assert scheme is not None and scheme.algo == "sha256_cbor"

    wrong = scorer(tokenProcessorConfig={"hashSeed": "43"})
    feed(wrong, frames)
    assert wrong.index.scheme(SOURCE) is None  # no candidate reproduced the hashes
    assert wrong.index.stats.hash_mismatches == 1
    assert auto.debug_state()[SOURCE]["engine_hash_keys"] == 1.0
    assert wrong.debug_state()[SOURCE]["engine_hash_keys"] == 0.0
    assert wrong.score(request, [EP], CycleState()) == {SOURCE: pytest.approx(1.0)}  # token keys

    off = scorer(tokenProcessorConfig={"hashSeed": "42"}, prefixCachingHashAlgo="none")
    feed(off, frames)
    assert off.index.scheme(SOURCE) is None and off.index.stats.hash_mismatches == 0
    other = completion("A different prompt about trains and timetables. " * 8)
    for s in (auto, wrong, off):
        assert s.score(request, [EP], CycleState()) == {SOURCE: pytest.approx(1.0)}
        assert s.score(other, [EP], CycleState()) == {}


def test_lora_blocks_without_a_known_path_match_by_token_keys_and_never_cross_adapters() -> None:
    base = completion()
    lora = completion(model="sql-lora")
    tokens = server_tokens(base)
    cfg = EngineConfig(model=MODEL, enable_lora=True)
    s = scorer()
    feed(s, engine_frames(cfg, [(tokens, "sql-lora")]))
    s.subscriber.models[SOURCE] = MODEL  # the topic names the base model
    assert s.index.scheme(SOURCE) is None  # not verified yet: only LoRA blocks seen
    assert s.score(lora, [EP], CycleState()) == {SOURCE: pytest.approx(1.0)}
    assert s.score(base, [EP], CycleState()) == {}
    feed_more = engine_frames(cfg, [(tokens, "sql-lora"), (tokens, None)])
    s2 = scorer()
    feed(s2, feed_more)
    s2.subscriber.models[SOURCE] = MODEL
    assert s2.index.scheme(SOURCE) is not None  # the base request's root block verified it
    assert s2.score(base, [EP], CycleState()) == {SOURCE: pytest.approx(1.0)}
    assert s2.score(lora, [EP], CycleState()) == {SOURCE: pytest.approx(1.0)}


@pytest.mark.parametrize(("path", "by_hash"), [("/adapters/sql-lora", True), ("/elsewhere/sql-lora", False)])
def test_lora_blocks_match_by_engine_hash_when_the_adapter_path_is_known(path: str, by_hash: bool) -> None:
    base, lora = completion(), completion(model="sql-lora")
    tokens = server_tokens(base)
    frames = engine_frames(
        EngineConfig(model=MODEL, enable_lora=True), [(tokens, None), (tokens, "sql-lora")]
    )
    s = scorer(loraAdapterPaths={"sql-lora": path})
    feed(s, frames)
    s.subscriber.models[SOURCE] = MODEL
    extra = lora_extra_keys("sql-lora", "/adapters/sql-lora")
    assert (s.index.lora_keys(SOURCE, "sql-lora") == extra) is by_hash
    assert s.index.stats.hash_mismatches == (0 if by_hash else 1)
    state = CycleState()
    assert s.score(lora, [EP], state) == {SOURCE: pytest.approx(1.0)}  # either way
    match = state.get(PRECISE_MATCH)
    assert match is not None
    by_engine = [to_event_int(d) for d in block_hashes(tokens, 16, extra_keys=extra)]
    assert (match.keys == by_engine) is by_hash
    assert s.score(base, [EP], CycleState()) == {SOURCE: pytest.approx(1.0)}


@pytest.mark.parametrize("algo", ["auto", "none"])
def test_after_lost_batches_engine_hashes_keep_the_orphans(algo: str) -> None:
    """Batches lost (a sequence gap): the index forgets the source's blocks; blocks announced next
    whose parent it never saw are still indexed by engine hash, and dropped with token keys."""
    tokens = server_tokens(completion())
    frames = engine_frames(EngineConfig(model=MODEL), [(tokens[:64], None), (tokens, None)])
    assert [len(stored_hashes([f])) for f in frames] == [4, len(tokens) // 16 - 4]
    s = scorer(prefixCachingHashAlgo=algo)
    feed(s, frames[:1])
    assert s.index.blocks(SOURCE) == 4
    topic, seq, payload = frames[1]
    (n,) = struct.unpack(">Q", seq)
    feed(s, [[topic, struct.pack(">Q", n + 3), payload]])  # three batches lost in between
    assert s.index.stats.resyncs == 1
    if algo == "auto":
        assert s.index.scheme(SOURCE) is not None
        assert s.index.blocks(SOURCE) == len(tokens) // 16 - 4
        assert s.index.stats.orphan_blocks == 0
    else:
        assert s.index.blocks(SOURCE) == 0
        assert s.index.stats.orphan_blocks == len(tokens) // 16 - 4
