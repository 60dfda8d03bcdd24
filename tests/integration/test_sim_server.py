"""The simulator's HTTP API against real clients (openai SDK, aiohttp) on an in-process server.

Step durations are scaled down (``--time-scale``) so the engine runs fast; every assertion is about
shapes, counts and engine state, never about sleeping.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgpack
import openai
import pytest
import zmq
import zmq.asyncio
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from infergate.simulator.args import parse_args
from infergate.simulator.server import SimServer
from infergate.tokenization.builtin import BOS_ID, Tokenizer
from tests.support import async_wait_for, free_port

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
FAST = ["--host", "127.0.0.1", "--port", "0", "--time-scale", "0.05"]


async def start(argv: list[str], env: dict[str, str] | None = None) -> SimServer:
    server = SimServer(parse_args([*FAST, *argv], env or {}))
    await server.start()
    return server


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    server = await start(
        ["--model", MODEL, "--enable-lora", "--max-loras", "2", "--lora-modules", "sql-lora=/adapters/sql"],
        {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"},
    )
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def client(sim: SimServer) -> AsyncIterator[openai.AsyncOpenAI]:
    c = openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="sim", max_retries=0)
    try:
        yield c
    finally:
        await c.close()


async def post(url: str, body: Any, *, raw: bytes | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s:
        data = raw if raw is not None else json.dumps(body).encode()
        async with s.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
            return r.status, await r.text()


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict[str, Any], family: str, name: str | None = None, **labels: str) -> float:
    for s in fams[family].samples:
        if s.name == (name or family) and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {name or family} {labels}")


# ------------------------------------------------------------------------------ OpenAI API


async def test_completion_non_stream_usage_and_model(client: openai.AsyncOpenAI) -> None:
    prompt = "The quick brown fox jumps over the lazy dog"
    r = await client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=12, extra_body={"ignore_eos": True}
    )
    assert r.model == MODEL
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].finish_reason == "length" and r.choices[0].text
    assert r.usage is not None
    assert r.usage.prompt_tokens == 1 + len(Tokenizer().encode(prompt))  # BOS + text, like Llama-3
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


async def test_completion_stream_matches_non_stream(client: openai.AsyncOpenAI) -> None:
    prompt = "Streaming should give the same text as a single response"
    full = await client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=8, extra_body={"ignore_eos": True}
    )
    stream = await client.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    texts, reasons, usage = [], [], None
    async for chunk in stream:
        if chunk.usage is not None:
            assert chunk.choices == []
            usage = chunk.usage
        for c in chunk.choices:
            texts.append(c.text)
            reasons.append(c.finish_reason)
    assert "".join(texts) == full.choices[0].text
    assert reasons[-1] == "length" and all(r is None for r in reasons[:-1])
    assert usage is not None and full.usage is not None
    assert usage.completion_tokens == 8 and usage.prompt_tokens == full.usage.prompt_tokens


async def test_chat_non_stream_and_stream(client: openai.AsyncOpenAI) -> None:
    messages: Any = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    r = await client.chat.completions.create(model="sql-lora", messages=messages, max_completion_tokens=5)
    assert r.model == "sql-lora" and r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.usage is not None and 1 <= r.usage.completion_tokens <= 5
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=6, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    finals = [c.choices[0].finish_reason for c in chunks[:-1] if c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0] in ("stop", "length")
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text and chunks[-1].usage.completion_tokens <= 6


async def test_raw_sse_format(sim: SimServer) -> None:
    body = {
        "model": MODEL,
        "prompt": "raw sse",
        "max_tokens": 3,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    status, text = await post(f"{sim.url}/v1/completions", body)
    assert status == 200
    events = text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert [len(p["choices"]) for p in payloads] == [1, 1, 1, 0]
    assert (
        payloads[-1]["usage"]["completion_tokens"] == 3
        and payloads[-2]["choices"][0]["finish_reason"] == "length"
    )


async def test_stream_sends_nothing_before_the_first_token() -> None:
    """vLLM's first streamed bytes are the role chunk sent with the first output, not before the
    prefill: a gateway reads its time to first token from them. One sequence slot, held by a
    400-token answer, makes a streamed chat wait; its first chunk must come after that answer and
    its own first token were generated."""
    server = await start(["--model", MODEL, "--max-num-seqs", "1"])
    long_body = {"model": MODEL, "prompt": "hold the slot", "max_tokens": 400, "ignore_eos": True}
    chat_body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "wait for it"}],
        "max_tokens": 2,
        "stream": True,
    }
    try:
        holder = asyncio.create_task(post(f"{server.url}/v1/completions", long_body))
        await async_wait_for(lambda: _running(server, 1), timeout=10, what="the long answer running")
        url = f"{server.url}/v1/chat/completions"
        async with aiohttp.ClientSession() as s, s.post(url, json=chat_body) as r:
            first = await r.content.readuntil(b"\n\n")
            generated = server.engine.stats().generation_tokens_total
            rest = await r.read()
        delta = json.loads(first.removeprefix(b"data: "))["choices"][0]["delta"]
        assert delta == {"role": "assistant", "content": ""}
        assert generated >= 401, generated
        assert rest.endswith(b"data: [DONE]\n\n")
        assert (await holder)[0] == 200
    finally:
        await server.stop()


async def test_streamed_echo_travels_with_the_first_token() -> None:
    server = await start(["--model", MODEL])
    body = {"model": MODEL, "prompt": "one two", "max_tokens": 2, "stream": True, "echo": True}
    body["ignore_eos"] = True
    try:
        status, text = await post(f"{server.url}/v1/completions", body)
        texts = [json.loads(e.removeprefix("data: "))["choices"][0]["text"] for e in text.split("\n\n")[:-2]]
        assert status == 200 and len(texts) == 2 and texts[0].startswith("one two") and texts[0] != "one two"
    finally:
        await server.stop()


async def test_n_choices_and_batched_prompts(client: openai.AsyncOpenAI) -> None:
    r = await client.completions.create(
        model=MODEL, prompt="two choices", n=2, max_tokens=4, extra_body={"ignore_eos": True}
    )
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert r.usage is not None and r.usage.completion_tokens == 8
    r2 = await client.completions.create(
        model=MODEL, prompt=["first prompt", "second one here"], max_tokens=2, extra_body={"ignore_eos": True}
    )
    assert [c.index for c in r2.choices] == [0, 1]
    tok = Tokenizer()
    assert r2.usage is not None
    assert r2.usage.prompt_tokens == 2 + len(tok.encode("first prompt")) + len(tok.encode("second one here"))


async def test_stop_strings_and_natural_stop(sim: SimServer, client: openai.AsyncOpenAI) -> None:
    prompt = "Tell me a story about a cache"
    base = await client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=30, extra_body={"ignore_eos": True}
    )
    words = base.choices[0].text.split()
    stop_word = words[len(words) // 2]
    cut = base.choices[0].text.index(" " + stop_word)
    for stream in (False, True):
        if stream:
            s = await client.completions.create(
                model=MODEL,
                prompt=prompt,
                max_tokens=30,
                stop=[" " + stop_word],
                stream=True,
                extra_body={"ignore_eos": True},
            )
            parts = [(c.choices[0].text, c.choices[0].finish_reason) async for c in s]
            text, reason = "".join(p for p, _ in parts), parts[-1][1]
        else:
            r = await client.completions.create(
                model=MODEL,
                prompt=prompt,
                max_tokens=30,
                stop=" " + stop_word,
                extra_body={"ignore_eos": True},
            )
            text, reason = r.choices[0].text, r.choices[0].finish_reason
        assert text == base.choices[0].text[:cut]
        assert reason == "stop"
    # a stop-string finish counts as "stop" in vllm:request_success_total, as in vLLM, not as "abort"
    success = sim.engine.stats().request_success_total
    assert success.get("abort", 0) == 0 and success["stop"] == 2
    # without ignore_eos the simulated model stops by itself (deterministically) before a large budget
    r = await client.completions.create(model=MODEL, prompt=prompt, max_tokens=5000)
    assert r.choices[0].finish_reason == "stop" and r.usage is not None and r.usage.completion_tokens < 5000
    natural = r.usage.completion_tokens
    r = await client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=5000, extra_body={"min_tokens": natural + 3}
    )
    assert r.usage is not None and r.usage.completion_tokens >= natural + 3


async def test_numeric_string_temperature_accepted(sim: SimServer) -> None:
    status, text = await post(
        f"{sim.url}/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2, "temperature": "0.5"}
    )
    assert status == 200, text
    status, text = await post(
        f"{sim.url}/v1/completions",
        {"model": MODEL, "prompt": "hi", "max_tokens": 2, "temperature": "TEMPERATURE"},
    )
    assert status == 400 and json.loads(text)["error"]["param"] == "temperature"


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("path", "body", "raw", "status", "fragment"),
    [
        ("/v1/completions", {"model": "nope", "prompt": "x"}, None, 404, "The model `nope` does not exist"),
        (
            "/v1/chat/completions",
            {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
            None,
            404,
            "does not exist",
        ),
        ("/v1/completions", None, b"{not json", 400, "Invalid JSON"),
        ("/v1/completions", None, b"", 400, "JSON object"),
        ("/v1/completions", {"model": MODEL}, None, 400, "prompt"),
        ("/v1/chat/completions", {"model": MODEL}, None, 400, "messages"),
        ("/v1/chat/completions", {"model": MODEL, "messages": "hi"}, None, 400, "messages"),
        ("/v1/completions", {"prompt": "x", "max_tokens": "many"}, None, 400, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "n": 0}, None, 400, "n must be at least 1"),
        (
            "/v1/completions",
            {"prompt": "x", "stream_options": {"include_usage": True}},
            None,
            400,
            "stream=True",
        ),
        ("/v1/completions", {"prompt": "x", "stop": 5}, None, 400, "stop"),
        ("/detokenize", {"tokens": "abc"}, None, 400, "tokens"),
    ],
)
async def test_errors_in_vllm_shape(
    sim: SimServer, path: str, body: Any, raw: bytes | None, status: int, fragment: str
) -> None:
    got, text = await post(sim.url + path, body, raw=raw)
    assert got == status, text
    err = json.loads(text)["error"]
    assert err["code"] == status and fragment in err["message"]
    assert err["type"] == ("NotFoundError" if status == 404 else "BadRequestError")


async def test_prompt_too_long_and_clamped_max_tokens(client: openai.AsyncOpenAI) -> None:
    server = await start(["--model", MODEL, "--max-model-len", "64"])
    small = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="sim", max_retries=0)
    try:
        with pytest.raises(openai.BadRequestError) as info:
            await small.completions.create(model=MODEL, prompt="word " * 100, max_tokens=4)
        assert "maximum context length is 64 tokens" in str(info.value)
        assert info.value.status_code == 400
        prompt = "word " * 50  # 50 tokens: only 14 left for output
        # a budget within max_model_len is clamped to the room left (one above it is a 400 in
        # vLLM 0.33: test_sim_validation.py)
        r = await small.completions.create(
            model=MODEL, prompt=prompt, max_tokens=60, extra_body={"ignore_eos": True}
        )
        assert r.usage is not None and r.usage.prompt_tokens + r.usage.completion_tokens == 64
        with pytest.raises(openai.NotFoundError):
            await client.completions.create(model="missing-model", prompt="x")
    finally:
        await small.close()
        await server.stop()


async def test_unknown_route_and_method(sim: SimServer) -> None:
    assert await get(f"{sim.url}/does/not/exist") == (404, '{"detail":"Not Found"}')
    status, _ = await get(f"{sim.url}/v1/completions")
    assert status == 405


# ------------------------------------------------------------------------------ models, LoRA


async def test_models_lists_base_and_adapters(client: openai.AsyncOpenAI) -> None:
    models = {m.id: m for m in (await client.models.list()).data}
    assert set(models) == {MODEL, "sql-lora"}
    base = models[MODEL].model_extra
    assert base is not None and base["parent"] is None
    lora = models["sql-lora"].model_extra
    assert lora is not None and lora["parent"] == MODEL and lora["root"] == "/adapters/sql"
    assert base["max_model_len"] == 131072 and models[MODEL].owned_by == "vllm"


async def test_lora_load_unload_messages(sim: SimServer, client: openai.AsyncOpenAI) -> None:
    url = sim.url
    status, text = await post(
        f"{url}/v1/load_lora_adapter", {"lora_name": "food", "lora_path": "/adapters/food"}
    )
    assert (status, text) == (200, "Success: LoRA adapter 'food' added successfully.")
    assert "food" in {m.id for m in (await client.models.list()).data}
    r = await client.completions.create(model="food", prompt="recipe", max_tokens=2)
    assert r.model == "food"
    status, text = await post(
        f"{url}/v1/load_lora_adapter", {"lora_name": "food", "lora_path": "/adapters/food"}
    )
    assert status == 400
    err = json.loads(text)["error"]
    assert err["message"] == (
        "The lora adapter 'food' has already been loaded. If you want to load the adapter in place, "
        "set 'load_inplace' to True."
    )
    assert err["type"] == "InvalidUserInput"
    status, _ = await post(
        f"{url}/v1/load_lora_adapter",
        {"lora_name": "food", "lora_path": "/adapters/food2", "load_inplace": True},
    )
    assert status == 200
    status, text = await post(f"{url}/v1/load_lora_adapter", {"lora_name": "x"})
    assert status == 400 and "Both 'lora_name' and 'lora_path' must be provided." in text
    status, text = await post(f"{url}/v1/load_lora_adapter", {"lora_name": MODEL, "lora_path": "/a"})
    assert status == 400 and "conflicts with a served base model" in text
    status, text = await post(
        f"{url}/v1/load_lora_adapter", {"lora_name": "bad", "lora_path": "/nonexistent/bad"}
    )
    assert status == 404 and "Loading lora bad failed: No adapter found for /nonexistent/bad" in text
    status, text = await post(f"{url}/v1/unload_lora_adapter", {"lora_name": "food"})
    assert (status, text) == (200, "Success: LoRA adapter 'food' removed successfully.")
    status, text = await post(f"{url}/v1/unload_lora_adapter", {"lora_name": "food"})
    assert (
        status == 404 and json.loads(text)["error"]["message"] == "The lora adapter 'food' cannot be found."
    )
    with pytest.raises(openai.NotFoundError):
        await client.completions.create(model="food", prompt="recipe", max_tokens=2)


async def test_runtime_lora_updating_disabled_without_env() -> None:
    server = await start(["--model", MODEL, "--enable-lora"], {})
    try:
        status, text = await post(f"{server.url}/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "/a"})
        assert (status, json.loads(text)) == (404, {"detail": "Not Found"})
    finally:
        await server.stop()


# ------------------------------------------------------------------------------ metrics


async def test_metrics_follow_engine_state_and_disconnect_aborts() -> None:
    server = await start(["--model", MODEL, "--max-num-seqs", "2"])
    url = server.url
    body = {
        "model": MODEL,
        "prompt": "long running request",
        "max_tokens": 100000,
        "ignore_eos": True,
        "stream": True,
    }

    async def consume(session: aiohttp.ClientSession) -> None:
        async with session.post(f"{url}/v1/completions", json=body) as r:
            async for _ in r.content:
                pass

    session = aiohttp.ClientSession()
    tasks = [asyncio.create_task(consume(session)) for _ in range(5)]
    try:

        async def state(running: int, waiting: int) -> bool:
            fams = families((await get(f"{url}/metrics"))[1])
            return (sample(fams, "vllm:num_requests_running"), sample(fams, "vllm:num_requests_waiting")) == (
                running,
                waiting,
            )

        await async_wait_for(lambda: state(2, 3), timeout=15, what="2 running / 3 waiting")
        stats = server.engine.stats()
        assert (stats.num_running, stats.num_waiting) == (2, 3)
        fams = families((await get(f"{url}/metrics"))[1])
        assert fams["vllm:num_requests_running"].type == "gauge"
        assert fams["vllm:prompt_tokens"].type == "counter"
        assert fams["vllm:time_to_first_token_seconds"].type == "histogram"
        assert 0 < sample(fams, "vllm:kv_cache_usage_perc", model_name=MODEL, engine="0") < 1
        assert sample(fams, "vllm:generation_tokens", "vllm:generation_tokens_total") > 0
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()
        # client gone → engine requests aborted (running and waiting drain without finishing)
        await async_wait_for(lambda: state(0, 0), timeout=15, what="aborted requests to leave the engine")
        fams = families((await get(f"{url}/metrics"))[1])
        assert (
            sample(fams, "vllm:request_success", "vllm:request_success_total", finished_reason="abort") == 5
        )
    finally:
        for t in tasks:
            t.cancel()
        await session.close()
        await server.stop()


async def test_metrics_names_labels_and_counters(sim: SimServer, client: openai.AsyncOpenAI) -> None:
    prompt = "shared prefix " * 40
    for _ in range(2):
        await client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=3, extra_body={"ignore_eos": True}
        )
    await client.completions.create(
        model="sql-lora", prompt="adapter", max_tokens=2, extra_body={"ignore_eos": True}
    )
    status, text = await get(f"{sim.url}/metrics")
    assert status == 200
    fams = families(text)
    stats = sim.engine.stats()
    assert (
        sample(fams, "vllm:prefix_cache_queries", "vllm:prefix_cache_queries_total")
        == stats.prefix_cache_queries
    )
    assert (
        sample(fams, "vllm:prefix_cache_hits", "vllm:prefix_cache_hits_total") == stats.prefix_cache_hits > 0
    )
    assert sample(fams, "vllm:prompt_tokens", "vllm:prompt_tokens_total") == stats.prompt_tokens_total
    assert sample(fams, "vllm:generation_tokens", "vllm:generation_tokens_total") == 8
    assert sample(fams, "vllm:request_success", "vllm:request_success_total", finished_reason="length") == 3
    assert sample(fams, "vllm:num_preemptions", "vllm:num_preemptions_total") == 0
    assert sample(fams, "vllm:time_to_first_token_seconds", "vllm:time_to_first_token_seconds_count") == 3
    assert sample(fams, "vllm:e2e_request_latency_seconds", "vllm:e2e_request_latency_seconds_count") == 3
    assert sample(fams, "vllm:inter_token_latency_seconds", "vllm:inter_token_latency_seconds_count") == 5
    assert sample(fams, "vllm:request_generation_tokens", "vllm:request_generation_tokens_sum") == 8
    # one series per LoRA state seen (vLLM's semantics, test_sim_lora_info.py); the newest is current
    info = max(fams["vllm:lora_requests_info"].samples, key=lambda s: s.value)
    assert set(info.labels) == {"max_lora", "running_lora_adapters", "waiting_lora_adapters"}
    assert info.labels["max_lora"] == "2" and info.value > 1.7e9
    cache = fams["vllm:cache_config_info"].samples[0]
    assert cache.labels["block_size"] == "16" and cache.labels["num_gpu_blocks"] == str(stats.num_gpu_blocks)
    assert "vllm:gpu_cache_usage_perc" not in fams
    async with aiohttp.ClientSession() as s, s.get(f"{sim.url}/metrics") as r:
        assert r.headers["Content-Type"] == CONTENT_TYPE_LATEST
    # a Prometheus asking for OpenMetrics still gets vLLM's text format and vllm:* names, as from vLLM
    headers = {"Accept": "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"}
    async with aiohttp.ClientSession() as s, s.get(f"{sim.url}/metrics", headers=headers) as r:
        assert r.headers["Content-Type"] == CONTENT_TYPE_LATEST
        body = await r.text()
        assert "\nvllm:num_requests_running{" in body and "vllm_num_requests_running" not in body


async def test_legacy_metric_names() -> None:
    server = await start(["--model", MODEL, "--legacy-metrics"])
    try:
        fams = families((await get(f"{server.url}/metrics"))[1])
        assert "vllm:gpu_cache_usage_perc" in fams and "vllm:kv_cache_usage_perc" not in fams
        assert "vllm:gpu_prefix_cache_queries" in fams and "vllm:time_per_output_token_seconds" in fams
        assert "vllm:lora_requests_info" not in fams  # LoRA off
    finally:
        await server.stop()


# ------------------------------------------------------------------------------ small endpoints


async def test_tokenize_detokenize_render(sim: SimServer) -> None:
    status, text = await post(f"{sim.url}/tokenize", {"model": MODEL, "prompt": "hello tokenizer world"})
    assert status == 200
    tok = json.loads(text)
    assert tok["count"] == len(tok["tokens"]) and tok["max_model_len"] == 131072 and tok["token_strs"] is None
    assert tok["tokens"][0] == BOS_ID and tok["tokens"][1:] == Tokenizer().encode("hello tokenizer world")
    status, text = await post(f"{sim.url}/detokenize", {"tokens": tok["tokens"]})
    assert (status, json.loads(text)) == (200, {"prompt": "<|begin_of_text|>hello tokenizer world"})
    status, text = await post(f"{sim.url}/tokenize", {"prompt": "hello", "add_special_tokens": False})
    assert json.loads(text)["tokens"] == Tokenizer().encode("hello")
    status, text = await post(f"{sim.url}/tokenize", {"messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and json.loads(text)["count"] > 3
    status, text = await post(
        f"{sim.url}/v1/completions/render", {"model": MODEL, "prompt": "hello tokenizer world"}
    )
    assert status == 200
    rendered = json.loads(text)
    assert isinstance(rendered, list) and rendered[0]["token_ids"] == tok["tokens"]
    assert rendered[0]["request_id"].startswith("cmpl-")


async def test_health_version_and_sglang_endpoints(sim: SimServer) -> None:
    assert await get(f"{sim.url}/health") == (200, "")
    status, text = await get(f"{sim.url}/version")
    assert status == 200 and "version" in json.loads(text)
    status, text = await get(f"{sim.url}/get_model_info")
    info = json.loads(text)
    assert status == 200 and info["model_path"] == MODEL and info["is_generation"] is True
    status, text = await get(f"{sim.url}/get_server_info")
    server_info = json.loads(text)
    assert status == 200 and server_info["dp_size"] == 1 and server_info["max_total_num_tokens"] > 0
    status, text = await get(f"{sim.url}/get_load")
    load = json.loads(text)
    assert status == 200 and load["load"] == 0 and load["num_waiting_reqs"] == 0


@pytest.mark.parametrize("encoding", ["array", "map"])
async def test_kv_events_published_over_zmq(encoding: str) -> None:
    port = free_port()
    server = await start(
        ["--model", MODEL, "--kv-events-endpoint", f"tcp://*:{port}", "--kv-events-encoding", encoding]
    )
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{port}")
    c = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="sim", max_retries=0)
    try:
        stored: list[Any] = []
        attempts = 0

        async def got_block() -> bool:
            # A new prompt each time: the subscription may join after the first request's events
            # (ZeroMQ's slow joiner), and a repeated prompt would hit the prefix cache and store nothing.
            nonlocal attempts
            attempts += 1
            await c.completions.create(model=MODEL, prompt=f"kv events {attempts} " * 20, max_tokens=1)
            while await sub.poll(50):
                _topic, seq, payload = await sub.recv_multipart()
                assert len(seq) == 8
                ts, events, _rank = msgpack.unpackb(payload)
                assert ts > 1.7e9
                if encoding == "map":
                    events = [
                        [
                            e["type"],
                            e.get("block_hashes"),
                            e.get("parent_block_hash"),
                            e.get("token_ids"),
                            e.get("block_size"),
                            e.get("lora_id"),
                            e.get("medium"),
                        ]
                        for e in events
                    ]
                stored.extend(e for e in events if e[0] == "BlockStored")
            return bool(stored)

        await async_wait_for(got_block, timeout=15, what="a BlockStored event")
        ev = stored[0]
        assert ev[4] == 16 and len(ev[3]) == 16 * len(ev[1]) and ev[6] == "GPU"
    finally:
        await c.close()
        sub.close(0)
        ctx.term()
        await server.stop()


async def test_kv_exhaustion_preempts_and_shows_in_metrics() -> None:
    # 24 blocks x 16 tokens = 368 usable tokens; 4 requests each growing to 64 + 100 tokens cannot all fit
    # Half real-time speed (not the suite's 20x faster): each request decodes for over a second, so the four
    # overlap in the engine even when a loaded machine staggers their arrival (at 20x they did not,
    # 1 in 3 loaded runs, and nothing was preempted).
    server = await start(
        ["--model", MODEL, "--num-gpu-blocks", "24", "--no-enable-prefix-caching", "--time-scale", "2"]
    )
    c = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="sim", max_retries=0)
    try:
        rs = await asyncio.gather(
            *(
                c.completions.create(
                    model=MODEL,
                    prompt=f"request {i} " + "x " * 60,
                    max_tokens=100,
                    extra_body={"ignore_eos": True},
                )
                for i in range(4)
            )
        )
        assert all(r.usage is not None and r.usage.completion_tokens == 100 for r in rs)
        fams = families((await get(f"{server.url}/metrics"))[1])
        preemptions = sample(fams, "vllm:num_preemptions", "vllm:num_preemptions_total")
        assert preemptions == server.engine.stats().num_preemptions > 0
        assert sample(fams, "vllm:cache_config_info", num_gpu_blocks="24", enable_prefix_caching="False") == 1
        # a prompt larger than the whole KV cache is refused before any stream starts
        body = {"model": MODEL, "prompt": "y " * 400, "max_tokens": 5, "stream": True}
        status, text = await post(f"{server.url}/v1/completions", body)
        assert status == 400 and "does not fit the KV cache" in json.loads(text)["error"]["message"]
    finally:
        await c.close()
        await server.stop()


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_fast_chunk_template_matches_full_serialisation(kind: str) -> None:
    from infergate.simulator import openai_api as oa

    prefix, suffix = oa.delta_chunk_template(kind, "cmpl-1", 123, 'm"odel', 3)  # type: ignore[arg-type]
    text = 'tok "quoted" \\ ünï'
    if kind == "chat":
        full = oa.chat_chunk("cmpl-1", 123, 'm"odel', 3, {"content": text}, None)
    else:
        full = oa.completion_chunk("cmpl-1", 123, 'm"odel', 3, text, None, None)
    expected = b"data: " + json.dumps(full, separators=(",", ":")).encode() + b"\n\n"
    assert prefix + json.dumps(text).encode() + suffix == expected


async def test_non_streaming_client_disconnect_aborts() -> None:
    server = await start(["--model", MODEL])
    body = {"model": MODEL, "prompt": "slow non-streaming request", "max_tokens": 100000, "ignore_eos": True}

    async def call() -> None:
        async with aiohttp.ClientSession() as s, s.post(f"{server.url}/v1/completions", json=body) as r:
            await r.read()

    task = asyncio.create_task(call())
    try:
        await async_wait_for(lambda: _running(server, 1), timeout=10, what="request running")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await async_wait_for(lambda: _running(server, 0), timeout=10, what="request aborted")
        assert server.engine.stats().request_success_total["abort"] == 1
    finally:
        task.cancel()
        await server.stop()


async def _running(server: SimServer, n: int) -> bool:
    return server.engine.stats().num_running == n


async def test_echo_mode_and_echo_param_and_continuous_usage() -> None:
    server = await start(["--model", MODEL, "--echo"])
    c = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="sim", max_retries=0)
    try:
        r = await c.completions.create(
            model=MODEL, prompt="one two three", max_tokens=6, extra_body={"ignore_eos": True}
        )
        assert r.choices[0].text == "one two threeone two three"
        r = await c.completions.create(
            model=MODEL, prompt="one two three", max_tokens=3, echo=True, extra_body={"ignore_eos": True}
        )
        assert r.choices[0].text == "one two three" * 2
        body = {
            "model": MODEL,
            "prompt": "one two",
            "max_tokens": 3,
            "stream": True,
            "ignore_eos": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
        status, text = await post(f"{server.url}/v1/completions", body)
        chunks = [json.loads(e.removeprefix("data: ")) for e in text.split("\n\n")[:-2]]
        assert status == 200 and [ch["usage"]["completion_tokens"] for ch in chunks] == [1, 2, 3, 3]
    finally:
        await c.close()
        await server.stop()


async def test_lora_slot_limit_shows_waiting_adapter_in_metrics() -> None:
    server = await start(
        [
            "--model",
            MODEL,
            "--max-loras",
            "1",
            "--lora-modules",
            "a=/ad/a",
            '{"name": "b", "path": "/ad/b", "base_model_name": "other-base"}',
        ]
    )
    body = {"prompt": "adapter request", "max_tokens": 100000, "ignore_eos": True, "stream": True}

    async def consume(model: str) -> None:
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"{server.url}/v1/completions", json={**body, "model": model}) as r,
        ):
            async for _ in r.content:
                pass

    tasks = [asyncio.create_task(consume("a"))]
    try:
        await async_wait_for(lambda: _running(server, 1), timeout=10, what="adapter a running")
        tasks.append(asyncio.create_task(consume("b")))

        async def b_waits() -> bool:
            fams = families((await get(f"{server.url}/metrics"))[1])
            series = fams["vllm:lora_requests_info"].samples
            if not series:  # a's admission is visible before its first step has been recorded
                return False
            labels = max(series, key=lambda s: s.value).labels
            return (labels["running_lora_adapters"], labels["waiting_lora_adapters"], labels["max_lora"]) == (
                "a",
                "b",
                "1",
            )

        await async_wait_for(b_waits, timeout=10, what="adapter b waiting behind a (max_loras 1)")
        stats = server.engine.stats()
        assert (stats.num_running, stats.num_waiting) == (1, 1)
        fams = families((await get(f"{server.url}/metrics"))[1])
        assert sample(fams, "vllm:num_requests_waiting_by_reason", reason="deferred") == 1
        assert sample(fams, "vllm:num_requests_waiting_by_reason", reason="capacity") == 0
        _, text = await get(f"{server.url}/v1/models")
        parents = {m["id"]: m["parent"] for m in json.loads(text)["data"]}
        assert parents == {MODEL: None, "a": MODEL, "b": "other-base"}
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.stop()
