"""Fault containment on the built-in proxy: the retry budget, health hysteresis, the silence window.

The replicas are fake model servers whose health the test controls; nothing waits on a clock:
each step waits for the gateway state it needs (a probe count, a rotation change, a response).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from infergate.config.settings import Settings
from infergate.dataplanes.builtin.proxy import ProxyServer
from tests.e2e.security.conftest import MODEL, PLANES, STALL_PROOF, Replica, start_gateway
from tests.support import async_wait_for


async def poison(replica: Replica, request: web.Request) -> web.StreamResponse:
    """What a request that stalls its server looks like from outside: the server stops answering
    anything (its health probe fails) while it holds the request, and never answers it."""
    replica.down = True
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def test_a_poison_request_is_retried_once_then_failed_and_counted(
    replicas: list[Replica], tmp_path: Path
) -> None:
    for rep in replicas:
        rep.handler = poison
    gw = await start_gateway(tmp_path, "builtin", replicas)
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"http://127.0.0.1:{gw.port}/v1/completions", json={"model": MODEL, "prompt": "boom"}
            ) as r,
        ):
            text = await r.text()
        refused = gw.metrics.registry.get_sample_value(
            "infergate_request_retry_refused_total", {"reason": "endpoints_down"}
        )
    finally:
        await gw.stop()
    assert r.status == 502, text
    error = json.loads(text)["error"]
    assert error["code"] == "retry_refused" and "went down while serving it" in error["message"], error
    assert "127.0.0.1" not in text
    # each replica saw the request exactly once: one try and one retry, never a third
    assert [len(rep.seen) for rep in replicas] == [1, 1]
    assert refused == 1


async def test_one_failed_probe_does_not_cut_streams_in_flight(
    replicas: list[Replica], tmp_path: Path
) -> None:
    """Hysteresis: an endpoint that fails one probe leaves rotation, but its streams go on."""
    release = asyncio.Event()

    async def stream(replica: Replica, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(f'data: {{"model":"{MODEL}","choices":[{{"text":"a"}}]}}\n\n'.encode())
        await release.wait()
        await resp.write(
            f'data: {{"model":"{MODEL}","choices":[{{"text":"b"}}]}}\n\ndata: [DONE]\n\n'.encode()
        )
        return resp

    for rep in replicas:
        rep.handler = stream
    gw = await start_gateway(
        tmp_path, "builtin", replicas, settings=Settings().replace({"scrape.health_interval": 0.05})
    )
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"http://127.0.0.1:{gw.port}/v1/completions",
                json={"model": MODEL, "prompt": "x", "stream": True},
            ) as r,
        ):
            await r.content.readline()
            victim = next(rep for rep in replicas if rep.seen)
            victim.down = True  # one failed probe...

            async def one_failure() -> bool:
                return victim.failed_probes >= 1 and victim.key not in {
                    e.key for e in gw.datastore.candidates()
                }

            await async_wait_for(one_failure, timeout=5, what="the endpoint leaving rotation")
            victim.down = False  # ...then healthy again, before a second one

            async def back() -> bool:
                return victim.key in {e.key for e in gw.datastore.candidates()}

            await async_wait_for(back, timeout=5, what="the endpoint rejoining")
            assert victim.failed_probes < gw.settings.scrape.evict_after_failed_probes
            release.set()
            text = (await r.content.read()).decode()
    finally:
        await gw.stop()
    assert "error" not in text and text.rstrip().endswith("data: [DONE]"), text


class _Exchange:
    """Stands for an upstream exchange relaying a stream whose tokens came ``max_gap`` apart."""

    def __init__(self, max_gap: float) -> None:
        self.key = "10.0.0.1:8000"
        self.relaying = True
        self.evicted = False
        self.max_gap = max_gap
        self.window: float | None = None

    def limit_idle(self, seconds: float, reason: str) -> None:
        self.window = seconds


def test_silence_window_follows_the_streams_own_inter_token_gaps() -> None:
    proxy = ProxyServer.__new__(ProxyServer)
    from infergate.dataplanes.builtin.proxy import ProxyOptions

    proxy._opts = ProxyOptions(evicted_idle_timeout=1.0, evicted_idle_factor=4.0)
    fast, slow = _Exchange(0.02), _Exchange(1.5)
    proxy._evict(fast)  # type: ignore[arg-type]
    proxy._evict(slow)  # type: ignore[arg-type]
    assert fast.window == 1.0  # the floor
    assert slow.window == 6.0  # a time-scaled stream with 1.5 s between tokens is not cut at 1 s
    assert fast.evicted and slow.evicted


class JumpClock:
    """The monotonic clock plus an offset the test moves, to play a gateway that stalled."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.monotonic() + self.offset


