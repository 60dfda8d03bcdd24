"""The built-in proxy against misbehaving upstreams (real aiohttp servers on 127.0.0.1).

Each fake model server speaks just enough vLLM (``/metrics``, ``/health``, ``/v1/models``) for the
gateway to put it in rotation, and answers completions the way the test tells it to. Setting
``down`` makes its scrape and health probe fail, so the gateway takes it out of rotation while
its completions handler (possibly hung) keeps its connections open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from infergate.api.loader import load_manifests
from infergate.app.gateway import Gateway, ManifestPoolSource
from infergate.config.picker import EndpointPickerConfig
from infergate.dataplanes.builtin import BuiltinDataPlane
from infergate.dataplanes.builtin.proxy import ProxyOptions, ProxyServer
from infergate.net.http1_client import Exchange, UpstreamAborted, UpstreamPool, UpstreamTimeout
from tests.support import async_wait_for, eventually, local_settings

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
    down: bool = False

    async def start(self) -> None:
        app = web.Application()

        async def completions(request: web.Request) -> web.StreamResponse:
            self.seen.append((dict(request.headers), await request.read()))
            return await self.handler(request)

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(status=500 if self.down else 200, text=METRICS)

        async def health(_: web.Request) -> web.Response:
            return web.Response(status=503 if self.down else 200, text="ok")

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

    @property
    def key(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def start_gateway(
    tmp: Path,
    servers: list[FakeServer],
    proxy: ProxyOptions | None = None,
    overrides: dict[str, object] | None = None,
    picker: EndpointPickerConfig | None = None,
    **cfg: object,
) -> Gateway:
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
    # in-flight requests leave a server after 3 failed probes: probe often so that is quick
    config = local_settings(
        {"scrape.health_interval": 0.1, "proxy.served_header": True, **cfg, **(overrides or {})}
    )
    gw = Gateway(ManifestPoolSource(load_manifests([tmp / "pool.yaml"])), config, picker=picker)
    if proxy is not None:  # the built-in proxy with options the gateway settings do not expose
        assert isinstance(gw.data_plane, BuiltinDataPlane)
        gw.data_plane.proxy = ProxyServer(gw.director, gw.datastore, proxy)
    await gw.start()
    # Every server that is up is in rotation (a test may start one down on purpose; waiting for all
    # of them, as Gateway.wait_ready does, would only run into its limit).
    up = {s.key for s in servers if not s.down}

    async def settled() -> bool:
        return {e.key for e in gw.datastore.candidates()} == up

    await async_wait_for(settled, what="every server that is up in rotation")
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
        text = (await asyncio.wait_for(r.read(), 60)).decode()
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
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_stream(request: web.Request) -> web.StreamResponse:
        """Half the stream, then the rest only once the gateway is shutting down."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        started.set()
        for i in range(10):
            if i == 5:
                await release.wait()
            await resp.write(f'data: {{"choices":[{{"text":"{i}"}}]}}\n\n'.encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    a.handler = b.handler = slow_stream
    async with aiohttp.ClientSession() as s:

        async def consume() -> str:
            async with s.post(url(gw), json={"model": MODEL, "prompt": "x", "stream": True}) as r:
                return (await r.read()).decode()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), 60)
        stopping = asyncio.create_task(gw.stop())

        async def not_ready() -> bool:
            return not gw.ready()

        await async_wait_for(not_ready, timeout=30, what="readiness to drop at shutdown start")
        assert not task.done() and not stopping.done()
        release.set()
        text = await asyncio.wait_for(task, 60)
        await asyncio.wait_for(stopping, 60)
    assert text.count("data: ") == 11 and text.rstrip().endswith("data: [DONE]")


# ---------------------------------------------------------------- endpoints leaving rotation


def candidate_keys(gw: Gateway) -> set[str]:
    return {e.key for e in gw.datastore.candidates()}


async def wait_candidates(gw: Gateway, keys: set[str], what: str) -> None:
    async def match() -> bool:
        return candidate_keys(gw) == keys

    await async_wait_for(match, timeout=10, what=what)


