"""Behaviour of the simulated vLLM engine: batching, KV blocks, prefix caching, LoRA, drivers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infergate.simulator.drivers import RealtimeDriver, VirtualDriver, VirtualLoop
from infergate.simulator.engine import (
    Engine,
    EngineConfig,
    EngineRequest,
    PromptTooLongError,
    RequestOutput,
    UnknownLoraError,
)
from infergate.tokenization.builtin import Tokenizer
from tests.support import free_port, wait_for


def run_virtual(engine: Engine, requests: list[tuple[float, EngineRequest]], api_overhead: float = 0.0):
    """Submit (time, request) pairs on a virtual loop; returns outputs per request id."""
    loop = VirtualLoop()
    driver = VirtualDriver(engine, loop, api_overhead=api_overhead)
    outs: dict[str, list[RequestOutput]] = {r.request_id: [] for _, r in requests}
    for t, r in requests:
        loop.call_at(t, functools.partial(driver.submit, r, outs[r.request_id].append))
    loop.run()
    return outs


def ttft(outs: list[RequestOutput]) -> float:
    first = outs[0]
    assert first.first_token_time is not None
    return first.first_token_time - first.arrival_time


def tokens_of(outs: list[RequestOutput]) -> list[int]:
    return [t for o in outs for t in o.new_token_ids]


def prompt(n: int, salt: int = 0) -> list[int]:
    return [1000 + (salt * 7919 + i) % 120000 for i in range(n)]


# -- prefix caching --------------------------------------------------------------------------


def test_repeated_prompt_hits_prefix_cache() -> None:
    p = prompt(4096)
    engine = Engine(EngineConfig())
    outs = run_virtual(
        engine,
        [(0.0, EngineRequest("a", p, max_tokens=4, ignore_eos=True)),
         (1.0, EngineRequest("b", p, max_tokens=4, ignore_eos=True))],
    )  # fmt: skip
    cold, warm = ttft(outs["a"]), ttft(outs["b"])
    assert warm < cold / 5, (cold, warm)
    assert outs["b"][-1].num_cached_tokens == 4080  # block-aligned, last token always recomputed
    s = engine.stats()
    assert s.prefix_cache_queries == 2 * 4096
    assert s.prefix_cache_hits == 4080
    assert engine.prefix_cache_contains(p, None) == 4080
    assert engine.prefix_cache_contains(p, "other-lora") == 0


def test_no_prefix_caching_when_disabled() -> None:
    p = prompt(4096)
    engine = Engine(EngineConfig(enable_prefix_caching=False))
    outs = run_virtual(
        engine,
        [(0.0, EngineRequest("a", p, max_tokens=4, ignore_eos=True)),
         (1.0, EngineRequest("b", p, max_tokens=4, ignore_eos=True))],
    )  # fmt: skip
    assert ttft(outs["b"]) == pytest.approx(ttft(outs["a"]), rel=0.01)
    assert outs["b"][-1].num_cached_tokens == 0
    assert engine.stats().prefix_cache_hits == 0


def test_lru_eviction_of_unreferenced_blocks() -> None:
    """With room for ~2 prompts, a third distinct prompt evicts the least recently used one."""
    engine = Engine(EngineConfig(num_gpu_blocks=1 + 2 * 64 + 8))
    reqs = [
        (float(i), EngineRequest(f"r{i}", prompt(1024, salt=i), max_tokens=2, ignore_eos=True))
        for i in range(3)
    ]
    run_virtual(engine, reqs)
    assert engine.prefix_cache_contains(prompt(1024, salt=0), None) < 1008  # oldest evicted
    assert engine.prefix_cache_contains(prompt(1024, salt=2), None) == 1008  # newest intact
    assert engine.stats().kv_cache_usage == 0.0  # cached-but-free blocks count as free


# -- batching, chunked prefill, preemption ---------------------------------------------------


def test_chunked_prefill_and_max_num_seqs() -> None:
    engine = Engine(EngineConfig(max_num_batched_tokens=512, max_num_seqs=2))
    loop = VirtualLoop()
    driver = VirtualDriver(engine, loop, api_overhead=0.0)
    outs: dict[str, list[RequestOutput]] = {}
    for i in range(3):
        rid = f"r{i}"
        outs[rid] = []
        driver.submit(
            EngineRequest(rid, prompt(2000, salt=i), max_tokens=3, ignore_eos=True), outs[rid].append
        )
    loop.run(until=0.0)
    seen_running = []
    driver.add_step_listener(lambda: seen_running.append(engine.stats().num_running))
    loop.run()
    assert max(seen_running) <= 2
    assert engine.stats().num_steps >= 3 * 2000 // 512  # every prompt needed several chunks
    assert all(len(tokens_of(o)) == 3 for o in outs.values())
    # r2 had to wait for a sequence slot
    assert ttft(outs["r2"]) > ttft(outs["r1"])


def test_kv_exhaustion_preempts_and_recomputes() -> None:
    engine = Engine(EngineConfig(num_gpu_blocks=64, max_num_seqs=16))
    reqs = [
        (0.0, EngineRequest(f"r{i}", prompt(200, salt=i), max_tokens=100, ignore_eos=True)) for i in range(6)
    ]
    outs = run_virtual(engine, reqs)
    s = engine.stats()
    assert s.num_preemptions > 0
    assert s.request_success_total["length"] == 6
    for i in range(6):
        assert len(tokens_of(outs[f"r{i}"])) == 100
    # identical tokens to an unconstrained run: preemption does not change what is generated
    ref = run_virtual(Engine(EngineConfig()), reqs)
    assert all(tokens_of(outs[k]) == tokens_of(ref[k]) for k in ref)
    assert s.kv_cache_usage == 0.0 and s.num_running == 0


# -- stopping --------------------------------------------------------------------------------


def test_finish_reasons() -> None:
    engine = Engine(EngineConfig())
    outs = run_virtual(
        engine,
        [
            (0.0, EngineRequest("len", prompt(50), max_tokens=5, eos_after=10)),
            (0.0, EngineRequest("stop", prompt(50, 1), max_tokens=50, eos_after=7)),
            (0.0, EngineRequest("min", prompt(50, 2), max_tokens=50, eos_after=3, min_tokens=12)),
            (0.0, EngineRequest("ign", prompt(50, 3), max_tokens=20, eos_after=3, ignore_eos=True)),
            (0.0, EngineRequest("nat", prompt(50, 4), max_tokens=100000)),
        ],
    )
    got = {k: (len(tokens_of(v)), v[-1].finish_reason) for k, v in outs.items()}
    assert got["len"] == (5, "length")
    assert got["stop"] == (7, "stop")
    assert got["min"] == (12, "stop")
    assert got["ign"] == (20, "length")
    assert got["nat"][1] == "stop" and got["nat"][0] >= 1
    assert all(v[-1].finished and not any(o.finished for o in v[:-1]) for v in outs.values())
    assert engine.stats().request_success_total == {"stop": 3, "length": 2, "abort": 0}
    assert engine.stats().generation_tokens_total == sum(n for n, _ in got.values())


def test_validation_errors() -> None:
    engine = Engine(EngineConfig(max_model_len=100))
    with pytest.raises(PromptTooLongError, match="maximum context length is 100"):
        engine.add_request(EngineRequest("a", prompt(150), max_tokens=1), 0.0)
    with pytest.raises(UnknownLoraError):
        engine.add_request(EngineRequest("b", prompt(10), max_tokens=1, lora_name="x"), 0.0)
    with pytest.raises(ValueError):
        engine.add_request(EngineRequest("c", [], max_tokens=1), 0.0)
    # max_tokens is clamped to the context left
    outs = run_virtual(engine, [(0.0, EngineRequest("d", prompt(90), max_tokens=50, ignore_eos=True))])
    assert len(tokens_of(outs["d"])) == 10


def test_abort_frees_blocks_and_counts() -> None:
    engine = Engine(EngineConfig())
    loop = VirtualLoop()
    driver = VirtualDriver(engine, loop, api_overhead=0.0)
    got: list[RequestOutput] = []
    driver.submit(EngineRequest("a", prompt(1000), max_tokens=1000, ignore_eos=True), got.append)
    loop.run(until=0.2)
    assert engine.stats().kv_cache_usage > 0
    driver.abort("a")
    assert got[-1].finish_reason == "abort"
    loop.run()
    s = engine.stats()
    assert s.kv_cache_usage == 0.0 and s.num_running == 0
    assert s.request_success_total["abort"] == 1


# -- LoRA ------------------------------------------------------------------------------------


def lora_engine(**kw) -> Engine:
    engine = Engine(EngineConfig(enable_lora=True, max_loras=2, **kw))
    for name in ("a", "b", "c"):
        engine.add_lora(name, f"/adapters/{name}")
    return engine


def test_third_adapter_waits_when_max_loras_is_two() -> None:
    engine = lora_engine()
    loop = VirtualLoop()
    driver = VirtualDriver(engine, loop, api_overhead=0.0)
    outs: dict[str, list[RequestOutput]] = {}
    for i, name in enumerate(("a", "b", "c")):
        outs[name] = []
        req = EngineRequest(name, prompt(64, i), max_tokens=30, ignore_eos=True, lora_name=name)
        driver.submit(req, outs[name].append)
    loop.run(until=0.05)
    s = engine.stats()
    assert set(s.running_loras) == {"a", "b"}
    assert s.waiting_loras == ("c",)
    assert s.num_waiting == 1 and s.num_waiting_deferred == 1
    loop.run()
    # c only starts after a or b finished
    assert outs["c"][0].now >= min(outs["a"][-1].now, outs["b"][-1].now)
    assert engine.stats().running_loras == ()


def test_lora_step_penalty_and_load_latency() -> None:
    engine = lora_engine(max_cpu_loras=2)
    base = run_virtual(
        Engine(EngineConfig()), [(0.0, EngineRequest("x", prompt(64), max_tokens=10, ignore_eos=True))]
    )
    outs = run_virtual(
        engine, [(0.0, EngineRequest("x", prompt(64), max_tokens=10, ignore_eos=True, lora_name="a"))]
    )
    itl_base = base["x"][-1].now - base["x"][-2].now
    itl_lora = outs["x"][-1].now - outs["x"][-2].now
    assert itl_lora == pytest.approx(itl_base * 1.12 + 0.001, rel=0.01)
    # "a" was evicted from the 2-entry CPU cache by "b" and "c": its first step pays a disk load
    assert ttft(outs["x"]) > ttft(base["x"]) + 0.1
    with pytest.raises(ValueError, match="already been loaded"):
        engine.add_lora("a", "/x")
    engine.remove_lora("a")
    assert "a" not in engine.loras()


# -- determinism and drivers -----------------------------------------------------------------


def workload() -> list[tuple[float, EngineRequest]]:
    return [
        (i * 0.003, EngineRequest(f"r{i}", prompt(100 + 37 * i, salt=i % 5), max_tokens=60))
        for i in range(40)
    ]


def test_same_seed_same_outputs() -> None:
    a = run_virtual(Engine(EngineConfig(seed=1)), workload())
    b = run_virtual(Engine(EngineConfig(seed=1)), workload())
    c = run_virtual(Engine(EngineConfig(seed=2)), workload())
    assert {k: [(o.new_token_ids, o.now) for o in v] for k, v in a.items()} == {
        k: [(o.new_token_ids, o.now) for o in v] for k, v in b.items()
    }
    assert {k: tokens_of(v) for k, v in a.items()} != {k: tokens_of(v) for k, v in c.items()}


async def test_realtime_driver_matches_virtual_tokens() -> None:
    reqs = [EngineRequest(f"r{i}", prompt(300, salt=i), max_tokens=25) for i in range(8)]
    virtual = run_virtual(Engine(EngineConfig()), [(0.0, r) for r in reqs])
    engine = Engine(EngineConfig())
    driver = RealtimeDriver(engine)
    await driver.start()
    try:

        async def collect(req: EngineRequest) -> list[RequestOutput]:
            return [o async for o in driver.submit(req)]

        results = await asyncio.wait_for(asyncio.gather(*(collect(r) for r in reqs)), 60)
    finally:
        await driver.stop()
    for req, got in zip(reqs, results, strict=True):
        assert tokens_of(got) == tokens_of(virtual[req.request_id])
        assert got[-1].finished and got[-1].finish_reason == virtual[req.request_id][-1].finish_reason
        # wall-clock TTFT includes the 10 ms API overhead and at least one prefill step
        assert ttft(got) >= 0.010
    assert driver.drift.steps > 0


async def test_realtime_close_aborts_request() -> None:
    engine = Engine(EngineConfig())
    driver = RealtimeDriver(engine, api_overhead=0.0)
    await driver.start()
    try:
        stream = driver.submit(EngineRequest("a", prompt(100), max_tokens=10_000, ignore_eos=True))
        first = await asyncio.wait_for(anext(stream), 60)
        assert first.new_token_ids
        aclose = getattr(stream, "aclose")  # noqa: B009
        await aclose()
        assert engine.stats().request_success_total["abort"] == 1
        assert engine.stats().num_running == 0
        # a cancelled consumer aborts too
        stream2 = driver.submit(EngineRequest("b", prompt(100, 1), max_tokens=10_000, ignore_eos=True))
        task = asyncio.ensure_future(anext(stream2))
        await asyncio.wait_for(asyncio.shield(task), 60)
        # Cancel a consumer that is waiting: under load tokens may already be buffered, and a read
        # that completes at once cannot be cancelled, so read until one has to wait.
        while True:
            task2 = asyncio.ensure_future(anext(stream2))
            await asyncio.sleep(0)
            if not task2.done():
                break
            assert task2.result().new_token_ids is not None
        task2.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task2
        assert engine.stats().request_success_total["abort"] == 2
    finally:
        await driver.stop()


# -- KV events -------------------------------------------------------------------------------


def test_kv_events_stored_and_removed() -> None:
    engine = Engine(EngineConfig(num_gpu_blocks=1 + 70))
    batches: list[list[tuple[object, ...]]] = []
    engine.set_kv_event_sink(batches.append)
    run_virtual(
        engine,
        [(0.0, EngineRequest("a", prompt(1024), max_tokens=2, ignore_eos=True)),
         (1.0, EngineRequest("b", prompt(1024, 1), max_tokens=2, ignore_eos=True))],
    )  # fmt: skip
    events = [e for b in batches for e in b]
    stored = [e for e in events if e[0] == "BlockStored"]
    removed = [e for e in events if e[0] == "BlockRemoved"]
    assert sum(len(e[1]) for e in stored) == 2 * 64  # type: ignore[misc,arg-type]
    first = stored[0]
    assert first[2] is None and first[4] == 16 and first[6] == "GPU"
    assert len(first[3]) == 16 * len(first[1])  # type: ignore[arg-type]
    assert removed, "the second prompt had to evict blocks of the first"


# -- tokenizer -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_tokenizer_split_is_lossless(text: str) -> None:
    tok = Tokenizer()
    assert "".join(tok.pieces(text)) == text
    assert tok.encode(text) == tok.encode(text)


def test_tokenizer_properties() -> None:
    Tokenizer().encode("pieces seen by another instance never change this one's decoding")
    tok = Tokenizer()
    text = "The quick brown fox jumps over the lazy dog. " * 40
    ids = tok.encode(text)
    assert 3.0 <= len(text) / len(ids) <= 6.0  # roughly 4 characters per token
    assert tok.encode(text) == Tokenizer().encode(text)
    longer = tok.encode(text + "And then some more words.")
    assert longer[: len(ids) - 1] == ids[: len(ids) - 1]
    assert all(0 <= i < tok.vocab_size for i in longer)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
    ]
    chat = tok.apply_chat_template(messages)
    assert chat.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>"
    )
    assert chat.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert tok.encode("<|eot_id|>") == [128009]
    assert tok.decode(tok.encode(chat + text)) == chat + text
    # generated filler re-encodes to the same ids, so multi-turn prompts share cached blocks
    gen = [tok.filler_token(42, i) for i in range(50)]
    assert tok.encode(tok.decode(gen)) == gen
    assert gen != [tok.filler_token(43, i) for i in range(50)]


@pytest.mark.parametrize("encoding", ["array", "map"])
def test_kv_events_over_zmq(encoding: str) -> None:
    import zmq

    from infergate.simulator.kvevents import KvEventPublisher, decode_batch

    port = free_port()
    pub = KvEventPublisher(f"tcp://*:{port}", topic="kv@127.0.0.1@m", encoding=encoding)
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"kv@")
    sub.connect(f"tcp://127.0.0.1:{port}")
    try:
        engine = Engine(EngineConfig())
        engine.set_kv_event_sink(pub.publish)
        got: list[list[bytes]] = []
        attempts: list[int] = []

        def received() -> bool:
            # PUB/SUB joins asynchronously: keep producing steps until one batch arrives. Each
            # attempt is a new prompt: a repeated one would hit the prefix cache and store nothing,
            # so a first batch lost before the subscription arrived would never be followed.
            attempts.append(len(attempts))
            req = EngineRequest(f"q{len(attempts)}", prompt(40, salt=len(attempts)), 2)
            run_virtual(engine, [(0.0, req)])
            if sub.poll(20):
                got.append(sub.recv_multipart())
            return bool(got)

        wait_for(received, timeout=10, interval=0.0, what="a KV event batch")
        topic, seq, payload = got[0]
        assert topic == b"kv@127.0.0.1@m" and len(seq) == 8
        _ts, events = decode_batch(payload)
        kinds = {e[0] for e in events}
        assert kinds <= {"BlockStored", "BlockRemoved", "AllBlocksCleared"}
        stored = next(e for e in events if e[0] == "BlockStored")
        assert stored[4] == 16 and stored[6] == "GPU" and len(stored[3]) == 32  # type: ignore[arg-type]
    finally:
        sub.close()
        pub.close()


def check_invariants(engine: Engine) -> None:
    """Block accounting: every referenced block is held by exactly its referencing requests."""
    pool = engine.pool
    held: dict[int, int] = {}
    for r in engine._running:
        for b in r.blocks:
            held[b] = held.get(b, 0) + 1
    for r in engine._waiting:
        assert not r.blocks, "waiting requests hold no blocks"
    for b in range(1, pool.num_blocks):
        assert pool.ref_cnt[b] == held.get(b, 0), f"block {b}"
    assert pool.num_free == pool.num_blocks - 1 - len(held)
    assert len(engine._running) <= engine.config.max_num_seqs
    assert len({r.lora for r in engine._running if r.lora}) <= engine.config.max_loras


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),  # shared-prefix group
            st.integers(1, 200),  # prompt length
            st.integers(1, 60),  # max tokens
            st.sampled_from([None, "a", "b", "c"]),  # adapter
            st.booleans(),  # abort it midway
        ),
        min_size=1,
        max_size=25,
    ),
    st.integers(24, 80),
    st.booleans(),
)
def test_random_workloads_keep_block_accounting(specs, blocks, caching) -> None:
    engine = Engine(
        EngineConfig(
            num_gpu_blocks=blocks,
            max_num_seqs=8,
            max_num_batched_tokens=128,
            enable_prefix_caching=caching,
            enable_lora=True,
            max_loras=2,
        )
    )
    for name in ("a", "b", "c"):
        engine.add_lora(name, name)
    loop = VirtualLoop()
    driver = VirtualDriver(engine, loop, api_overhead=0.0)
    driver.add_step_listener(lambda: check_invariants(engine))
    finished: dict[str, RequestOutput] = {}

    def on_output(o: RequestOutput) -> None:
        if o.finished:
            finished[o.request_id] = o

    for i, (group, plen, max_tokens, lora, abort) in enumerate(specs):
        p = prompt(100, group)[: min(plen, 100)] + prompt(plen, 100 + i)[: max(0, plen - 100)]
        req = EngineRequest(f"r{i}", p, max_tokens=max_tokens, ignore_eos=True, lora_name=lora)
        loop.call_at(i * 0.004, functools.partial(driver.submit, req, on_output))
        if abort:
            loop.call_at(i * 0.004 + 0.03, functools.partial(driver.abort, f"r{i}"))
    loop.run()
    check_invariants(engine)
    assert len(finished) == len(specs)
    s = engine.stats()
    assert s.num_running == 0 and s.num_waiting == 0 and s.kv_cache_usage == 0.0
    assert sum(s.request_success_total.values()) == len(specs)
    for i, (_g, _p, max_tokens, _l, _a) in enumerate(specs):
        out = finished[f"r{i}"]
        assert out.finish_reason == "abort" or out.num_generated == max_tokens


def test_frontend_serial_cost_delays_bursts() -> None:
    reqs = [EngineRequest(f"r{i}", prompt(32, i), max_tokens=1) for i in range(20)]
    loop = VirtualLoop()
    driver = VirtualDriver(Engine(EngineConfig()), loop, api_overhead=0.01, frontend_serial_cost=0.005)
    outs: list[RequestOutput] = []
    for r in reqs:
        driver.submit(r, outs.append)
    loop.run()
    ttfts = sorted(o.now - o.arrival_time for o in outs)
    assert ttfts[0] < 0.03
    assert ttfts[-1] >= 20 * 0.005  # the last one waited for 19 others to be tokenised first
