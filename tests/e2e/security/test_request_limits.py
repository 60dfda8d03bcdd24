"""The limits of the request policy on both data planes, sent with the OpenAI SDK.

Each limit stops a request that would make a model server allocate without bound (a *poison*
request: a huge ``n``, a million prompt token ids, an id of 2^64) or simply more than the operator
allows, with an OpenAI error naming the parameter, before any byte reaches a replica. The context
length comes from the replicas' own ``/v1/models`` (``max_model_len`` on the base model's card).
Afterwards the gateway still serves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from infergate.config.settings import Settings
from tests.e2e.security.conftest import MODEL, PLANES, Replica, Rig, start_gateway
from tests.e2e.security.test_request_policy import assert_openai_error

CONTEXT = 4096  # what the fake replicas report as max_model_len

LIMITS = Settings().replace(
    {
        "scrape.health_interval": 0.05,
        "limits.max_messages": 4,
        "limits.max_tokens_ceiling": 2048,
        "limits.max_body_bytes": 256 * 1024,
    }
)

# (API, body beyond the model, param, code): each is refused with a 400 before reaching a replica
POISON: list[tuple[str, dict[str, Any], str, str]] = [
    ("completions", {"prompt": "x", "n": 1_000_000_000}, "n", "n_exceeded"),
    ("completions", {"prompt": "x", "n": 0}, "n", "invalid_request"),
    ("completions", {"prompt": [7] * (CONTEXT + 1)}, "prompt", "context_length_exceeded"),
    ("completions", {"prompt": [[1, 2], [7] * (CONTEXT + 1)]}, "prompt", "context_length_exceeded"),
    ("completions", {"prompt": [1, 2**64]}, "prompt", "invalid_token_id"),
    ("completions", {"prompt": [[5], [-1]]}, "prompt", "invalid_token_id"),
    ("embeddings", {"input": [2**31]}, "input", "invalid_token_id"),
    ("completions", {"prompt": "x", "max_tokens": 4000}, "max_tokens", "max_tokens_exceeded"),
    ("chat", {"messages": [{"role": "user", "content": "x"}] * 5}, "messages", "too_many_messages"),
]


@pytest.fixture(params=PLANES)
async def rig(request: pytest.FixtureRequest, replicas: list[Replica], tmp_path: Path) -> AsyncIterator[Rig]:
    gw = await start_gateway(tmp_path, request.param, replicas, settings=LIMITS)
    try:
        yield Rig(request.param, replicas, gw)
    finally:
        await gw.stop()


async def call(client: openai.AsyncOpenAI, api: str, body: dict[str, Any]) -> object:
    if api == "chat":
        return await client.chat.completions.create(model=MODEL, **body)
    if api == "embeddings":
        return await client.embeddings.create(model=MODEL, **body)
    return await client.completions.create(model=MODEL, **body)


async def test_poison_and_over_limit_requests_never_reach_a_replica(rig: Rig) -> None:
    client = openai.AsyncOpenAI(base_url=rig.url + "/v1", api_key="-", max_retries=0, timeout=30)
    try:
        for api, body, param, code in POISON:
            with pytest.raises(openai.BadRequestError) as err:
                await call(client, api, body)
            assert isinstance(err.value.body, dict), (api, body)
            assert err.value.body["param"] == param, err.value.body
            if code != "invalid_request":  # the parser's own checks carry no specific code
                assert err.value.body["code"] == code, err.value.body
            assert "127.0.0.1" not in str(err.value.body)
        # the per-request ceiling (2048) is below the context: judged first, by its own message
        with pytest.raises(openai.BadRequestError) as err:
            await client.completions.create(model=MODEL, prompt="x", max_tokens=3000)
        assert isinstance(err.value.body, dict) and "limit of 2048" in err.value.body["message"]
        assert [r.seen for r in rig.replicas] == [[], []]
        # limits at their edge pass, and the gateway keeps serving
        done = await client.completions.create(
            model=MODEL, prompt=[0, (2**31) - 1] + [7] * (CONTEXT - 2), n=128, max_tokens=2048
        )
        assert done.choices[0].text == " ok"
    finally:
        await client.close()
    assert sum(len(r.seen) for r in rig.replicas) == 1


async def test_oversized_body_is_413_on_both_planes(rig: Rig) -> None:
    body = {"model": MODEL, "prompt": "x" * (300 * 1024)}
    async with aiohttp.ClientSession() as s, s.post(rig.url + "/v1/completions", json=body) as r:
        err = assert_openai_error(r.status, r.content_type, await r.text(), 413, "invalid_request_error")
    assert err["code"] == "request_too_large", err
    assert [r.seen for r in rig.replicas] == [[], []]


async def test_configured_context_and_vocabulary_win_over_what_servers_report(
    replicas: list[Replica], tmp_path: Path
) -> None:
    """``max_model_len`` and ``vocab_size`` settings bound prompts when the servers say nothing."""
    for rep in replicas:
        rep.max_model_len = 0  # reports no usable context length
    settings = Settings().replace(
        {
            "scrape.health_interval": 0.05,
            "limits.max_model_len": 16,
            "limits.vocab_size": 1000,
            "limits.max_n": 2,
        }
    )
    gw = await start_gateway(tmp_path, "builtin", replicas, settings=settings)
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{gw.port}/v1", api_key="-", max_retries=0)
    try:
        assert gw.datastore.max_model_len() is None
        for body, code in (
            ({"prompt": [1] * 17}, "context_length_exceeded"),
            ({"prompt": [1000]}, "invalid_token_id"),
            ({"prompt": "x", "n": 3}, "n_exceeded"),
            ({"prompt": "x", "max_tokens": 17}, "max_tokens_exceeded"),
        ):
            with pytest.raises(openai.BadRequestError) as err:
                await client.completions.create(model=MODEL, **body)
            assert isinstance(err.value.body, dict) and err.value.body["code"] == code, err.value.body
        done = await client.completions.create(model=MODEL, prompt=[999] * 16, n=2, max_tokens=16)
        assert done.choices[0].text == " ok"
    finally:
        await client.close()
        await gw.stop()