def sse_events(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


async def hang(_: web.Request) -> web.StreamResponse:
    """A frozen model server: the request was received, nothing ever comes back."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def test_requests_hung_before_first_byte_move_when_their_endpoint_leaves_rotation(
    tmp_path: Path,
) -> None:
    a, b = FakeServer(handler=hang), FakeServer(down=True)
    await a.start()
    await b.start()
    gw = await start_gateway(tmp_path, [a, b])
    try:
        await wait_candidates(gw, {a.key}, "only the hanging server in rotation")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:

            async def call(stream: bool) -> tuple[int, str, str]:
                body = {"model": MODEL, "prompt": f"stream={stream}", "stream": stream}
                async with s.post(url(gw), json=body) as r:
                    return r.status, r.headers.get(SERVED, ""), (await r.read()).decode()

            plain, streamed = asyncio.create_task(call(False)), asyncio.create_task(call(True))

            async def both_on_a() -> bool:
                return len(a.seen) == 2

            await async_wait_for(both_on_a, timeout=5, what="both requests stuck on the hanging server")
            b.down = False
            await wait_candidates(gw, {a.key, b.key}, "the good server back in rotation")
            a.down = True
            # Bounded far below the gateway's 86400 s read timeout: only the retry can answer in time.
            results = await asyncio.wait_for(asyncio.gather(plain, streamed), 60)
    finally:
        await gw.stop()
        await a.stop()
        await b.stop()
    (s1, served1, text1), (s2, served2, text2) = results
    assert (s1, served1) == (200, b.key), text1
    assert json.loads(text1)["choices"][0]["text"] == " ok"
    assert (s2, served2) == (200, b.key), text2  # the good server answers JSON even to stream=true
    assert len(b.seen) == 2  # each request body reached the second server whole
    bodies = sorted(json.dumps(json.loads(body), sort_keys=True) for _, body in a.seen)
    assert sorted(json.dumps(json.loads(body), sort_keys=True) for _, body in b.seen) == bodies
    assert all(ep.in_flight == 0 for ep in gw.datastore.endpoints())


async def test_stream_stalled_after_tokens_ends_with_an_error_event_when_its_endpoint_leaves(
    tmp_path: Path,
) -> None:
    async def tokens_then_hang(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(2):
            await resp.write(f'data: {{"model":"{MODEL}","choices":[{{"text":"t{i}"}}]}}\n\n'.encode())
        await asyncio.Event().wait()
        return resp

    a, b = FakeServer(handler=tokens_then_hang), FakeServer(handler=tokens_then_hang)
    await a.start()
    await b.start()
    gw = await start_gateway(tmp_path, [a, b])
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s,
            s.post(url(gw), json={"model": MODEL, "prompt": "x", "stream": True}) as r,
        ):
            assert r.status == 200
            first = [await asyncio.wait_for(r.content.readline(), 60) for _ in range(4)]
            victim = a if r.headers[SERVED] == a.key else b
            victim.down = True
            # The server never sends more: without the eviction the read would hang past the bound.
            rest = (await asyncio.wait_for(r.content.read(), 60)).decode()
    finally:
        await gw.stop()
        await a.stop()
        await b.stop()
    events = sse_events(b"".join(first).decode() + rest)
    assert len(events) == 4, events
    error = json.loads(events[2])["error"]
    assert error["type"] == "upstream_error" and "left rotation" in error["message"], error
    assert events[3] == "[DONE]"
    assert all(ep.in_flight == 0 for ep in gw.datastore.endpoints())


async def test_stream_still_producing_survives_its_endpoint_leaving_rotation(tmp_path: Path) -> None:
    """A failed probe on a server that still streams must not cut the stream (only silence does)."""
    left = asyncio.Event()
    after = 5  # tokens sent once the server has left rotation

    async def steady(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        i = 0
        while not left.is_set():  # a server that keeps producing, one token per 50 ms
            await resp.write(f'data: {{"model":"{MODEL}","choices":[{{"text":"t{i}"}}]}}\n\n'.encode())
            i += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(left.wait(), 0.05)
        for j in range(after):
            await resp.write(f'data: {{"model":"{MODEL}","choices":[{{"text":"after{j}"}}]}}\n\n'.encode())
            await asyncio.sleep(0.05)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    a, b = FakeServer(handler=steady), FakeServer(handler=steady)
    await a.start()
    await b.start()
    # Silence of 10 s would cut an evicted stream; a loaded machine never stalls the server that long.
    gw = await start_gateway(tmp_path, [a, b], overrides={"proxy.evicted_idle_timeout": 10.0})
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s,
            s.post(url(gw), json={"model": MODEL, "prompt": "x", "stream": True}) as r,
        ):
            victim = a if r.headers[SERVED] == a.key else b
            await asyncio.wait_for(r.content.readline(), 60)
            victim.down = True

            async def gone() -> bool:
                return victim.key not in candidate_keys(gw)

            await async_wait_for(gone, timeout=30, what="the streaming server to leave rotation")
            left.set()
            text = (await asyncio.wait_for(r.content.read(), 60)).decode()
    finally:
        left.set()
        await gw.stop()
        await a.stop()
        await b.stop()
    events = sse_events(text)
    assert events[-1] == "[DONE]" and not any("error" in e for e in events), text
    assert sum("after" in e for e in events) == after, text


async def test_stream_idle_timeout_ends_a_silent_stream_without_any_health_verdict(tmp_path: Path) -> None:
    async def tokens_then_silence(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(f'data: {{"model":"{MODEL}","choices":[{{"text":"t"}}]}}\n\n'.encode())
        await asyncio.Event().wait()
        return resp

    a, b = FakeServer(handler=tokens_then_silence), FakeServer(handler=tokens_then_silence)
    await a.start()
    await b.start()
    options = ProxyOptions(served_header=True, stream_idle_timeout=0.5)
    gw = await start_gateway(tmp_path, [a, b], proxy=options)
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s,
            s.post(url(gw), json={"model": MODEL, "prompt": "x", "stream": True}) as r,
        ):
            assert r.status == 200
            # The server stays silent forever: only the idle limit can end the stream.
            text = (await asyncio.wait_for(r.read(), 60)).decode()
        healthy = all(ep.healthy for ep in gw.datastore.endpoints())
    finally:
        await gw.stop()
        await a.stop()
        await b.stop()
    events = sse_events(text)
    assert len(events) == 3 and events[-1] == "[DONE]", events
    assert json.loads(events[1])["error"]["code"] == "gateway_timeout"
    assert healthy  # nothing left rotation: the idle limit alone ended it


async def test_upstream_idle_limit_is_separate_from_first_byte_limit_and_exchange_aborts() -> None:
    finished = asyncio.Event()
    handlers: list[asyncio.Task[object]] = []

    async def slow_head_then_silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            await asyncio.sleep(0.5)  # longer than the idle limit: the head is under the first-byte limit
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
            await writer.drain()
            await finished.wait()  # then silence until the test ends
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(slow_head_then_silence, "127.0.0.1", 0)
    port = int(srv.sockets[0].getsockname()[1])
    key = f"127.0.0.1:{port}"
    # The first-byte limit is far above the bounds below, so a timeout seen within them is the idle one.
    pool = UpstreamPool(read_timeout=600, idle_timeout=0.3, max_per_host=1)
    try:
        resp = await pool.request(key, "127.0.0.1", port, "POST", "/v1/x", [], b"{}")
        assert await resp.read_chunk() == b"abc"
        with pytest.raises(UpstreamTimeout):
            await asyncio.wait_for(resp.read_chunk(), 60)
        resp.close()

        # withdrawn while waiting for the head: raised at once, never retried on a fresh connection,
        # and the host's only slot is free again
        ex = Exchange(key)
        pending = asyncio.create_task(pool.request(key, "127.0.0.1", port, "POST", "/v1/x", [], b"{}", ex))
        await eventually(lambda: len(handlers) == 2, what="the second request's connection")
        ex.abort("gone")
        with pytest.raises(UpstreamAborted, match="gone"):
            await asyncio.wait_for(pending, 60)
        assert len(handlers) == 2  # not retried on a fresh connection

        # withdrawn once idle for a while: a stream that goes quiet is cut after that limit
        ex = Exchange(key)
        resp = await pool.request(key, "127.0.0.1", port, "POST", "/v1/x", [], b"{}", ex)
        assert await resp.read_chunk() == b"abc"
        reading = asyncio.create_task(resp.read_chunk())
        await asyncio.sleep(0)  # one loop turn: the read is now blocked on the silent socket
        assert not reading.done()
        ex.limit_idle(0.1, "gone")
        with pytest.raises(UpstreamAborted, match=r"no data for 0\.1s"):
            await asyncio.wait_for(reading, 60)
        resp.close()
    finally:
        await pool.close()
        finished.set()
        await asyncio.gather(*handlers, return_exceptions=True)
        srv.close()
        await srv.wait_closed()
