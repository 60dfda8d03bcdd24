"""Parse OpenAI (and Anthropic Messages) request bodies into what routing needs: model, prompt
text, stream flag, max_tokens.

The body is decoded once; the original bytes are kept and forwarded untouched unless the model has
to be rewritten (GIE §2.6), in which case only then is it re-serialised. Every malformed input ends in
a :class:`~infergate.errors.BadRequestError` naming the offending parameter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from infergate.errors import BadRequestError
from infergate.types import ApiKind, typed_frozen

__all__ = [
    "ParsedBody",
    "TokenIds",
    "api_kind_for_path",
    "context_exceeded",
    "is_passthrough",
    "parse_body",
    "rewrite_model",
]

# A ``\uD800``-``\uDFFF`` escape: the only way a lone surrogate (not encodable as UTF-8) gets in.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

# Upper bound for token counts a client may ask for; larger values are certainly a mistake.
MAX_TOKENS_CEILING = 10_000_000


@typed_frozen
class TokenIds:
    """A prompt given as token ids, summed up so limits can judge it without keeping the lists.

    A model server checks ids against its vocabulary and the count against its context only after
    allocating per-token work; the gateway bounds both first (see ``RequestLimits``).
    """

    longest: int
    """Ids in the longest prompt of the request (a batch carries several)."""
    lowest: int
    highest: int


@typed_frozen
class ParsedBody:
    """What the director reads from a request body. ``data`` is the decoded JSON object."""

    api: ApiKind
    model: str
    prompt: str
    stream: bool
    max_tokens: int | None
    include_usage: bool
    data: dict[str, Any]
    n: int | None = None
    """Completions per prompt (``n``); None when the body does not say."""
    token_ids: TokenIds | None = None
    """Set when the prompt (or embeddings input) is token ids."""


def api_kind_for_path(path: str) -> ApiKind:
    """API type by path suffix, as the reference parsers do (query string ignored).

    vLLM's ``…/render`` endpoints (the prompt as the server would tokenize it, no generation)
    take the body of the API they extend. ``/v1/messages`` and ``/v1/messages/count_tokens`` are
    the Anthropic Messages API (llm-d-router's ``anthropic-parser``).
    """
    p = path.split("?", 1)[0].rstrip("/").removesuffix("/render")
    if p.endswith(("/v1/messages", "/v1/messages/count_tokens")):
        return ApiKind.MESSAGES
    if p.endswith("/chat/completions"):
        return ApiKind.CHAT
    if p.endswith("/completions"):
        return ApiKind.COMPLETIONS
    if p.endswith("/embeddings"):
        return ApiKind.EMBEDDINGS
    return ApiKind.OTHER


def _claimed(path: str) -> bool:
    """A path the OpenAI or Anthropic parser handles (always on; they win over passthrough)."""
    return api_kind_for_path(path) is not ApiKind.OTHER or path.endswith("/responses")


def is_passthrough(path: str, paths: Sequence[str]) -> bool:
    """``path`` (query ignored) ends with one of the ``passthrough-parser``'s configured ``paths``
    and no built-in parser claims it."""
    if not paths:
        return False
    p = path.split("?", 1)[0].rstrip("/")
    return not _claimed(p) and any(p.endswith(s.rstrip("/")) for s in paths)


_PASSTHROUGH_BODY: dict[str, Any] = {}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON number {name}")


_JSON = json.JSONDecoder(parse_constant=_reject_constant)
"""``json.loads`` with a keyword builds a new decoder per call; this one is built once."""


def _decode(body: bytes) -> dict[str, Any]:
    if not body or not body.strip():
        raise BadRequestError("request body is empty; expected a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequestError(f"request body is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        data = _JSON.decode(text)
    except RecursionError:
        raise BadRequestError("request body is nested too deeply") from None
    except ValueError as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequestError(f"request body must be a JSON object, not {type(data).__name__}")
    if _SURROGATE_ESCAPE.search(text) is not None:
        _reject_lone_surrogates(data)
    return data


def _reject_lone_surrogates(data: dict[str, Any]) -> None:
    """400 for a ``\\uD800``-style escape not part of a pair: such a string is not Unicode text,
    so it could neither be hashed for prefix affinity nor re-encoded when the model is rewritten.
    Only bodies containing such an escape pay for this check (escaped emoji pairs pass)."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequestError(
            "request body contains an unpaired UTF-16 surrogate escape (\\uD800-\\uDFFF)"
        ) from None


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_id_list(value: object) -> bool:
    """A non-empty list of token ids. Type checks at C speed: a poison prompt carries millions of
    ids, and a per-item Python call would hold the event loop for seconds (``bool`` is excluded,
    ``type(True)`` is not ``int``)."""
    return isinstance(value, list) and bool(value) and set(map(type, value)) == {int}


