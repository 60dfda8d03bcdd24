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
    from infergate.scheduling.scheduler import build_scheduler

    head = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
    ok = parse_picker_config(
        head
        + "plugins: [{type: openai-parser}, {type: anthropic-parser}, {type: queue-scorer}]\n"
        + "requestHandler: {parsers: [{pluginRef: openai-parser}, {pluginRef: anthropic-parser}]}\n"
    )
    build_scheduler(ok)
    refused = parse_picker_config(head + "plugins: [{type: passthrough-parser}, {type: queue-scorer}]\n")
    with pytest.raises(ConfigError, match="passthrough-parser"):
        build_scheduler(refused)
