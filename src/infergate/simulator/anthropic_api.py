"""vLLM's Anthropic Messages endpoints: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

vLLM 0.33 serves the Anthropic API by translating each request into a chat completion
(``entrypoints/anthropic/serving.py``): the ``system`` field and the messages' text blocks become
chat messages, ``max_tokens`` (required) the output budget, ``stop_sequences`` the stop strings; a
streamed answer is the chat stream with continuous usage, re-cut into Anthropic's events
(``message_start`` with the prompt's usage, one text block of ``text_delta`` events,
``content_block_stop``, ``message_delta`` with the stop reason and the whole usage,
``message_stop``). Errors found once the request is read (an unknown model, a prompt over the
context) come in Anthropic's shape ``{"type": "error", "error": {type, message}}``; a body that is
not a valid request is refused before that, in vLLM's OpenAI shape, as its request validation
does. The simulator reproduces the text subset: images, tools and thinking are 400s naming the
block, which vLLM would run.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from infergate.simulator import openai_api as oa
from infergate.simulator.generation import merged_events
from infergate.tokenization.requests import messages_as_chat

if TYPE_CHECKING:
    from infergate.simulator.server import SimServer

_compact = functools.partial(json.dumps, separators=(",", ":"))  # as FastAPI writes JSON

__all__ = ["count_tokens", "messages", "to_chat_body"]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}
# Anthropic's stop reason for each finish reason of the chat layer (a matched stop string is
# reported as stop_sequence, see _stop)
_STOP = {"length": "max_tokens", "stop": "end_turn"}


def to_chat_body(body: Mapping[str, Any], *, count_only: bool = False) -> dict[str, Any]:
    """The chat completion request vLLM runs for an Anthropic one; 400 for an invalid body."""
    for field in ("model", "messages") + (() if count_only else ("max_tokens",)):
        if field not in body:
            raise oa.ApiError(400, f"{field}: Field required", param=field)
    try:
        chat = messages_as_chat(body)
    except ValueError as exc:  # images, tools, thinking: vLLM runs them, the simulator does not
        raise oa.ApiError(400, f"{exc} (the simulator runs text only)") from None
    out: dict[str, Any] = {"model": body["model"], "messages": chat}
    if count_only:
        return out
    out["max_tokens"] = body["max_tokens"]
    for src, dst in (("stop_sequences", "stop"), ("temperature", "temperature"), ("top_p", "top_p")):
        if body.get(src) is not None:
            out[dst] = body[src]
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    return out


def _usage(prompt: int, output: int, cached: int | None) -> dict[str, int]:
    """Anthropic counts cached prompt tokens apart: input = prompt − cache reads."""
    out = {"input_tokens": max(0, prompt - (cached or 0)), "output_tokens": output}
    if cached is not None:
        out["cache_read_input_tokens"] = cached
    return out


def _stop(finish_reason: str | None, stop_reason: str | None) -> tuple[str | None, str | None]:
    if finish_reason == "stop" and isinstance(stop_reason, str):
        return "stop_sequence", stop_reason
    return _STOP.get(finish_reason or "stop"), None


def _error(exc: oa.ApiError) -> web.Response:
    body = {
        "type": "error",
        "error": {"type": _ERROR_TYPES.get(exc.status, "api_error"), "message": exc.message},
    }
    return web.json_response(body, status=exc.status, dumps=_compact)


def _event(name: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def messages(server: SimServer, request: web.Request) -> web.StreamResponse:
    chat = to_chat_body(await server._body(request))  # an invalid body: vLLM's validation error
    try:
        params, model, rid, specs = server.chat_run(request, chat)
    except oa.ApiError as exc:
        return _error(exc)
    rid = "msg_" + rid.removeprefix("chatcmpl-")
    prompt = len(specs[0].request.prompt_token_ids)
    details = server.args.prompt_tokens_details

    def make(spec: Any) -> Any:
        return server.choice_events(spec, streaming=params.stream)

    if not params.stream:
        texts: list[str] = []
        last = None
        async for d in merged_events(make, specs):
            texts.append(d.text)
            last = d
        assert last is not None
        stop_reason, stop_sequence = _stop(last.finish_reason, last.stop_reason)
        out: dict[str, Any] = {
            "id": rid,
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": "".join(texts)}],
            "model": model,
            "stop_reason": stop_reason,
            "usage": _usage(prompt, last.num_tokens, last.cached_tokens if details else None),
        }
        if stop_sequence is not None:
            out["stop_sequence"] = stop_sequence
        return web.json_response(out, dumps=_compact)

    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await resp.prepare(request)
    started = block = False
    last = None
    async for d in merged_events(make, specs):
        cached = d.cached_tokens if details else None
        if not started:  # the first engine output, as the chat stream's role chunk
            started = True
            message: dict[str, Any] = {
                "id": rid,
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": model,
                "stop_reason": None,
                "stop_sequence": None,
                "usage": _usage(prompt, 0, cached),
            }
            await resp.write(_event("message_start", {"type": "message_start", "message": message}))
        if d.text:
            if not block:
                block = True
                start = {
                    "type": "content_block_start",
                    "content_block": {"type": "text", "text": ""},
                    "index": 0,
                }
                await resp.write(_event("content_block_start", start))
            delta = {
                "type": "content_block_delta",
                "delta": {"type": "text_delta", "text": d.text},
                "index": 0,
            }
            await resp.write(_event("content_block_delta", delta))
        last = d
    assert last is not None
    if block:
        await resp.write(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    stop_reason, stop_sequence = _stop(last.finish_reason, last.stop_reason)
    final = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
        "usage": _usage(prompt, last.num_tokens, last.cached_tokens if details else None),
    }
    await resp.write(_event("message_delta", final))
    await resp.write(_event("message_stop", {"type": "message_stop"}))
    await resp.write_eof()
    return resp


async def count_tokens(server: SimServer, request: web.Request) -> web.Response:
    chat = to_chat_body(await server._body(request), count_only=True)
    chat["max_tokens"] = 1  # counting generates nothing; the budget only has to pass the checks
    try:
        _, _, _, specs = server.chat_run(request, chat)
    except oa.ApiError as exc:
        return _error(exc)
    n = len(specs[0].request.prompt_token_ids)
    return web.json_response(
        {"input_tokens": n, "context_management": {"original_input_tokens": n}}, dumps=_compact
    )
