"""The built-in proxy against misbehaving upstreams (real aiohttp servers on 127.0.0.1).

Each fake model server speaks just enough vLLM (``/metrics``, ``/health``, ``/v1/models``) for the
gateway to put it in rotation, and answers completions the way the test tells it to.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from infergate.api.loader import load_manifests
from infergate.app.gateway import Gateway, GatewayConfig
from tests.support import async_wait_for

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SERVED = "x-gateway-destination-endpoint-served"
METRICS = (
    f'vllm:num_requests_waiting{{model_name="{MODEL}"}} 0\n'
    f'vllm:num_requests_running{{model_name="{MODEL}"}} 0\n'
    f'vllm:kv_cache_usage_perc{{model_name="{MODEL}"}} 0.0\n'
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def answer(model: str = MODEL) -> dict[str, object]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": model,
        "choices": [{"index": 0, "text": " ok", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
    }


async def ok_handler(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    return web.json_response(answer(body["model"]))


@dataclass
class FakeServer:
    handler: Handler = ok_handler
    seen: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    async def start(self) -> None:
        app = web.Application()

        async def completions(request: web.Request) -> web.StreamResponse:
            self.seen.append((dict(request.headers), await request.read()))
            return await self.handler(request)

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(text=METRICS)

        async def health(_: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def models(_: web.Request) -> web.Response:
            return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

        app.router.add_post("/v1/{tail:.*}", completions)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/health", health)
        app.router.add_get("/v1/models", models)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def start_gateway(tmp: Path, servers: list[FakeServer], **cfg: object) -> Gateway:
    docs = [
        {
            "apiVersion": "inference.networking.k8s.io/v1",
            "kind": "InferencePool",
            "metadata": {"name": "pool"},
            "spec": {
                "selector": {"matchLabels": {"app": "fake"}},
                "targetPorts": [{"number": 8000}],
                "endpointPickerRef": {"name": "epp", "port": {"number": 9002}},
            },
        },
        {
            "apiVersion": "infergate.dev/v1alpha1",
            "kind": "EndpointList",
            "metadata": {"name": "fakes"},
            "spec": {
                "poolName": "pool",
                "endpoints": [{"address": f"127.0.0.1:{s.port}", "labels": {"app": "fake"}} for s in servers],
            },
        },
    ]
    (tmp / "pool.yaml").write_text(yaml.safe_dump_all(docs))
    config = GatewayConfig(
        host="127.0.0.1",
        port=0,
        admin_host="127.0.0.1",
        admin_port=0,
        served_header=True,
        **cfg,  # type: ignore[arg-type]
    )
    gw = Gateway(load_manifests([tmp / "pool.yaml"]), config)
    await gw.start()
    assert await gw.wait_ready(10.0)
    return gw


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[FakeServer, FakeServer, Gateway]]:
    a, b = FakeServer(), FakeServer()
    await a.start()
    await b.start()
    gw = await start_gateway(tmp_path, [a, b])
    try:
        yield a, b, gw
    finally:
        await gw.stop()
        await a.stop()
        await b.stop()


def url(gw: Gateway, path: str = "/v1/completions") -> str:
    return f"http://127.0.0.1:{gw.port}{path}"


async def test_5xx_before_first_byte_is_retried_on_the_other_endpoint(
    pair: tuple[FakeServer, FakeServer, Gateway],
) -> None:
    a, b, gw = pair

    async def fail(_: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "boom"}, status=500)

    a.handler = fail
    async with aiohttp.ClientSession() as s:
        for i in range(8):
            async with s.post(url(gw), json={"model": MODEL, "prompt": f"p{i}", "max_tokens": 1}) as r:
                assert r.status == 200, await r.text()
                assert r.headers[SERVED] == f"127.0.0.1:{b.port}"
    assert a.seen, "the failing endpoint was never tried, so the retry path was not exercised"
    assert all(ep.in_flight == 0 for ep in gw.datastore.endpoints())


async def test_both_endpoints_failing_relays_5xx_and_refused_connection_is_502(
    pair: tuple[FakeServer, FakeServer, Gateway],
) -> None:
    a, b, gw = pair

    async def fail(_: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "boom"}, status=503)

    a.handler = b.handler = fail
    async with aiohttp.ClientSession() as s:
        async with s.post(url(gw), json={"model": MODEL, "prompt": "x"}) as r:
            assert r.status == 503 and (await r.json())["error"] == "boom"
        await a.stop()
        await b.stop()
        async with s.post(url(gw), json={"model": MODEL, "prompt": "x"}) as r:
            body = await r.json()
            # both refused: 502 from the proxy (or 503 once the scraper took them out of rotation)
            assert r.status in (502, 503) and "error" in body, body


async def test_stream_broken_midway_ends_with_an_sse_error_event(
    pair: tuple[FakeServer, FakeServer, Gateway],
) -> None:
    a, b, gw = pair

    async def broken_stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(2):
            await resp.write(f'data: {{"model":"{MODEL}","choices":[{{"text":"t{i}"}}]}}\n\n'.encode())
        assert request.transport is not None
        request.transport.abort()  # the model server dies mid-stream
        return resp

    a.handler = b.handler = broken_stream
    async with (
        aiohttp.ClientSession() as s,
        s.post(url(gw), json={"model": MODEL, "prompt": "x", "stream": True}) as r,
    ):
        assert r.status == 200
        text = (await asyncio.wait_for(r.read(), 10)).decode()
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert len(events) == 4, text
    assert json.loads(events[2])["error"]["type"] == "upstream_error"
    assert events[3] == "[DONE]"


async def test_headers_hygiene_and_model_rewrite_header(pair: tuple[FakeServer, FakeServer, Gateway]) -> None:
    a, b, gw = pair
    headers = {
        "Connection": "keep-alive, x-secret-hop",
        "X-Secret-Hop": "1",
        "x-gateway-destination-endpoint": "10.9.9.9:1",
        "x-gateway-inference-objective": "whatever",
        "x-gateway-model-name-rewrite": MODEL,
        "x-request-id": "req-42",
        "Authorization": "Bearer sk-test",
    }
    async with (
        aiohttp.ClientSession() as s,
        s.post(url(gw), json={"model": "my-alias", "prompt": "x"}, headers=headers) as r,
    ):
        body = await r.json()
        assert r.status == 200, body
        assert body["model"] == "my-alias"  # put back for the client
    seen_headers, seen_body = (a.seen or b.seen)[0]
    lowered = {k.lower(): v for k, v in seen_headers.items()}
    assert json.loads(seen_body)["model"] == MODEL
    assert lowered["x-request-id"] == "req-42" and lowered["authorization"] == "Bearer sk-test"
    for gone in (
        "x-secret-hop",
        "x-gateway-destination-endpoint",
        "x-gateway-inference-objective",
        "x-gateway-model-name-rewrite",
    ):
        assert gone not in lowered, gone


async def test_shutdown_lets_in_flight_streams_finish(pair: tuple[FakeServer, FakeServer, Gateway]) -> None:
    a, b, gw = pair
    started = asyncio.Event()

    async def slow_stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        started.set()
        for i in range(10):
            await resp.write(f'data: {{"choices":[{{"text":"{i}"}}]}}\n\n'.encode())
            await asyncio.sleep(0.05)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    a.handler = b.handler = slow_stream
    async with aiohttp.ClientSession() as s:

        async def consume() -> str:
            async with s.post(url(gw), json={"model": MODEL, "prompt": "x", "stream": True}) as r:
                return (await r.read()).decode()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), 5)
        stopping = asyncio.create_task(gw.stop())

        async def not_ready() -> bool:
            return not gw.ready()

        await async_wait_for(not_ready, timeout=2, what="readiness to drop at shutdown start")
        text = await asyncio.wait_for(task, 10)
        await asyncio.wait_for(stopping, 15)
    assert text.count("data: ") == 11 and text.rstrip().endswith("data: [DONE]")
