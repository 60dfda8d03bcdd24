"""Read token usage from responses and put the client's model name back (GIE §2.6, §2.7).

Both jobs see the response as the proxy relays it: arbitrary chunks. The SSE usage parser keeps
only the unfinished last line between chunks (bounded), so an event split across chunks is still
read, unlike the reference. The model-name rewriter holds back the bytes after the last newline so
a ``"model":"..."`` split across two chunks is still replaced; SSE events end in newlines, so this
never delays a whole event.
"""

from __future__ import annotations

import json
from typing import Any

from infergate.types import ApiKind, InferenceRequest, typed_frozen

__all__ = [
    "TPOT_REPORT_TOKENS",
    "ModelNameRewriter",
    "SSEUsageParser",
    "Usage",
    "events_before_tokens",
    "one_answer",
    "usage_from_json",
    "usage_from_object",
]

# A line longer than this is not buffered for usage parsing (usage chunks are small).
_MAX_PENDING = 1 << 20


@typed_frozen
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def usage_from_object(obj: object) -> Usage | None:
    """Usage from a decoded response or chunk: OpenAI, chat, Responses API and Anthropic Messages
    field names (a streamed message's ``message_start`` holds its usage under ``message``)."""
    if not isinstance(obj, dict):
        return None
    usage: Any = obj.get("usage")
    if usage is None:
        for holder in ("response", "message"):
            if isinstance(obj.get(holder), dict):
                usage = obj[holder].get("usage")
                break
    if not isinstance(usage, dict):
        return None
    prompt = _int(usage.get("prompt_tokens"))
    if prompt is None:
        prompt = _int(usage.get("input_tokens"))
    completion = _int(usage.get("completion_tokens"))
    if completion is None:
        completion = _int(usage.get("output_tokens"))
    cached = _int(usage.get("cache_read_input_tokens"))  # Anthropic's name
    for key in ("prompt_tokens_details", "prompt_token_details", "input_tokens_details"):
        details = usage.get(key)
        if cached is None and isinstance(details, dict):
            cached = _int(details.get("cached_tokens"))
    if prompt is None and completion is None:
        return None
    return Usage(prompt, completion, cached)


_DECODER = json.JSONDecoder()


