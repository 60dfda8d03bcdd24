"""Request paths the upstream picker handles beside OpenAI completions/chat: the Anthropic Messages
API (``/v1/messages``, ``/v1/messages/count_tokens``, llm-d-router's default-on anthropic-parser)
and vLLM's ``…/render`` endpoints. Parsed for routing, forwarded unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from infergate.errors import BadRequestError
from infergate.requestcontrol.parsing import api_kind_for_path, parse_body
from infergate.types import ApiKind
from tests.integration.test_proxy_faults import MODEL, FakeServer, start_gateway, url


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v1/messages", ApiKind.MESSAGES),
        ("/v1/messages/count_tokens", ApiKind.MESSAGES),
        ("/v1/messages?beta=true", ApiKind.MESSAGES),
        ("/v1/completions/render", ApiKind.COMPLETIONS),
        ("/v1/chat/completions/render", ApiKind.CHAT),
        ("/v1/render", ApiKind.OTHER),
        ("/v1/chat/completions", ApiKind.CHAT),
    ],
)
def test_api_kind_for_path(path: str, kind: ApiKind) -> None:
    assert api_kind_for_path(path) is kind


def test_anthropic_messages_body() -> None:
    body = {
        "model": "claude-ish",
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
        ],
        "max_tokens": 64,
        "stream": True,
    }
    parsed = parse_body("/v1/messages", json.dumps(body).encode())
    assert parsed.api is ApiKind.MESSAGES
    assert (parsed.model, parsed.max_tokens, parsed.stream) == ("claude-ish", 64, True)
    assert parsed.prompt == "<|system|>Be brief.\n<|user|>Hi\n<|assistant|>Hello\n"
    count = parse_body(
        "/v1/messages/count_tokens", b'{"model":"m","system":"S","messages":[{"role":"user","content":"x"}]}'
    )
    assert count.prompt == "<|system|>S\n<|user|>x\n" and count.max_tokens is None
    with pytest.raises(BadRequestError, match="'messages' must be a non-empty list"):
        parse_body("/v1/messages", b'{"model":"m"}')
    with pytest.raises(BadRequestError, match="system"):
        parse_body("/v1/messages", b'{"model":"m","system":5,"messages":[{"role":"user","content":"x"}]}')


async def test_messages_and_render_are_routed_through_the_proxy(tmp_path: Path) -> None:
    async def echo(request: web.Request) -> web.StreamResponse:
        data = await request.json()
        if request.path.startswith("/v1/messages"):
            return web.json_response(
                {
                    "type": "message",
                    "model": data["model"],
                    "content": [],
                    "usage": {"input_tokens": 3, "output_tokens": 2},
                }
            )
        return web.json_response({"model": data["model"], "path": request.path})

    server = FakeServer(handler=echo)
    await server.start()
    gw = await start_gateway(tmp_path, [server])
    try:
        async with aiohttp.ClientSession() as s:
            messages = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
            for path in ("/v1/messages", "/v1/messages/count_tokens", "/v1/completions/render"):
                payload = messages if "messages" in path else {"model": MODEL, "prompt": "hi"}
                async with s.post(url(gw, path), json=payload) as r:
                    assert r.status == 200, (path, await r.text())
                    assert (await r.json())["model"] == MODEL
        assert [json.loads(b)["model"] for _, b in server.seen] == [MODEL] * 3
    finally:
        await gw.stop()
        await server.stop()


def test_parser_sections_accept_the_parsers_infergate_runs() -> None:
    from infergate.config.picker import parse_picker_config
    from infergate.errors import ConfigError
    from infergate.scheduling.engine.scheduler import build_scheduler

    head = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
    ok = parse_picker_config(
        head
        + "plugins: [{type: openai-parser}, {type: anthropic-parser}, {type: queue-scorer}]\n"
        + "requestHandler: {parsers: [{pluginRef: openai-parser}, {pluginRef: anthropic-parser}]}\n"
    )
    build_scheduler(ok)
    with pytest.raises(ConfigError, match=r"plugins\[passthrough-parser\].parameters.paths: required"):
        parse_picker_config(head + "plugins: [{type: passthrough-parser}, {type: queue-scorer}]\n")


HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
PASSTHROUGH = (
    HEAD
    + "plugins: [{type: openai-parser}, {type: passthrough-parser, parameters: {paths: [/v1/rerank]}},"
    + " {type: queue-scorer}]\n"
    + "requestHandler: {parsers: [{pluginRef: openai-parser}, {pluginRef: passthrough-parser}]}\n"
)


def test_passthrough_paths_come_from_the_config_and_are_checked() -> None:
    from infergate.config.picker import parse_picker_config
    from infergate.config.picker_sections import passthrough_paths
    from infergate.errors import ConfigError

    assert passthrough_paths(parse_picker_config(PASSTHROUGH)) == ("/v1/rerank",)
    assert passthrough_paths(parse_picker_config(HEAD + "plugins: [{type: queue-scorer}]\n")) == ()
    for text, error in (
        (
            "plugins: [{type: passthrough-parser, parameters: {paths: [/v1/rerank]}},"
            " {type: openai-parser}]\n"
            "requestHandler: {parsers: [{pluginRef: openai-parser}]}\n",
            "a passthrough-parser that requestHandler.parsers does not list would forward nothing",
        ),
        (
            "plugins: [{type: passthrough-parser, parameters: {paths: [/v1/models]}}]\n",
            "answered by the gateway itself",
        ),
        ("plugins: [{type: passthrough-parser, parameters: {paths: [rerank]}}]\n", "must start with '/'"),
        ("plugins: [{type: passthrough-parser, parameters: {paths: []}}]\n", "paths"),
    ):
        with pytest.raises(ConfigError, match=error):
            parse_picker_config(HEAD + text)


def test_passthrough_body_is_not_read_and_claimed_paths_stay_parsed() -> None:
    from infergate.requestcontrol.access import PathNotFoundError, Route, classify_request

    raw = b"\x00 not json at all"
    parsed = parse_body("/v1/rerank?x=1", raw, passthrough=("/v1/rerank",))
    assert (parsed.api, parsed.model, parsed.prompt) == (ApiKind.PASSTHROUGH, "", "")
    # a path a built-in parser claims is parsed even when listed
    claimed = parse_body("/v1/completions", b'{"model":"m","prompt":"p"}', passthrough=("/completions",))
    assert claimed.api is ApiKind.COMPLETIONS
    assert classify_request("POST", "/v1/rerank", ("/v1/rerank",)) is Route.INFERENCE
    with pytest.raises(PathNotFoundError):
        classify_request("POST", "/v1/rerank")  # not configured: still outside the request policy
    with pytest.raises(PathNotFoundError):
        classify_request("POST", "/v1/load_lora_adapter", ("/v1/rerank",))


async def test_passthrough_path_is_forwarded_unchanged_through_the_proxy(tmp_path: Path) -> None:
    """Real gateway and model server: a configured path is scheduled and forwarded byte for byte
    (no JSON, no model needed); an unconfigured one stays a 404."""
    from infergate.config.picker import parse_picker_config

    async def rerank(request: web.Request) -> web.StreamResponse:
        return web.json_response({"path": request.path, "bytes": len(await request.read())})

    server = FakeServer(handler=rerank)
    await server.start()
    gw = await start_gateway(tmp_path, [server], picker=parse_picker_config(PASSTHROUGH))
    try:
        payload = b"query=anything;documents=[not json]"
        async with aiohttp.ClientSession() as s:
            async with s.post(url(gw, "/v1/rerank"), data=payload) as r:
                assert r.status == 200, await r.text()
                assert await r.json() == {"path": "/v1/rerank", "bytes": len(payload)}
            async with s.post(url(gw, "/v1/score"), data=payload) as r:
                assert r.status == 404
        assert [b for _, b in server.seen] == [payload]
    finally:
        await gw.stop()
        await server.stop()


async def test_passthrough_path_is_routed_by_ext_proc_without_reading_the_body() -> None:
    """Behind Envoy: the configured path gets a destination (the less loaded endpoint) although
    its body is not JSON; an unconfigured path is answered 404 before any body is read."""
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

    from infergate.dataplanes.extproc.server import serve_extproc
    from infergate.datastore.store import Datastore
    from infergate.flowcontrol.controller import FlowController
    from infergate.flowcontrol.saturation import SaturationDetector
    from infergate.requestcontrol.director import Director
    from tests.integration.test_extproc import (
        A,
        B,
        FakeClock,
        _add,
        _scheduler,
        body_msg,
        expected_route,
        headers_msg,
        read,
    )

    clock = FakeClock()
    ds = Datastore(clock)
    _add(ds, clock, A, queue=0, kv=0.1)
    _add(ds, clock, B, queue=8, kv=0.7)
    flow = FlowController(ds, detector=SaturationDetector(), clock=clock)
    director = Director(datastore=ds, scheduler=_scheduler(clock), flow=flow, clock=clock)
    director.configure_parsers(passthrough=("/v1/rerank",))
    server = serve_extproc(director, "127.0.0.1", 0, endpoints=ds)
    await server.start()
    channel = grpc.aio.insecure_channel(server.address)
    try:
        stub = pb_grpc.ExternalProcessorStub(channel)
        body = b"\x00not json"
        call = stub.Process()
        await call.write(headers_msg(path="/v1/rerank"))
        await call.write(body_msg(body, eos=True))
        head, _ = await read(call, 2)
        assert head == expected_route(A, body)
        call.cancel()
        call = stub.Process()
        await call.write(headers_msg(path="/v1/score"))
        (reply,) = await read(call, 1)
        assert reply.immediate_response.status.code == 404
        call.cancel()
    finally:
        await channel.close()
        await server.stop(0)