def _prompt_text(prompt: object) -> str:
    """Completions ``prompt``: a string, strings, token ids, or lists of token ids."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return "\n".join(prompt)
        if _is_id_list(prompt):
            return " ".join(map(str, prompt))
        if all(_is_id_list(p) for p in prompt):
            return "\n".join(" ".join(map(str, p)) for p in prompt)
    raise BadRequestError(
        "'prompt' must be a string, a list of strings, a list of token ids or a list of token-id lists",
        param="prompt",
    )


def _token_ids(value: object) -> TokenIds | None:
    """Summary of a token-id prompt (a list of ids or a list of id lists); None for text."""
    if not isinstance(value, list) or not value:
        return None
    if _is_id_list(value):
        return TokenIds(longest=len(value), lowest=min(value), highest=max(value))
    if all(_is_id_list(p) for p in value):
        return TokenIds(
            longest=max(len(p) for p in value),
            lowest=min(min(p) for p in value),
            highest=max(max(p) for p in value),
        )
    return None


def _choices(data: dict[str, Any]) -> int | None:
    """``n``: how many completions to generate per prompt (at least 1, as the model servers)."""
    value = data.get("n")
    if value is None:
        return None
    if not _is_int(value) or value < 1:
        raise BadRequestError("'n' must be an integer of at least 1", param="n")
    return int(value)


def _content_text(content: object, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise BadRequestError(
                    f"messages[{index}].content[{j}] must be an object with a string 'type'",
                    param=f"messages[{index}].content",
                )
            text = part.get("text")
            if isinstance(text, str):
                parts.append(text)
            elif part["type"] == "text":
                raise BadRequestError(
                    f"messages[{index}].content[{j}].text must be a string",
                    param=f"messages[{index}].content",
                )
        return "".join(parts)
    raise BadRequestError(
        f"messages[{index}].content must be a string, a list of parts or null",
        param=f"messages[{index}].content",
    )


def _chat_text(messages: object, max_messages: int | None) -> str:
    """Chat messages flattened in order (role and text), the text prefix affinity hashes."""
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("'messages' must be a non-empty list", param="messages")
    if max_messages is not None and len(messages) > max_messages:
        raise BadRequestError(
            f"too many messages: {len(messages)} > {max_messages}", param="messages", code="too_many_messages"
        )
    out: list[str] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise BadRequestError(f"messages[{i}] must be an object", param="messages")
        role = msg.get("role")
        if not isinstance(role, str) or not role:
            raise BadRequestError(
                f"messages[{i}].role must be a non-empty string", param=f"messages[{i}].role"
            )
        out.append(f"<|{role}|>{_content_text(msg.get('content'), i)}\n")
    return "".join(out)


def _system_text(system: object) -> str:
    """Anthropic ``system``: a string or a list of text blocks."""
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        parts = []
        for j, block in enumerate(system):
            if not isinstance(block, dict) or not isinstance(block.get("text"), str):
                raise BadRequestError(
                    f"system[{j}] must be a text block with a string 'text'", param="system"
                )
            parts.append(block["text"])
        return "".join(parts)
    raise BadRequestError("'system' must be a string or a list of text blocks", param="system")


def _embedding_text(inp: object) -> str:
    if isinstance(inp, str):
        return inp
    try:
        return _prompt_text(inp)
    except BadRequestError:
        raise BadRequestError(
            "'input' must be a string, a list of strings or token ids", param="input"
        ) from None


def _max_tokens(data: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = data.get(key)
        if value is None:
            continue
        if not _is_int(value) or value < 0 or value > MAX_TOKENS_CEILING:
            raise BadRequestError(f"'{key}' must be an integer between 0 and {MAX_TOKENS_CEILING}", param=key)
        return int(value)
    return None


def context_exceeded(longest: int, context: int, param: str) -> BadRequestError:
    """The 400 for a token-id prompt longer than the model's context."""
    return BadRequestError(
        f"the prompt has {longest} tokens, more than the model's context of {context} tokens",
        param=param,
        code="context_length_exceeded",
    )