def _last_usage_value(body: bytes, at: int) -> Usage | None:
    """The usage object after the last ``"usage"`` key, decoded alone.

    Servers put ``usage`` last or nearly so, and an unescaped ``"usage"`` can only be a JSON
    string token (inside a string it would read ``\\"usage\\"``): decoding from there costs
    the same whatever the length of the generated text before it. None when that token is not
    a key followed by an object with token counts (the caller then decodes the whole body).
    """
    tail = body[at + 7 :].lstrip()
    if not tail.startswith(b":"):
        return None
    try:
        value, _ = _DECODER.raw_decode(tail[1:].lstrip().decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return usage_from_object({"usage": value}) if isinstance(value, dict) else None


def usage_from_json(body: bytes) -> Usage | None:
    """Usage from a whole non-streamed JSON response; None if absent or not JSON."""
    at = body.rfind(b'"usage"')
    if at < 0:
        return None
    found = _last_usage_value(body, at)
    if found is not None:
        return found
    try:
        return usage_from_object(json.loads(body))
    except (ValueError, RecursionError):
        return None


class SSEUsageParser:
    """Incremental ``text/event-stream`` reader that remembers the last usage object seen.

    It also counts the ``data:`` events other than ``[DONE]``: a model server streams one event per
    decoding step that produced text, so without usage (the client did not ask for it) the count
    still tells how many steps an answer took. A JSON payload cannot hold a raw newline, so
    ``data:`` at a line start is always an event, never generated text.
    """

    __slots__ = ("_pending", "events", "usage")

    def __init__(self) -> None:
        self._pending = b""
        self.usage: Usage | None = None
        self.events = 0

    def feed(self, chunk: bytes) -> None:
        data = self._pending + chunk if self._pending else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._pending = data if len(data) <= _MAX_PENDING else b""
            return
        self._pending = data[cut + 1 :]
        if len(self._pending) > _MAX_PENDING:
            self._pending = b""
        complete = data[:cut]
        events = complete.count(b"\ndata:") + complete.startswith(b"data:")
        if events and b"[DONE]" in complete:
            events -= complete.count(b"\ndata: [DONE]") + complete.startswith(b"data: [DONE]")
        self.events += events
        if b'"usage"' not in complete:
            return
        for line in complete.split(b"\n"):
            self._line(line)

    def close(self) -> None:
        if self._pending:
            line = self._pending.strip()
            if line.startswith(b"data:") and line[5:].strip() != b"[DONE]":
                self.events += 1
            self._line(self._pending)
            self._pending = b""

    def _line(self, line: bytes) -> None:
        line = line.strip()
        if not line.startswith(b"data:") or b'"usage"' not in line:
            return
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return
        try:
            found = usage_from_object(json.loads(payload))
        except (ValueError, RecursionError):
            return
        if found is None:
            return
        last = self.usage
        if last is not None and None in (found.prompt_tokens, found.completion_tokens, found.cached_tokens):
            # a later event may carry only part of it: an Anthropic message states its input
            # tokens in message_start and its output tokens in message_delta
            found = Usage(
                found.prompt_tokens if found.prompt_tokens is not None else last.prompt_tokens,
                found.completion_tokens if found.completion_tokens is not None else last.completion_tokens,
                found.cached_tokens if found.cached_tokens is not None else last.cached_tokens,
            )
        self.usage = found


TPOT_REPORT_TOKENS = 33
"""A streamed answer's time per token after the first is reported once it has this many tokens
(32 gaps), or at its end if shorter: the scheduler learns a replica's decode speed from the first
answers it streams instead of waiting for their ends, which for long answers come many requests
later (a cold gateway, a replica that just joined). Not much earlier: the first tokens after a
pick are decoded while the scheduler may still be sending that replica more prompts, and a short
window priced their prefill stalls as a slower GPU (17 tokens cost many-tenants prefix hits in
the twin; docs/benchmarks.md)."""


def one_answer(req: InferenceRequest) -> bool:
    """Whether the request asks for one answer of counted tokens: a chat or a completion with one
    choice and one prompt. Several choices (``n``) or a batch of prompts share one usage and one
    stream, so neither a token count nor a time per token belongs to one answer; other APIs
    count differently."""
    if req.api is not ApiKind.CHAT and req.api is not ApiKind.COMPLETIONS:
        return False
    body = req.body
    if body is not None:
        n = body.get("n")
        if n is not None and n != 1:
            return False
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            return False  # a batch of prompts
    return True


def events_before_tokens(req: InferenceRequest) -> int | None:
    """How many events a streamed answer sends before its first token, so that its events count
    its tokens: 1 for chat (the role), 0 for completions; None when they do not count them.

    vLLM sends one event per decoding step that produced text, each holding that step's token
    (several under speculative decoding, where the count is of steps, which is what the time per
    step measures). Several choices interleave their events, and other APIs add events of their
    own, so those are not counted (:func:`one_answer`).
    """
    if not one_answer(req):
        return None
    return 1 if req.api is ApiKind.CHAT else 0


class ModelNameRewriter:
    """Replace ``"model":"<target>"`` with ``"model":"<incoming>"`` in a chunked body."""

    __slots__ = ("_pairs", "_pending")

    def __init__(self, target: str, incoming: str) -> None:
        t = json.dumps(target, ensure_ascii=False).encode("utf-8")
        i = json.dumps(incoming, ensure_ascii=False).encode("utf-8")
        self._pairs = ((b'"model":' + t, b'"model":' + i), (b'"model": ' + t, b'"model": ' + i))
        self._pending = b""

    def _replace(self, data: bytes) -> bytes:
        for old, new in self._pairs:
            if old in data:
                data = data.replace(old, new)
        return data

    def feed(self, chunk: bytes, *, end_of_stream: bool = False) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        if end_of_stream:
            self._pending = b""
            return self._replace(data)
        cut = data.rfind(b"\n")
        if cut < 0:
            if len(data) > _MAX_PENDING:  # no newline for a megabyte: give up holding back
                self._pending = b""
                return self._replace(data)
            self._pending = data
            return b""
        self._pending = data[cut + 1 :]
        return self._replace(data[: cut + 1])
