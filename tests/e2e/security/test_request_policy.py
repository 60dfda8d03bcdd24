"""One request policy on both data planes, attacked from outside with real HTTP clients.

Paths: only the inference API and ``/v1/models`` (answered by the gateway) exist; the model
servers' admin and introspection paths are a 404 in OpenAI error JSON and never reach a replica.
Keys: checked on the request headers before any body byte, for every method and body size.
Control headers: refused from a key without the permission; scope judged on the final target.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest
from aiohttp import web

from infergate.config.settings import Settings
from infergate.servers.auth import ApiKeyStore
from tests.e2e.security.conftest import MODEL, PLANES, Replica, Rig, answer, start_gateway

GOOD = "sk-good-0123456789"
FOOD = "sk-food-0123456789"
KEYS = {GOOD: "*", FOOD: ["food-review"]}

# What a vLLM replica serves besides inference; none of it may be reachable through the gateway.
REPLICA_ONLY = [
    ("POST", "/v1/load_lora_adapter", {"lora_name": "evil", "lora_path": "/tmp/evil"}),
    ("POST", "/v1/unload_lora_adapter", {"lora_name": "food-review"}),
    ("GET", "/metrics", None),
    ("POST", "/tokenize", {"model": MODEL, "prompt": "hi"}),
    ("POST", "/detokenize", {"model": MODEL, "tokens": [1]}),
    ("GET", "/version", None),
    ("GET", "/get_server_info", None),
    ("POST", "/reset_prefix_cache", None),
    ("GET", "/v1/../metrics", None),
]


@pytest.fixture(params=PLANES)
async def rig(request: pytest.FixtureRequest, replicas: list[Replica], tmp_path: Path) -> AsyncIterator[Rig]:
    gw = await start_gateway(tmp_path, request.param, replicas, api_keys=ApiKeyStore.from_mapping(KEYS))
    try:
        yield Rig(request.param, replicas, gw)
    finally:
        await gw.stop()


def assert_openai_error(
    status: int, ctype: str, text: str, want_status: int, want_type: str
) -> dict[str, object]:
    assert status == want_status, text
    assert ctype == "application/json", (ctype, text)
    err = json.loads(text)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == want_type, err
    assert "127.0.0.1" not in text  # never a backend address
    return dict(err)


async def test_replica_admin_paths_are_404_and_never_reach_a_replica(rig: Rig) -> None:
    auth = {"Authorization": f"Bearer {GOOD}", "x-attacker": "1"}
    async with aiohttp.ClientSession() as s:
        for method, path, body in REPLICA_ONLY:
            async with s.request(method, rig.url + path, json=body, headers=auth) as r:
                assert_openai_error(r.status, r.content_type, await r.text(), 404, "invalid_request_error")
        # /v1/models is answered by the gateway itself (with the pool's adapters)
        async with s.get(rig.url + "/v1/models", headers=auth) as r:
            assert r.status == 200
            assert {MODEL, "food-review"} <= {m["id"] for m in (await r.json())["data"]}
        async with s.post(rig.url + "/v1/models", headers=auth) as r:
            assert_openai_error(r.status, r.content_type, await r.text(), 405, "invalid_request_error")
    assert [r.seen for r in rig.replicas] == [[], []]


async def test_keys_are_checked_on_headers_before_any_body_byte(rig: Rig) -> None:
    async with aiohttp.ClientSession() as s:
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"x-api-key": "sk-wrong"}):
            async with s.get(rig.url + "/v1/models", headers=headers) as r:
                assert_openai_error(r.status, r.content_type, await r.text(), 401, "authentication_error")
            # a POST without a body (Content-Length: 0) is no way around the key
            async with s.post(rig.url + "/v1/completions", data=b"", headers=headers) as r:
                assert_openai_error(r.status, r.content_type, await r.text(), 401, "authentication_error")
        # with a valid key the empty body is a 400 from the gateway, not a replica's answer
        good = {"Authorization": f"Bearer {GOOD}"}
        async with s.post(rig.url + "/v1/completions", data=b"", headers=good) as r:
            assert_openai_error(r.status, r.content_type, await r.text(), 400, "invalid_request_error")
    # A 31 MB upload with a wrong key is refused on its head: the answer arrives while the client
    # has sent no byte of the body.
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.gateway.port)
    try:
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer sk-wrong\r\nContent-Length: 31000000\r\n\r\n"
        )
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 60)
        assert status.split()[1] == b"401", status
    finally:
        writer.close()
    assert [r.seen for r in rig.replicas] == [[], []]


async def test_control_headers_cannot_widen_a_keys_scope(rig: Rig) -> None:
    client = openai.AsyncOpenAI(base_url=rig.url + "/v1", api_key=FOOD, max_retries=0, timeout=20)
    try:
        bypasses = (
            ("food-review", {"x-gateway-model-name-rewrite": "cad-fabricator"}),
            ("food-review", {"x-gateway-model-name-rewrite": MODEL}),
            ("cad-fabricator", {"x-gateway-inference-objective": "food-review"}),
            (MODEL, {"x-gateway-inference-objective": "food-review"}),
            ("food-review", {"x-gateway-inference-fairness-id": "someone-else"}),
            ("food-review", {"x-llm-d-model-name-rewrite": "cad-fabricator"}),  # llm-d spelling
            (MODEL, {"x-llm-d-inference-objective": "food-review"}),
            ("food-review", {"x-llm-d-slo-ttft-ms": "1"}),  # a tight bound jumps its flow's queue
        )
        for model, headers in bypasses:
            with pytest.raises(openai.PermissionDeniedError) as err:
                await client.completions.create(model=model, prompt="hi", max_tokens=1, extra_headers=headers)
            assert isinstance(err.value.body, dict)
            assert err.value.body["code"] == "control_header_not_allowed", err.value.body
        for model in ("cad-fabricator", MODEL):  # and without headers, only its own objective
            with pytest.raises(openai.PermissionDeniedError):
                await client.completions.create(model=model, prompt="hi", max_tokens=1)
        done = await client.completions.create(model="food-review", prompt="hi", max_tokens=1)
        assert done.model == "food-review"
    finally:
        await client.close()
    bodies = [json.loads(body) for r in rig.replicas for _, _, body in r.seen]
    assert [b["model"] for b in bodies] == ["food-review"]  # only the allowed request got through


async def drop_connection(replica: Replica, request: web.Request) -> web.StreamResponse:
    """A model server that dies mid-request: the connection closes before any answer."""
    assert request.transport is not None
    request.transport.abort()
    return web.Response()


@pytest.mark.parametrize("plane", PLANES)
async def test_control_headers_are_consumed_and_bad_slo_bounds_are_a_400(
    plane: str, replicas: list[Replica], tmp_path: Path
) -> None:
    """Objective, fairness and latency-bound headers steer the gateway and never reach the model
    server, on either data plane; a bound that is not a number of milliseconds is refused."""
    forwarded: list[set[str]] = []

    async def recording(replica: Replica, request: web.Request) -> web.StreamResponse:
        forwarded.append({k.lower() for k in request.headers})
        return await answer(replica, request)

    for rep in replicas:
        rep.handler = recording
    gw = await start_gateway(tmp_path, plane, replicas)
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{gw.port}/v1", api_key="x", max_retries=0, timeout=20
    )
    control = {
        "x-llm-d-inference-objective": "food-review",
        "x-gateway-inference-fairness-id": "tenant-a",
        "x-llm-d-slo-ttft-ms": "300",
        "x-llm-d-slo-tpot-ms": "25",
        "x-slo-ttft-ms": "900",
    }
    try:
        done = await client.completions.create(
            model="food-review", prompt="hi", max_tokens=1, extra_headers={**control, "x-kept": "1"}
        )
        assert done.model == "food-review"
        for bad in ("soon", "-1", "0", "nan"):
            with pytest.raises(openai.BadRequestError) as err:
                await client.completions.create(
                    model="food-review", prompt="hi", max_tokens=1, extra_headers={"x-llm-d-slo-tpot-ms": bad}
                )
            assert isinstance(err.value.body, dict)
            assert err.value.body["param"] == "x-llm-d-slo-tpot-ms", err.value.body
        # the gateway keeps serving
        assert (await client.completions.create(model="food-review", prompt="hi", max_tokens=1)).model
    finally:
        await client.close()
        await gw.stop()
    assert len(forwarded) == 2 and "x-kept" in forwarded[0]
    assert not set(control) & forwarded[0], forwarded[0]


@pytest.mark.parametrize("plane", PLANES)
async def test_upstream_failures_are_openai_json_naming_no_backend(
    plane: str, replicas: list[Replica], tmp_path: Path
) -> None:
    """On Envoy the 5xx is made by Envoy itself (local reply mapper), on the proxy by the gateway."""
    for rep in replicas:
        rep.handler = drop_connection
    gw = await start_gateway(tmp_path, plane, replicas)
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"http://127.0.0.1:{gw.port}/v1/completions", json={"model": MODEL, "prompt": "x"}) as r,
        ):
            text = await r.text()
            assert r.status in (502, 503), text
            assert_openai_error(r.status, r.content_type, text, r.status, "upstream_error")
            for rep in replicas:
                assert str(rep.port) not in text
    finally:
        await gw.stop()
    assert sum(len(r.seen) for r in replicas) >= 1


async def test_connection_flood_is_capped_per_listener_and_spares_the_admin_port(
    replicas: list[Replica], tmp_path: Path
) -> None:
    """Idle connections beyond the listener's budget are closed at once; the admin port, with its
    own budget, and the connections already admitted keep working."""
    for plane in PLANES:
        settings = Settings().replace(
            {
                "scrape.health_interval": 0.05,
                "listeners.max_client_connections": 4,
                "listeners.admin_max_connections": 4,
            }
        )
        gw = await start_gateway(tmp_path, plane, replicas, settings=settings)
        held: list[asyncio.StreamWriter] = []
        try:
            streams = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(4)]
            held = [w for _, w in streams]
            # an admitted idle connection is still served
            reader, writer = streams[0]
            writer.write(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n")
            assert (await asyncio.wait_for(reader.readline(), 60)).split()[1] == b"200"
            # one more is closed without an answer
            extra_r, extra_w = await asyncio.open_connection("127.0.0.1", gw.port)
            held.append(extra_w)
            with contextlib.suppress(ConnectionResetError):
                extra_w.write(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n")
                await extra_w.drain()
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(extra_r.read(), 60) == b""
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{gw.admin_port}/healthz") as r:
                assert r.status == 200
        finally:
            for w in held:
                w.close()
            await gw.stop()
