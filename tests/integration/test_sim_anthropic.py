"""The simulator's Anthropic Messages endpoints (vLLM 0.33's ``/v1/messages`` and
``/v1/messages/count_tokens``), and the gateway relaying them: a streamed message's input and
output tokens reach the gateway's metrics, as a chat completion's do."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from infergate.api.loader import load_manifests
from infergate.app.gateway import Gateway, ManifestPoolSource
from infergate.scheduling.plugins.precise_prefix import prompt_token_ids
from infergate.simulator.args import SimulatorArgs
from infergate.simulator.server import SimServer
from infergate.sources.token_producer import RenderTokenProducer
from infergate.tokenization.load import load_tokenizer
from infergate.types import ApiKind, InferenceRequest
from tests.support import local_settings, static_pool_docs

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
REQUEST = {
    "model": MODEL,
    "max_tokens": 6,
    "system": [{"type": "text", "text": "Be brief."}],
    "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello to the world."}]}],
}


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    server = SimServer(SimulatorArgs(host="127.0.0.1", port=0, served_model_names=(MODEL,), time_scale=0.01))
    await server.start()
    yield server
    await server.stop()


def events(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.strip().split("\n\n"):
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), block
        out.append((name[7:], json.loads(data[6:])))
    return out


async def test_a_message_whole_and_streamed(sim: SimServer) -> None:
    url = f"http://127.0.0.1:{sim.port}"
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{url}/v1/messages/count_tokens", json=REQUEST) as r:
            assert r.status == 200
            counted = (await r.json())["input_tokens"]
        chat = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello to the world."},
        ]
        async with s.post(f"{url}/v1/chat/completions/render", json={"model": MODEL, "messages": chat}) as r:
            assert counted == len((await r.json())["token_ids"])  # the chat the message becomes
        async with s.post(f"{url}/v1/messages", json=REQUEST) as r:
            assert r.status == 200 and r.content_type == "application/json"
            whole = await r.json()
        assert (whole["type"], whole["role"], whole["model"]) == ("message", "assistant", MODEL)
        assert whole["id"].startswith("msg_") and whole["content"][0]["type"] == "text"
        assert whole["stop_reason"] == "max_tokens" and "stop_sequence" not in whole
        assert whole["usage"] == {"input_tokens": counted, "output_tokens": 6}
        async with s.post(f"{url}/v1/messages", json={**REQUEST, "stream": True}) as r:
            assert r.status == 200 and r.content_type == "text/event-stream"
            stream = events(await r.text())
    names = [name for name, _ in stream]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[2:-3]) == {"content_block_delta"} and len(names[2:-3]) == 6
    start, final = stream[0][1], stream[-2][1]
    assert start["message"]["usage"] == {"input_tokens": counted, "output_tokens": 0}
    assert final["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert final["usage"] == {"input_tokens": counted, "output_tokens": 6}


@pytest.mark.parametrize(
    ("change", "status", "shape"),
    [
        ({"model": "other"}, 404, "not_found_error"),  # found once the request is read: Anthropic's shape
        ({"max_tokens": None}, 400, "BadRequestError"),  # request validation: vLLM's OpenAI shape
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            400,
            "BadRequestError",
        ),
    ],
)
async def test_errors_in_the_shapes_vllm_answers(
    sim: SimServer, change: dict[str, Any], status: int, shape: str
) -> None:
    body = {k: v for k, v in {**REQUEST, **change}.items() if v is not None}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"http://127.0.0.1:{sim.port}/v1/messages", json=body) as r,
    ):
        assert r.status == status
        error = await r.json()
    kind = error["error"]["type"]
    assert kind == shape, error
    if shape.endswith("_error"):
        assert error["type"] == "error"


def _sample(text: str, name: str) -> float:
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name)


async def test_the_gateway_counts_a_streamed_messages_tokens(sim: SimServer, tmp_path: Path) -> None:
    docs = tmp_path / "pool.yaml"
    docs.write_text(yaml.safe_dump_all(static_pool_docs([f"127.0.0.1:{sim.port}"])))
    gw = Gateway(ManifestPoolSource(load_manifests([docs])), local_settings())
    await gw.start()
    try:
        assert await gw.wait_ready(60)
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{gw.port}/v1/messages"
            async with s.post(url, json={**REQUEST, "stream": True}) as r:
                assert r.status == 200
                stream = events(await r.text())
        counted = stream[0][1]["message"]["usage"]["input_tokens"]
        text = gw.metrics.render().decode()
        assert _sample(text, "inference_objective_input_tokens_sum") == counted
        assert _sample(text, "inference_objective_output_tokens_sum") == 6
    finally:
        await gw.stop()


async def test_a_message_is_tokenized_as_the_chat_the_server_runs(sim: SimServer) -> None:
    """The render token producer and the precise scorer's own tokenizer give an Anthropic message
    the ids the server counts for it (so its KV blocks can be looked up)."""
    request = InferenceRequest(
        request_id="r", model=MODEL, target_model=MODEL, api=ApiKind.MESSAGES, body=REQUEST
    )
    url = f"http://127.0.0.1:{sim.port}"
    producer = RenderTokenProducer(url, MODEL, timeout=60)
    rendered = await producer.token_ids(request)
    async with aiohttp.ClientSession() as s, s.post(f"{url}/v1/messages/count_tokens", json=REQUEST) as r:
        counted = (await r.json())["input_tokens"]
    assert rendered is not None and len(rendered) == counted
    assert prompt_token_ids(request, load_tokenizer(None)) == list(rendered)  # the simulator's tokenizer
    with_image = {**REQUEST, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}
    image = InferenceRequest(
        request_id="i", model=MODEL, target_model=MODEL, api=ApiKind.MESSAGES, body=with_image
    )
    assert await producer.token_ids(image) is None and producer.failures == 0  # not rendered, not a failure