@pytest.mark.parametrize("plane", PLANES)
async def test_stale_metrics_queue_requests_instead_of_503(
    plane: str, replicas: list[Replica], tmp_path: Path
) -> None:
    clock = JumpClock()
    gw = await start_gateway(tmp_path, plane, replicas, clock=clock)
    try:
        gate = asyncio.Event()
        for rep in replicas:
            rep.metrics_gate = gate  # scrapes hang: the endpoints stay healthy, their metrics age

        # A scrape already past the gate could still land after the jump below and make its
        # endpoint fresh again: jump only once every replica has a scrape held at the gate (the
        # scraper polls each endpoint one scrape at a time, so the earlier ones have landed).
        async def all_held() -> bool:
            return all(rep.scrapes_at_gate > 0 for rep in replicas)

        await async_wait_for(all_held, what="a scrape of every replica to hang")
        clock.offset += (
            10 * STALL_PROOF["scrape.staleness"]
        )  # far past the staleness: every snapshot is stale
        assert not gw.datastore.candidates()
        async with aiohttp.ClientSession() as s:
            call = asyncio.create_task(
                s.post(f"http://127.0.0.1:{gw.port}/v1/completions", json={"model": MODEL, "prompt": "x"})
            )

            async def waiting() -> bool:
                return gw.flow.queued() == 1

            await async_wait_for(waiting, timeout=5, what="the request to wait in flow control")
            gate.set()  # the scrapes answer: fresh metrics release the request
            resp = await asyncio.wait_for(call, 60)
            assert resp.status == 200, await resp.text()
            resp.release()
    finally:
        await gw.stop()


GAP = 0.5  # between tokens of a slow (e.g. time-scaled) model


async def test_a_slow_stream_from_an_endpoint_declared_down_is_not_cut_for_its_pace(
    replicas: list[Replica], tmp_path: Path
) -> None:
    """Once its endpoint is declared down, a stream may stay silent for 4x its own longest gap
    (not the 0.1 s floor): a stream that keeps its pace finishes; the floor alone would cut it."""
    down = asyncio.Event()

    async def slow(replica: Replica, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(6):
            if i == 2:
                replica.down = True  # the probes fail from here on; tokens keep coming
                await down.wait()
            await resp.write(f'data: {{"model":"{MODEL}","choices":[{{"text":"t{i}"}}]}}\n\n'.encode())
            await asyncio.sleep(GAP)  # the model's pace, not synchronisation
        await resp.write(b"data: [DONE]\n\n")
        return resp

    for rep in replicas:
        rep.handler = slow
    settings = Settings().replace(
        {"scrape.health_interval": 0.05, "proxy.evicted_idle_timeout": 0.1, "proxy.evicted_idle_factor": 4.0}
    )
    gw = await start_gateway(tmp_path, "builtin", replicas, settings=settings)
    try:
        async with aiohttp.ClientSession() as s:
            body = {"model": MODEL, "prompt": "x", "stream": True}
            async with s.post(f"http://127.0.0.1:{gw.port}/v1/completions", json=body) as r:
                victim = next(rep for rep in replicas if rep.seen)

                async def declared_down() -> bool:
                    return victim.failed_probes >= gw.settings.scrape.evict_after_failed_probes

                await async_wait_for(declared_down, timeout=20, what="the endpoint to be declared down")
                down.set()
                text = (await r.read()).decode()
    finally:
        await gw.stop()
    assert "error" not in text and text.rstrip().endswith("data: [DONE]"), text
    assert all(f'"t{i}"' in text for i in range(6)), text
