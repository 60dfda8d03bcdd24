"""vLLM 0.33's ``GET /load`` and ORCA ``endpoint-load-metrics`` response header, over HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from infergate.simulator.args import parse_args
from infergate.simulator.server import SimServer
from tests.support import async_wait_for

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


async def start(*extra: str) -> SimServer:
    argv = ["--host", "127.0.0.1", "--port", "0", "--time-scale", "0.05", "--model", MODEL, *extra]
    server = SimServer(parse_args(argv, {}))
    await server.start()
    return server


@pytest.fixture
async def tracked() -> AsyncIterator[SimServer]:
    server = await start("--enable-server-load-tracking")
    try:
        yield server
    finally:
        await server.stop()


async def load(sim: SimServer) -> int:
    async with aiohttp.ClientSession() as s, s.get(f"{sim.url}/load") as r:
        body = await r.json()
        assert r.status == 200 and set(body) == {"server_load"}
        return int(body["server_load"])


async def stream_until_first_chunk(sim: SimServer, started: asyncio.Event, release: asyncio.Event) -> None:
    body = {"model": MODEL, "prompt": "hold on", "max_tokens": 100000, "ignore_eos": True, "stream": True}
    async with aiohttp.ClientSession() as s, s.post(f"{sim.url}/v1/completions", json=body) as r:
        await r.content.readline()
        started.set()
        await release.wait()


@pytest.mark.parametrize("tracking", [True, False])
async def test_load_counts_in_flight_generation_requests(tracking: bool) -> None:
    sim = await start(*(["--enable-server-load-tracking"] if tracking else []))
    started, release = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(stream_until_first_chunk(sim, started, release))
    try:
        assert await asyncio.wait_for(started.wait(), 60) is True
        assert await load(sim) == (1 if tracking else 0)
        release.set()
        await task

        async def idle() -> bool:
            return await load(sim) == 0

        await async_wait_for(idle, what="the load to drop once the stream is closed")
    finally:
        release.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sim.stop()


async def completion_headers(sim: SimServer, fmt: str | None, stream: bool = False) -> dict[str, str]:
    headers = {} if fmt is None else {"endpoint-load-metrics-format": fmt}
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "stream": stream}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{sim.url}/v1/completions", json=body, headers=headers) as r,
    ):
        await r.read()
        assert r.status == 200
        return dict(r.headers)


async def test_orca_header_on_request(tracked: SimServer) -> None:
    text = (await completion_headers(tracked, "TEXT"))["endpoint-load-metrics"]
    assert text.startswith("TEXT named_metrics.num_requests_waiting=")
    fields = dict(part.split("=") for part in text[len("TEXT ") :].split(", "))
    assert set(fields) == {"named_metrics.num_requests_waiting", "named_metrics.kv_cache_usage_perc"}
    assert all(float(v) >= 0.0 for v in fields.values())
    js = (await completion_headers(tracked, "json"))["endpoint-load-metrics"]
    assert js.startswith("JSON ")
    assert set(json.loads(js[len("JSON ") :])["named_metrics"]) == {
        "num_requests_waiting",
        "kv_cache_usage_perc",
    }
    assert "endpoint-load-metrics" not in await completion_headers(tracked, None)
    assert "endpoint-load-metrics" not in await completion_headers(tracked, "protobuf")
    assert "endpoint-load-metrics" not in await completion_headers(tracked, "TEXT", stream=True)
