"""Request limits of the built-in proxy, end to end against a real simulated replica.

Covers the ``max_tokens`` ceilings (default, ``infergate.dev/max-tokens`` annotation, per-objective
setting), the chat message cap, the body-size limit (413), the header-size limit and the idle
timeout on client connections; after every rejection the gateway must keep serving.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import openai
import pytest
import yaml

from infergate.api.loader import load_manifests
from infergate.app.gateway import Gateway, ManifestPoolSource
from infergate.config.settings import Settings
from infergate.errors import ConfigError
from infergate.requestcontrol.access import RequestLimits
from tests.support import (
    async_wait_for,
    local_settings,
    start_simulator,
    static_pool_docs,
)

BASE = "meta-llama/Llama-3.1-8B-Instruct"


def docs(port: int, annotation: str = "16") -> list[dict[str, object]]:
    return static_pool_docs(
        [f"127.0.0.1:{port}"],
        objectives={"food-review": 10},
        annotations={"infergate.dev/max-tokens": annotation},
    )


SETTINGS = local_settings(
    {
        "limits.max_body_bytes": 4096,
        "limits.max_header_bytes": 8192,
        "limits.max_messages": 3,
        "limits.max_tokens_ceiling": 64,
        "limits.objective_max_tokens": {BASE: 100},
        "listeners.idle_timeout": 0.5,
    }
)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    sim = start_simulator(
        tmp_path_factory.mktemp("sim"),
        *("--enable-lora", "--lora-modules", "food-review=/adapters/food-review", "--max-model-len", "4096"),
    )
    try:
        yield sim.port
    finally:
        sim.child.stop()


@pytest.fixture
async def gateway(sim: int, tmp_path: Path) -> AsyncIterator[Gateway]:
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump_all(docs(sim)))
    gw = Gateway(
        ManifestPoolSource(load_manifests([path])),
        SETTINGS,
    )
    await gw.start()
    try:
        assert await gw.wait_ready(60)

        async def listed() -> bool:
            return "food-review" in gw.datastore.served_models()

        await async_wait_for(listed, timeout=10, what="adapter listed")
        yield gw
    finally:
        await gw.stop()


async def post(gw: Gateway, payload: object, path: str = "/v1/completions") -> tuple[int, dict[str, object]]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"http://127.0.0.1:{gw.port}{path}", data=data, headers={"Content-Type": "application/json"}
        ) as r,
    ):
        return r.status, await r.json()


def error_of(body: dict[str, object]) -> dict[str, object]:
    err = body["error"]
    assert isinstance(err, dict) and isinstance(err["message"], str)
    return err


async def still_serving(gw: Gateway) -> None:
    status, body = await post(gw, {"model": BASE, "prompt": "still there?", "max_tokens": 2})
    assert status == 200, body


async def test_max_tokens_ceiling_per_objective(gateway: Gateway) -> None:
    # food-review: annotation 16; BASE (no objective): settings override 100; anything else: 64
    cases = [
        ("food-review", "max_tokens", 16, 200),
        ("food-review", "max_tokens", 17, 400),
        (BASE, "max_tokens", 100, 200),
        (BASE, "max_tokens", 101, 400),
        (BASE, "max_completion_tokens", 101, 400),
    ]
    for model, field, value, expected in cases:
        status, body = await post(
            gateway,
            {"model": model, "messages": [{"role": "user", "content": "hi"}], field: value},
            "/v1/chat/completions",
        )
        assert status == expected, (model, field, value, body)
        if expected == 400:
            err = error_of(body)
            assert err["param"] == field and err["type"] == "invalid_request_error"
            assert err["code"] == "max_tokens_exceeded" and str(value) in str(err["message"])
    c = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{gateway.port}/v1", api_key="x", max_retries=0)
    try:
        with pytest.raises(openai.BadRequestError) as exc:
            await c.completions.create(model="food-review", prompt="hi", max_tokens=1000)
        assert isinstance(exc.value.body, dict) and exc.value.body["param"] == "max_tokens"
    finally:
        await c.close()
    await still_serving(gateway)


async def test_too_many_messages_is_400(gateway: Gateway) -> None:
    msgs = [{"role": "user", "content": f"m{i}"} for i in range(4)]
    status, body = await post(
        gateway, {"model": BASE, "messages": msgs, "max_tokens": 2}, "/v1/chat/completions"
    )
    assert status == 400
    err = error_of(body)
    assert err["param"] == "messages" and err["code"] == "too_many_messages"
    status, _ = await post(
        gateway, {"model": BASE, "messages": msgs[:3], "max_tokens": 2}, "/v1/chat/completions"
    )
    assert status == 200
    await still_serving(gateway)


async def test_body_over_limit_is_413_with_and_without_content_length(gateway: Gateway) -> None:
    big = json.dumps({"model": BASE, "prompt": "x" * 5000, "max_tokens": 2}).encode()
    status, body = await post(gateway, big)
    assert status == 413 and error_of(body)["code"] == "request_too_large"

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    async with (
        aiohttp.ClientSession() as s,
        s.post(f"http://127.0.0.1:{gateway.port}/v1/completions", data=chunks()) as r,
    ):
        assert r.status == 413
        assert error_of(await r.json())["code"] == "request_too_large"
    await still_serving(gateway)


async def test_oversized_header_is_rejected(gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Big: "
            + b"a" * 20_000
            + b"\r\nContent-Length: 2\r\n\r\n{}"
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.read(200), 60)
        assert head.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), head
    finally:
        writer.close()
    # a header just under the limit passes
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"http://127.0.0.1:{gateway.port}/v1/completions",
            json={"model": BASE, "prompt": "hi", "max_tokens": 2},
            headers={"X-Big": "a" * 4000},
        ) as r,
    ):
        assert r.status == 200
    await still_serving(gateway)


async def test_idle_and_half_sent_connections_are_closed(gateway: Gateway) -> None:
    # idle keep-alive connection after a complete request
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"ok\n"), 60)
        assert b"200" in first.split(b"\r\n", 1)[0]
        # b"" once the server closes; the bound only guards against a hang (the server never would)
        assert await asyncio.wait_for(reader.read(100), 60) == b""
    finally:
        writer.close()
    # a request head that never completes (slowloris) is dropped after the same timeout
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(100), 60) == b""
    finally:
        writer.close()


async def test_body_that_stalls_is_408_and_the_gateway_keeps_serving(gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"model": '
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        assert head.startswith(b"HTTP/1.1 408"), head
    finally:
        writer.close()
    await still_serving(gateway)


def test_max_tokens_annotation_must_be_a_positive_integer(tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump_all(docs(8000, annotation="lots")))
    with pytest.raises(ConfigError, match=r"infergate\.dev/max-tokens"):
        ManifestPoolSource(load_manifests([path])).objective_max_tokens()
    path.write_text(yaml.safe_dump_all(docs(8000, annotation="32")))

    def limits(changes: dict[str, object]) -> RequestLimits:
        gw = Gateway(ManifestPoolSource(load_manifests([path])), Settings().replace(changes))
        gw.flow.close()
        return gw.director.limits

    assert limits({"limits.objective_max_tokens": {"food-review": 8}}).ceiling_for("food-review") == 8
    ceilings = limits({"limits.max_tokens_ceiling": 50})  # the annotation wins over the default ceiling
    assert (ceilings.ceiling_for("food-review"), ceilings.ceiling_for("other")) == (32, 50)
    with pytest.raises(ConfigError):
        Settings().replace({"limits.max_messages": 0})
    with pytest.raises(ConfigError):
        Settings().replace({"limits.objective_max_tokens": {"x": 0}})
