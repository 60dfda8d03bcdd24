"""The live view as the gateway mounts it: admin port, real proxy traffic, real scraper.

``tests/e2e/test_liveview.py`` covers the page itself (JSON shape, CSP, rendering in Chromium) against
hand-built components. This file checks only the wiring that it cannot see: that ``Gateway`` serves
``/live`` and ``/live/state`` on the admin port, and that a request sent through the built-in proxy
shows up there, first in flight on the endpoint that the recorded decision chose, then finished.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from infergate.app.gateway import Gateway
from infergate.servers.liveview import render_page
from tests.integration.test_proxy_faults import MODEL, FakeServer, ok_handler, start_gateway
from tests.support import async_wait_for

Setup = tuple[list[FakeServer], Gateway, asyncio.Event]


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    release = asyncio.Event()

    async def held(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return await ok_handler(request)

    servers = [FakeServer(handler=held), FakeServer(handler=held)]
    for s in servers:
        await s.start()
    gw = await start_gateway(tmp_path, servers)
    try:
        yield servers, gw, release
    finally:
        release.set()
        await gw.stop()
        for s in servers:
            await s.stop()


async def _state(s: aiohttp.ClientSession, gw: Gateway) -> dict[str, Any]:
    async with s.get(f"http://127.0.0.1:{gw.admin_port}/live/state") as r:
        assert r.status == 200 and r.content_type == "application/json"
        state: dict[str, Any] = await r.json()
        return state


async def test_request_through_proxy_appears_in_live_state(setup: Setup) -> None:
    servers, gw, release = setup
    keys = {f"127.0.0.1:{srv.port}" for srv in servers}
    async with aiohttp.ClientSession() as s:
        state = await _state(s, gw)
        assert state["pool"] == "pool" and state["decisions"] == [] and state["decisions_total"] == 0
        assert {e["key"] for e in state["endpoints"]} == keys
        assert all(e["healthy"] and e["fresh"] and e["candidate"] for e in state["endpoints"])
        assert state["flow"]["enabled"] is True and state["flow"]["bands"] == []

        async def send() -> int:
            async with s.post(
                f"http://127.0.0.1:{gw.port}/v1/completions",
                json={"model": MODEL, "prompt": "for the live view"},
                headers={"x-request-id": "liveview-req-1"},
            ) as r:
                await r.read()
                return r.status

        task = asyncio.create_task(send())
        seen: dict[str, Any] = {}

        async def in_flight_and_decided() -> bool:
            nonlocal seen
            seen = await _state(s, gw)
            busy = [e["key"] for e in seen["endpoints"] if e["in_flight"] == 1]
            return len(busy) == 1 and bool(seen["decisions"])

        await async_wait_for(in_flight_and_decided, timeout=10.0, what="the held request in /live/state")
        (decision,) = seen["decisions"]
        busy = next(e for e in seen["endpoints"] if e["in_flight"] == 1)
        assert decision["request_id"] == "liveview-req-1" and decision["model"] == MODEL
        assert decision["endpoint"] == busy["key"] and set(decision["fallbacks"]) == keys - {busy["key"]}
        assert set(decision["scores"]) == keys and decision["plugin_scores"]
        assert seen["decisions_total"] == 1

        release.set()
        assert await asyncio.wait_for(task, 60) == 200

        async def finished() -> bool:
            return all(e["in_flight"] == 0 for e in (await _state(s, gw))["endpoints"])

        await async_wait_for(finished, timeout=10.0, what="in-flight count back to 0")


async def test_admin_port_serves_the_page_with_its_policy(setup: Setup) -> None:
    _, gw, _ = setup
    html, csp = render_page()
    async with aiohttp.ClientSession() as s:
        for path in ("/live", "/live/"):
            async with s.get(f"http://127.0.0.1:{gw.admin_port}{path}") as r:
                assert r.status == 200 and r.content_type == "text/html"
                assert r.headers["Content-Security-Policy"] == csp
                assert await r.text() == html


async def test_a_streamed_request_counts_as_started_from_its_first_chunk(tmp_path: Path) -> None:
    """Through the real proxy: once the first chunk of a stream is relayed the endpoint shows the
    request in flight and started (what flow control reads between scrapes); at its end, neither."""
    release = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"index":0,"text":"a"}]}\n\n')
        await release.wait()
        await resp.write(b'data: {"choices":[{"index":0,"text":"b"}]}\n\ndata: [DONE]\n\n')
        await resp.write_eof()
        return resp

    server = FakeServer(handler=stream)
    await server.start()
    gw = await start_gateway(tmp_path, [server])
    try:
        async with aiohttp.ClientSession() as s:
            body = {"model": MODEL, "prompt": "stream it", "stream": True}
            async with s.post(f"http://127.0.0.1:{gw.port}/v1/completions", json=body) as r:
                assert r.status == 200
                assert (await r.content.readline()).startswith(b"data: ")  # the first chunk came
                ep = (await _state(s, gw))["endpoints"][0]
                assert (ep["in_flight"], ep["in_flight_started"]) == (1, 1)
                release.set()
                assert b"[DONE]" in await r.read()

            async def finished() -> bool:
                e = (await _state(s, gw))["endpoints"][0]
                return (e["in_flight"], e["in_flight_started"]) == (0, 0)

            await async_wait_for(finished, timeout=10.0, what="in-flight and started counts back to 0")
    finally:
        release.set()
        await gw.stop()
        await server.stop()