def _ids_within(value: object, max_ids: int | None, param: str) -> TokenIds | None:
    """The token-id summary, refusing a prompt over ``max_ids`` before its text is built (joining
    millions of ids is the costliest step of parsing such a body)."""
    ids = _token_ids(value)
    if ids is not None and max_ids is not None and ids.longest > max_ids:
        raise context_exceeded(ids.longest, max_ids, param)
    return ids


def parse_body(
    path: str,
    body: bytes,
    *,
    max_messages: int | None = None,
    max_prompt_ids: int | None = None,
    passthrough: Sequence[str] = (),
) -> ParsedBody:
    """Decode and validate one OpenAI request body for ``path``.

    Raises BadRequestError for empty, non-UTF-8, non-JSON or non-object bodies, a missing or
    non-string ``model``, a missing or malformed ``prompt``/``messages``/``input``, a non-boolean
    ``stream``, an out-of-range ``max_tokens``, an ``n`` below 1 and a token-id prompt longer than
    ``max_prompt_ids`` (checked before the prompt text is built). How large ``n`` and a token-id
    prompt may be is a policy decision (``RequestLimits``), not a parsing one. A path of the
    ``passthrough`` list (the ``passthrough-parser``'s) is not read at all, as the reference's
    parser: no model, no prompt, so it is scheduled on load alone.
    """
    if is_passthrough(path, passthrough):
        return ParsedBody(
            api=ApiKind.PASSTHROUGH,
            model="",
            prompt="",
            stream=False,
            max_tokens=None,
            include_usage=False,
            data=_PASSTHROUGH_BODY,
        )
    api = api_kind_for_path(path)
    data = _decode(body)
    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequestError("'model' must be a non-empty string", param="model")
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequestError("'stream' must be a boolean", param="stream")
    include_usage = False
    opts = data.get("stream_options")
    if isinstance(opts, dict):
        include_usage = opts.get("include_usage") is True
    elif opts is not None:
        raise BadRequestError("'stream_options' must be an object", param="stream_options")
    token_ids: TokenIds | None = None
    if api is ApiKind.COMPLETIONS:
        if "prompt" not in data:
            raise BadRequestError("'prompt' is required", param="prompt")
        token_ids = _ids_within(data["prompt"], max_prompt_ids, "prompt")
        prompt = _prompt_text(data["prompt"])
    elif api is ApiKind.CHAT:
        prompt = _chat_text(data.get("messages"), max_messages)
    elif api is ApiKind.MESSAGES:
        system = _system_text(data.get("system"))
        prompt = (f"<|system|>{system}\n" if system else "") + _chat_text(data.get("messages"), max_messages)
    elif api is ApiKind.EMBEDDINGS:
        if "input" not in data:
            raise BadRequestError("'input' is required", param="input")
        token_ids = _ids_within(data["input"], max_prompt_ids, "input")
        prompt = _embedding_text(data["input"])
    else:
        inp = data.get("input")
        prompt = inp if isinstance(inp, str) else ""
    return ParsedBody(
        api=api,
        model=model,
        prompt=prompt,
        stream=stream,
        max_tokens=_max_tokens(data),
        include_usage=include_usage,
        data=data,
        n=_choices(data),
        token_ids=token_ids,
    )


def rewrite_model(parsed: ParsedBody, target_model: str) -> bytes:
    """The body re-serialised with ``model`` set to ``target_model`` (key order preserved)."""
    data = dict(parsed.data)
    data["model"] = target_model
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
