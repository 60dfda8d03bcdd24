"""vLLM's OpenAI-compatible wire format: request validation and response/chunk shapes.

Pure functions only (no I/O, no engine): the server calls them, tests can call them directly. Shapes
and messages follow vLLM 0.33 (see docs/simulator.md); validation is lax in the same places pydantic is
(numeric strings such as ``"0.7"`` are numbers), and every failure is an :class:`ApiError` rendered in
vLLM's error envelope, so a bad request is never a 500.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["completion", "chat"]

_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}


class ApiError(Exception):
    """An HTTP error in vLLM's JSON shape ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, *, type_: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_ or _ERROR_TYPES.get(status, "BadRequestError")
        self.param = param

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}
        }


def validation_error(param: str, msg: str, value: object = None) -> ApiError:
    """A 400 worded like vLLM's RequestValidationError handler (pydantic's message, field path)."""
    shown = f", input: {value!r}" if value is not None else ""
    return ApiError(400, f"1 validation error: {param}: {msg}{shown}", param=param)


# ----------------------------------------------------------------------------------------------------
# lax scalar coercion (pydantic v2 "lax mode" semantics, which vLLM's request models use)


def as_float(body: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            raise validation_error(
                key, "Input should be a valid number, unable to parse string as a number", value
            ) from None
    else:
        raise validation_error(key, "Input should be a valid number", value)
    if math.isnan(result):
        raise validation_error(key, "Input should be a finite number", value)
    return result


def as_int(
    body: Mapping[str, Any], key: str, default: int | None, *, minimum: int | None = None
) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    result: int
    if isinstance(value, bool):
        result = int(value)
    elif isinstance(value, int):
        result = value
    elif isinstance(value, float) and value.is_integer():
        result = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        result = int(value.strip())
    else:
        raise validation_error(key, "Input should be a valid integer", value)
    if minimum is not None and result < minimum:
        raise ApiError(400, f"{key} must be at least {minimum}, got {result}.", param=key)
    return result


def as_bool(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise validation_error(key, "Input should be a valid boolean", value)


# ----------------------------------------------------------------------------------------------------
# requests


@dataclass
class GenerationParams:
    """Validated sampling parameters shared by both endpoints (prompt handled separately)."""

    kind: Kind
    model: str | None
    max_tokens: int | None
    max_tokens_param: str  # the field max_tokens came from (chat: max_completion_tokens wins)
    min_tokens: int
    n: int
    stream: bool
    include_usage: bool
    continuous_usage: bool
    stop: tuple[str, ...]
    ignore_eos: bool
    temperature: float | None
    echo: bool = False
    request_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def parse_params(body: Mapping[str, Any], kind: Kind) -> GenerationParams:
    """Validate the fields every generation request shares; raise :class:`ApiError` (400)."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise validation_error("model", "Input should be a valid string", model)
    max_tokens = as_int(body, "max_tokens", None)
    max_tokens_param = "max_tokens"
    if kind == "chat":
        mct = as_int(body, "max_completion_tokens", None)
        if mct is not None:
            max_tokens, max_tokens_param = mct, "max_completion_tokens"
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(400, f"max_tokens must be at least 1, got {max_tokens}.", param="max_tokens")
    min_tokens = as_int(body, "min_tokens", 0, minimum=0) or 0
    n_value = as_int(body, "n", 1)
    n = 1 if n_value is None else n_value  # bounds are checked later, in vLLM's order (validation.py)
    temperature = as_float(body, "temperature", None)
    as_float(body, "top_p", None)
    stream = as_bool(body, "stream", False)
    stream_options = body.get("stream_options")
    include_usage = continuous = False
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise validation_error("stream_options", "Input should be a valid dictionary", stream_options)
        if not stream:
            raise ApiError(
                400, "Stream options can only be defined when `stream=True`.", param="stream_options"
            )
        include_usage = as_bool(stream_options, "include_usage", False)
        continuous = as_bool(stream_options, "continuous_usage_stats", False)
    stop_raw = body.get("stop")
    stop: tuple[str, ...]
    if stop_raw is None:
        stop = ()
    elif isinstance(stop_raw, str):
        stop = (stop_raw,) if stop_raw else ()
    elif isinstance(stop_raw, list) and all(isinstance(s, str) for s in stop_raw):
        stop = tuple(s for s in stop_raw if s)
    else:
        raise validation_error("stop", "Input should be a valid string or list of strings", stop_raw)
    ignore_eos = as_bool(body, "ignore_eos", False)
    echo = as_bool(body, "echo", False) if kind == "completion" else False
    rid = body.get("request_id")
    return GenerationParams(
        kind=kind,
        model=model,
        max_tokens=max_tokens,
        max_tokens_param=max_tokens_param,
        min_tokens=min_tokens,
        n=n,
        stream=stream,
        include_usage=include_usage,
        continuous_usage=continuous,
        stop=stop,
        ignore_eos=ignore_eos,
        temperature=temperature,
        echo=echo,
        request_id=rid if isinstance(rid, str) and rid else None,
    )


PromptInput = str | list[int]


def completion_prompts(body: Mapping[str, Any]) -> list[PromptInput]:
    """The ``prompt`` field of /v1/completions: a string, token ids, or a batch of either."""
    prompt = body.get("prompt")
    if prompt is None or prompt == "" or prompt == []:
        raise ApiError(400, "Either prompt or prompt_embeds must be provided and non-empty.", param="prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list):
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [list(prompt)]
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(
            isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
            for p in prompt
        ):
            return [list(p) for p in prompt]
    raise validation_error(
        "prompt", "Input should be a string, a list of strings, or a list of token ids", "<prompt>"
    )


def chat_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Validate ``messages`` and flatten content parts to text (the simulator models text only)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise validation_error("messages", "Field required (a non-empty list of messages)")
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise validation_error(f"messages.{i}", "Each message needs a string 'role'")
        content = msg.get("content")
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        elif isinstance(content, list):
            parts: list[str] = []
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    parts.append(part["text"])
                elif isinstance(part, str):
                    parts.append(part)
            text = "\n".join(parts)
        else:
            raise validation_error(f"messages.{i}.content", "Input should be a string or a list of parts")
        out.append({"role": msg["role"], "content": text})
    return out


# ----------------------------------------------------------------------------------------------------
# responses


@dataclass
class ChoiceResult:
    """One finished choice of a non-streaming response."""

    index: int
    text: str
    finish_reason: str | None
    stop_reason: str | None
    num_tokens: int


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict[str, Any]:
    details = None if cached_tokens is None else {"cached_tokens": cached_tokens}
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": details,
    }


def completion_response(
    rid: str, created: int, model: str, choices: Sequence[ChoiceResult], usage_: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": c.index,
                "text": c.text,
                "logprobs": None,
                "finish_reason": c.finish_reason,
                "stop_reason": c.stop_reason,
                "prompt_logprobs": None,
            }
            for c in choices
        ],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": usage_,
        "kv_transfer_params": None,
    }


def chat_response(
    rid: str, created: int, model: str, choices: Sequence[ChoiceResult], usage_: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": c.index,
                "message": {
                    "role": "assistant",
                    "content": c.text,
                    "refusal": None,
                    "annotations": None,
                    "audio": None,
                    "function_call": None,
                    "tool_calls": [],
                    "reasoning_content": None,
                },
                "logprobs": None,
                "finish_reason": c.finish_reason,
                "stop_reason": c.stop_reason,
            }
            for c in choices
        ],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": usage_,
        "prompt_logprobs": None,
        "kv_transfer_params": None,
    }


def completion_chunk(
    rid: str,
    created: int,
    model: str,
    index: int,
    text: str,
    finish_reason: str | None,
    stop_reason: str | None,
    usage_: dict[str, Any] | None = None,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": index,
                "text": text,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": stop_reason,
            }
        ],
    }
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk


def chat_chunk(
    rid: str,
    created: int,
    model: str,
    index: int,
    delta: dict[str, Any],
    finish_reason: str | None,
    stop_reason: str | None = None,
    usage_: dict[str, Any] | None = None,
) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": index,
        "delta": delta,
        "logprobs": None,
        "finish_reason": finish_reason,
    }
    if finish_reason is not None:
        choice["stop_reason"] = stop_reason
    chunk: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [choice],
    }
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk


def usage_chunk(kind: Kind, rid: str, created: int, model: str, usage_: dict[str, Any]) -> dict[str, Any]:
    """The final ``stream_options.include_usage`` chunk: empty ``choices``."""
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": usage_}


def model_card(
    name: str, created: int, *, root: str, parent: str | None, max_model_len: int | None, perm_id: str
) -> dict[str, Any]:
    """One entry of GET /v1/models (LoRA adapters: ``parent`` = base model, ``max_model_len`` null)."""
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": root,
        "parent": parent,
        "max_model_len": max_model_len,
        "permission": [
            {
                "id": perm_id,
                "object": "model_permission",
                "created": created,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
    }


def unknown_model_message(model: str, valid: Sequence[str]) -> str:
    return f"The model `{model}` does not exist. Valid aliases: {', '.join(valid)}."


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def delta_chunk_template(kind: Kind, rid: str, created: int, model: str, index: int) -> tuple[bytes, bytes]:
    """(prefix, suffix) such that ``prefix + json(text) + suffix`` is the SSE payload of a content
    chunk without finish reason or usage, byte-identical to ``json.dumps`` of :func:`chat_chunk` /
    :func:`completion_chunk`. Serialising only the text is the hot path of streaming."""
    if kind == "chat":
        marker = chat_chunk(rid, created, model, index, {"content": "\x00"}, None)
    else:
        marker = completion_chunk(rid, created, model, index, "\x00", None, None)
    text = _dumps(marker)
    prefix, _, suffix = text.partition(_dumps("\x00"))
    return b"data: " + prefix.encode(), suffix.encode() + b"\n\n"
