"""vLLM 0.33's 400s for bad generation requests, over HTTP, with vLLM's messages and params.

Each case is what vLLM's renderer, sampling parameters or input processor reject (see
``simulator/validation.py``); the simulator must reject the same requests, before doing any work
proportional to ``n`` or to the prompt, and stay healthy afterwards.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from infergate.simulator.args import parse_args
from infergate.simulator.server import SimServer

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
FAST = ["--host", "127.0.0.1", "--port", "0", "--time-scale", "0.05"]
MML = 64


async def start(argv: list[str], env: dict[str, str] | None = None) -> SimServer:
    server = SimServer(parse_args([*FAST, *argv], env or {}))
    await server.start()
    return server


@pytest.fixture
async def small() -> AsyncIterator[SimServer]:
    server = await start(["--model", MODEL, "--max-model-len", str(MML)], {"VLLM_MAX_N_SEQUENCES": "4"})
    try:
        yield server
    finally:
        await server.stop()


async def post(url: str, body: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
        return r.status, json.loads(await r.text())


async def error(sim: SimServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    status, data = await post(sim.url + path, {"model": MODEL, **body})
    assert status == 400, data
    err: dict[str, Any] = data["error"]
    assert err["code"] == 400 and err["type"] == "BadRequestError"
    return err


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def test_output_budget_above_max_model_len(small: SimServer) -> None:
    err = await error(small, "/v1/completions", {"prompt": "hi", "max_tokens": MML + 1})
    assert err["message"] == (
        f"max_tokens={MML + 1} cannot be greater than max_model_len={MML}. "
        "Please request fewer output tokens."
    )
    assert err["param"] == "max_tokens"
    err = await error(small, "/v1/chat/completions", {"messages": chat("hi"), "max_completion_tokens": 100})
    assert err["message"].startswith(f"max_completion_tokens=100 cannot be greater than max_model_len={MML}.")
    assert err["param"] == "max_completion_tokens"
    # a budget that fits max_model_len but not next to the prompt is clamped silently, as in vLLM
    status, data = await post(
        small.url + "/v1/completions",
        {"prompt": list(range(1000, 1000 + MML - 4)), "max_tokens": MML, "ignore_eos": True},
    )
    assert status == 200 and data["usage"]["completion_tokens"] == 4


async def test_prompt_lengths_at_and_over_the_limit(small: SimServer) -> None:
    # exactly max_model_len tokens: passes the length check, leaves max_tokens 0
    err = await error(small, "/v1/completions", {"prompt": list(range(1000, 1000 + MML))})
    assert (err["message"], err["param"]) == ("max_tokens must be at least 1, got 0.", "max_tokens")
    # token ids over the limit: counted exactly
    err = await error(small, "/v1/completions", {"prompt": list(range(1000, 1000 + MML + 6))})
    assert err["param"] == "input_tokens"
    assert err["message"] == (
        f"This model's maximum context length is {MML} tokens. However, your prompt contains {MML + 6} "
        "input tokens, which exceeds this limit even without any output tokens. "
        "Please reduce the length of the input prompt."
    )
    # text over the limit: tokenised only to max_model_len + 1 tokens, hence "at least"
    for path, body in (
        ("/v1/completions", {"prompt": "word " * 200}),
        ("/v1/chat/completions", {"messages": chat("word " * 150)}),  # + the template's ~200 chars
    ):
        err = await error(small, path, body)
        assert f"your prompt contains at least {MML + 1} input tokens" in err["message"], err
        assert err["param"] == "input_tokens"


async def test_oversize_text_rejected_before_tokenising(small: SimServer) -> None:
    limit = MML * small.tokenizer.max_chars_per_token
    err = await error(small, "/v1/completions", {"prompt": "x" * (limit + 1)})
    assert err["param"] == "input_text"
    assert err["message"] == (
        f"This model's maximum context length is {MML} tokens. However, your prompt contains {limit + 1} "
        f"characters (more than {limit} characters, which is the upper bound for {MML} input tokens). "
        "Please reduce the length of the input prompt."
    )


@pytest.mark.parametrize("bad", [2**64, -1, 128256])
async def test_token_ids_outside_the_vocabulary(small: SimServer, bad: int) -> None:
    err = await error(small, "/v1/completions", {"prompt": [128000, 1500, bad], "max_tokens": 2})
    assert (err["message"], err["param"]) == (f"Token id {bad} is out of vocabulary", None)
    assert small.engine.request_ids() == []
    # the handler survived and the engine still serves
    status, data = await post(small.url + "/v1/completions", {"prompt": [128000, 128255], "max_tokens": 2})
    assert status == 200 and data["choices"][0]["finish_reason"] in ("stop", "length")


async def test_n_bounds(small: SimServer) -> None:
    err = await error(small, "/v1/completions", {"prompt": "hi", "n": 5})
    assert err["message"] == (
        "n must be at most 4, got 5. "
        "To increase this limit, set the VLLM_MAX_N_SEQUENCES environment variable."
    )
    err = await error(small, "/v1/completions", {"prompt": "hi", "n": 2, "temperature": 0})
    assert err["message"] == "n must be 1 when using greedy sampling, got 2."
    err = await error(small, "/v1/completions", {"prompt": "hi", "temperature": 3})
    assert (err["message"], err["param"]) == ("temperature must be in [0, 2], got 3.0.", "temperature")
    status, data = await post(small.url + "/v1/completions", {"prompt": "hi", "n": 4, "max_tokens": 2})
    assert status == 200 and len(data["choices"]) == 4


async def test_huge_n_allocates_nothing() -> None:
    """``n: 10**9`` is refused by the bound before any per-choice object exists (it once grew a
    simulator to 3 GB): the request's peak allocation stays small."""
    sim = await start(["--model", MODEL])
    try:
        tracemalloc.start()
        try:
            err = await error(sim, "/v1/completions", {"prompt": "hi", "n": 10**9})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        await sim.stop()
    assert err["message"].startswith("n must be at most 16384, got 1000000000.")
    assert peak < 20 * 2**20
