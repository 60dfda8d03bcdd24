"""Upstream timeouts and the retry budget of the Envoy data plane, with a real Envoy in front of
the picker and model servers that stall, stream slowly or are gone.

* first byte: a replica that accepted a request and never answers is given up after
  ``first_byte_timeout`` (504, OpenAI error JSON) and the request is not sent again;
* the timer stops at the response head: a stream slower than it is not cut;
* a request that never reached its replica (connection refused) is retried once, no more.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import aiohttp
from aiohttp import web

from infergate.app.gateway import Gateway
from infergate.config.settings import Settings
from infergate.dataplanes.extproc import EnvoyDataPlane
from tests.e2e.security.conftest import MODEL, Replica, start_gateway
from tests.e2e.security.test_request_policy import assert_openai_error

FIRST_BYTE = 2.0


def envoy_stats(gw: Gateway, cluster: str = "original_destination_cluster") -> dict[str, int]:
    """Counters of one Envoy cluster from the admin endpoint (``upstream_rq_retry`` -> n)."""
    plane = gw.data_plane
    assert isinstance(plane, EnvoyDataPlane) and plane.envoy is not None
    assert plane.envoy.admin_address is not None
    prefix = f"cluster.{cluster}."
    url = f"http://{plane.envoy.admin_address}/stats?filter=^{prefix}"
    with urllib.request.urlopen(url, timeout=30) as resp:
        text = resp.read().decode()
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if name.startswith(prefix) and value.strip().isdigit():
            out[name.removeprefix(prefix)] = int(value)
    return out


async def stall(replica: Replica, request: web.Request) -> web.StreamResponse:
    """Accepts the request and never answers (a wedged engine that still passes its probes)."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def test_a_stalled_replica_gets_a_first_byte_timeout_and_no_resend(
    replicas: list[Replica], tmp_path: Path
) -> None:
    for rep in replicas:
        rep.handler = stall
    settings = Settings().replace(
        {"scrape.health_interval": 0.05, "proxy.first_byte_timeout": FIRST_BYTE, "proxy.retries": 1}
    )
    gw = await start_gateway(tmp_path, "envoy", replicas, settings=settings)
    try:
        body = {"model": MODEL, "prompt": "x"}
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s,
            s.post(f"http://127.0.0.1:{gw.port}/v1/completions", json=body) as r,
        ):
            assert_openai_error(r.status, r.content_type, await r.text(), 504, "upstream_error")
        stats = await asyncio.to_thread(envoy_stats, gw)
    finally:
        await gw.stop()
    assert sum(len(r.seen) for r in replicas) == 1  # the server that had it is not asked again
    assert stats["upstream_rq_per_try_timeout"] == 1 and stats.get("upstream_rq_retry", 0) == 0, stats


async def slow_stream(replica: Replica, request: web.Request) -> web.StreamResponse:
    """The head at once, then tokens further apart than the first-byte timeout."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for text in ("a", "b"):
        await resp.write(f'data: {{"model":"{MODEL}","choices":[{{"text":"{text}"}}]}}\n\n'.encode())
        await asyncio.sleep(2 * FIRST_BYTE)  # a slow model, not synchronisation
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def test_the_first_byte_timeout_does_not_cut_a_slow_stream(
    replicas: list[Replica], tmp_path: Path
) -> None:
    for rep in replicas:
        rep.handler = slow_stream
    settings = Settings().replace({"scrape.health_interval": 0.05, "proxy.first_byte_timeout": FIRST_BYTE})
    gw = await start_gateway(tmp_path, "envoy", replicas, settings=settings)
    try:
        # a body larger than Envoy's retry buffer still goes through with retries on
        body = {"model": MODEL, "prompt": "x" * 100_000, "stream": True}
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s,
            s.post(f"http://127.0.0.1:{gw.port}/v1/completions", json=body) as r,
        ):
            assert r.status == 200
            text = (await r.read()).decode()
    finally:
        await gw.stop()
    events = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", text
    assert [json.loads(e)["choices"][0]["text"] for e in events[:-1]] == ["a", "b"], text


async def test_a_request_that_never_reached_its_replica_is_retried_once(
    replicas: list[Replica], tmp_path: Path
) -> None:
    # Probes and scrapes far apart: the picker keeps choosing the replicas after they are gone.
    settings = Settings().replace(
        {
            "scrape.health_interval": 300,
            "scrape.interval": 300,
            "scrape.staleness": 600,
            "flow_control.saturation_staleness": 600,
            "proxy.retries": 1,
        }
    )
    gw = await start_gateway(tmp_path, "envoy", replicas, settings=settings)
    try:
        for rep in replicas:  # the listeners close: connections are refused from now on
            await rep.stop()
            rep.runner = None
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s,
            s.post(f"http://127.0.0.1:{gw.port}/v1/completions", json={"model": MODEL, "prompt": "x"}) as r,
        ):
            text = await r.text()
            assert_openai_error(r.status, r.content_type, text, r.status, "upstream_error")
            assert r.status == 503, text
        stats = await asyncio.to_thread(envoy_stats, gw)
    finally:
        await gw.stop()
    assert stats["upstream_rq_retry"] == 1 and stats["upstream_cx_connect_fail"] == 2, stats


async def test_the_port_envoy_bound_is_the_gateways_and_a_restart_keeps_it(
    replicas: list[Replica], tmp_path: Path
) -> None:
    """``listeners.port: 0`` (any free port): Envoy binds it, the gateway serves on the port
    Envoy's admin names, and the bootstrap a restart would use names that port, not 0."""
    gw = await start_gateway(tmp_path, "envoy", replicas)
    try:
        plane = gw.data_plane
        assert isinstance(plane, EnvoyDataPlane) and plane.envoy is not None
        bound = await asyncio.to_thread(plane.envoy.listener_port, "infergate")
        listener = plane.envoy.bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]
        assert gw.port == plane.port == bound == listener["port_value"] > 0
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s,
            s.post(f"http://127.0.0.1:{gw.port}/v1/completions", json={"model": MODEL, "prompt": "x"}) as r,
        ):
            assert r.status == 200
    finally:
        await gw.stop()
