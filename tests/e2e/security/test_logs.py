"""Logs a client cannot forge, malformed HTTP without tracebacks, and client disconnects that are
not counted as gateway failures - against real ``infergate serve`` processes and real clients."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from infergate.app.logs import escape_controls
from tests.e2e.security.conftest import MODEL, PLANES, Replica, start_gateway
from tests.support import async_wait_for, free_port, start_infergate, static_pool_docs

FORGED = "\nFORGED ERROR infergate.app admin token=leaked"


def test_escape_controls_covers_every_line_breaker() -> None:
    text = "a\nb\rc\x1b[31md\x85e\u2028f\x00g\x7fh\ttab"
    escaped = escape_controls(text)
    assert escaped == "a\\x0ab\\x0dc\\x1b[31md\\x85e\\u2028f\\x00g\\x7fh\\x09tab"
    assert escaped.isprintable()


@pytest.mark.parametrize(("plane", "fmt"), [("builtin", "text"), ("envoy", "json")])
async def test_client_values_cannot_forge_log_lines(
    plane: str, fmt: str, replicas: list[Replica], tmp_path: Path
) -> None:
    pool = tmp_path / "pool.yaml"
    pool.write_text(yaml.safe_dump_all(static_pool_docs([r.key for r in replicas])))
    port, admin = free_port(), free_port()
    args = ["serve", "-f", str(pool), "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin)]
    args += ["--data-plane", plane, "--log-level", "info", "--log-format", fmt]
    # the replicas run in this event loop: wait for readiness in a thread so they can answer
    child = await asyncio.to_thread(
        start_infergate, args, tmp_path, health_url=f"http://127.0.0.1:{admin}/readyz", timeout=30
    )
    try:
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{port}/v1/completions"
            # header values cannot carry a raw newline on the wire, but the body's model name can
            for body, rid in (
                ({"model": MODEL + FORGED, "prompt": "x"}, "rid-1"),
                ({"model": MODEL, "prompt": "x"}, "rid-2\tinjected"),
            ):
                async with s.post(url, json=body, headers={"x-request-id": rid}) as r:
                    await r.read()
            if plane == "builtin":  # garbage on the wire: one DEBUG line at most, no traceback
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
                await writer.drain()
                assert (await asyncio.wait_for(reader.readline(), 60)).split()[1] == b"400"
                writer.close()
    finally:
        await asyncio.to_thread(child.stop, signal.SIGTERM)
    out = child.output()
    lines = out.splitlines()
    assert not [line for line in lines if line.startswith("FORGED")], out
    assert "Traceback" not in out, out
    if fmt == "json":
        records = [json.loads(line) for line in lines if line.startswith("{")]
        assert not [r for r in records if r["level"] == "ERROR"], out
        assert any(FORGED in r["message"] for r in records), out  # kept whole inside one field
    else:
        assert not [line for line in lines if line[24:].startswith("ERROR ")], out
        assert "\\x0aFORGED ERROR" in out, out
        # Envoy replaces a client's x-request-id; the built-in proxy keeps it, escaped
        assert "rid-2\\x09injected" in out, out


def request_errors(gw: Any) -> dict[str, float]:
    """The gateway's ``inference_objective_request_error_total``, summed per error code."""
    out: dict[str, float] = {}
    for family in gw.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "inference_objective_request_error_total":
                out[sample.labels["error_code"]] = out.get(sample.labels["error_code"], 0) + sample.value
    return out


async def hold_stream(replica: Replica, request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(f'data: {{"model":"{MODEL}","choices":[{{"text":"a"}}]}}\n\n'.encode())
    await asyncio.Event().wait()
    return resp


async def leave_mid_stream_and_see_it_counted(gw: Any) -> None:
    """Read one line of a streamed completion, leave (closing the connection mid-stream), and
    check the gateway counted exactly one client disconnect and freed the endpoint."""
    async with aiohttp.ClientSession() as s:
        body = {"model": MODEL, "prompt": "x", "stream": True}
        async with s.post(f"http://127.0.0.1:{gw.port}/v1/completions", json=body) as r:
            await r.content.readline()

    async def counted() -> bool:
        return bool(request_errors(gw))

    await async_wait_for(counted, timeout=10, what="the abandoned request to be accounted")
    assert request_errors(gw) == {"ClientDisconnected": 1}
    assert all(ep.in_flight == 0 for ep in gw.datastore.endpoints())


@pytest.mark.parametrize("plane", PLANES)
async def test_client_disconnect_is_not_an_internal_error(
    plane: str, replicas: list[Replica], tmp_path: Path
) -> None:
    for rep in replicas:
        rep.handler = hold_stream
    gw = await start_gateway(tmp_path, plane, replicas)

    try:
        await leave_mid_stream_and_see_it_counted(gw)
    finally:
        await gw.stop()


async def endless_stream(replica: Replica, request: web.Request) -> web.StreamResponse:
    """An answer that never ends and never pauses: the gateway is always writing to its client."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    chunk = f'data: {{"model":"{MODEL}","choices":[{{"text":"a"}}]}}\n\n'.encode()
    try:
        while True:
            await resp.write(chunk)
            await asyncio.sleep(0)
    except ConnectionResetError:  # the gateway closed this upstream once its client left
        return resp


async def test_client_leaving_while_the_gateway_writes_is_not_an_internal_error(
    replicas: list[Replica], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp does not cancel the handler when a client leaves: the relay's next write fails
    ("Cannot write to closing transport"). That is a client disconnect, not a gateway error with a
    traceback (as guidellm's clients leaving at their deadline showed)."""
    for rep in replicas:
        rep.handler = endless_stream
    gw = await start_gateway(tmp_path, "builtin", replicas)

    try:
        await leave_mid_stream_and_see_it_counted(gw)
        assert not [r for r in caplog.records if r.name.startswith("infergate") and r.levelname == "ERROR"]
    finally:
        await gw.stop()
