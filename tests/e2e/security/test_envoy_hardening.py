"""The Envoy data plane when the picker is gone: fail-open routes around dead replicas, fail-close
answers within a bounded time, and slow or greedy clients are bounded by the bootstrap."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from infergate.config.settings import Settings
from infergate.dataplanes.extproc.bootstrap import EnvoySettings, render_bootstrap
from infergate.dataplanes.extproc.process import EnvoyProcess
from tests.e2e.security.conftest import MODEL, Replica, start_gateway
from tests.support import free_port


def _hcm(boot: dict[str, Any]) -> dict[str, Any]:
    filters = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
    return dict(filters[-1]["typed_config"])


def test_bootstrap_bounds_the_picker_wait_and_slow_clients() -> None:
    boot = render_bootstrap(EnvoySettings())
    hcm = _hcm(boot)
    ext = hcm["http_filters"][0]["typed_config"]
    assert ext["message_timeout"] == "65s"  # a frozen picker fails requests after the queue TTL
    assert hcm["request_headers_timeout"] == "75s" and hcm["request_timeout"] == "140s"
    limit = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert limit["max_connections"] == 10000
    # the picker's route: a first-byte timeout by default, one retry only of what never left Envoy
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert route["retry_policy"] == {
        "retry_on": "connect-failure,refused-stream,reset-before-request",
        "num_retries": 1,
        "per_try_timeout": "600s",
    }
    assert route["idle_timeout"] == "600s"


@pytest.fixture
async def live() -> AsyncIterator[Replica]:
    r = Replica()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


async def test_fail_open_routes_around_a_dead_replica(live: Replica) -> None:
    """The picker is down and one of two replicas too: every request still gets an answer."""
    dead, picker, port = free_port(), free_port(), free_port()
    settings = EnvoySettings(
        listen_host="127.0.0.1",
        listen_port=port,
        picker_port=picker,  # nothing listens there
        failure_mode="FailOpen",
        fallback_endpoints=(live.key, f"127.0.0.1:{dead}"),
    )
    envoy = EnvoyProcess(render_bootstrap(settings), concurrency=1)
    await envoy.start_async()
    try:
        async with aiohttp.ClientSession() as s:
            for i in range(12):
                body = {"model": MODEL, "prompt": f"p{i}"}
                async with s.post(f"http://127.0.0.1:{port}/v1/completions", json=body) as r:
                    assert r.status == 200, await r.text()
    finally:
        await envoy.stop_async(2)
    assert len(live.seen) == 12


class FrozenPicker(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """A picker that accepts Envoy's stream and never answers (a wedged process)."""

    def __init__(self) -> None:
        self.streams = 0

    async def Process(self, request_iterator: Any, context: Any) -> None:
        self.streams += 1
        await asyncio.Event().wait()


async def test_fail_close_answers_within_the_message_timeout_when_the_picker_is_frozen(live: Replica) -> None:
    picker = FrozenPicker()
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(picker, server)
    picker_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port = free_port()
    settings = EnvoySettings(
        listen_host="127.0.0.1",
        listen_port=port,
        picker_port=picker_port,
        picker_health_check=False,
        failure_mode="FailClose",
        message_timeout="1s",
    )
    envoy = EnvoyProcess(render_bootstrap(settings), concurrency=1)
    await envoy.start_async()
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s,
            s.post(f"http://127.0.0.1:{port}/v1/completions", json={"model": MODEL, "prompt": "x"}) as r,
        ):
            text = await r.text()
        assert r.status >= 500 and r.content_type == "application/json", (r.status, text)
        assert set(json.loads(text)["error"]) == {"message", "type", "param", "code"}, text
    finally:
        await envoy.stop_async(2)
        await server.stop(0)
    assert picker.streams == 1 and live.seen == []  # the picker got it, and nothing went upstream


async def test_slow_clients_are_bounded_on_envoy(live: Replica, tmp_path: Path) -> None:
    """A head never finished is closed; a body that never arrives (a lying Content-Length) is
    answered 408 in the OpenAI error shape - both after the configured client timeouts."""
    settings = Settings().replace(
        {"scrape.health_interval": 0.05, "listeners.idle_timeout": 1.0, "flow_control.request_ttl": 1.0}
    )
    gw = await start_gateway(tmp_path, "envoy", [live], settings=settings)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\n")  # no end of head
        await writer.drain()
        head = await asyncio.wait_for(reader.read(), 60)  # closed by Envoy (after a 408 or not)
        assert head == b"" or head.startswith(b"HTTP/1.1 408"), head
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"model": "' + MODEL.encode()
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 60)
        writer.close()
    finally:
        await gw.stop()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"application/json" in head.lower(), answer
    assert b'{"error":{"code":408,' in body, answer  # chunked: the OpenAI error JSON inside
    assert live.seen == []
