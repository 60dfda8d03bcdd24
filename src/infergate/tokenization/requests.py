"""The token ids a vLLM server computes for an OpenAI request body, for callers outside a server.

A gateway that routes on prefix-cache contents (vLLM block hashes) must tokenise a request exactly
as the model server will, or its hashes never match the server's. These functions are what the
simulator serves (its ``/tokenize`` and ``/v1/*/render`` agree with them, tested), written for a
body that is already valid JSON; they do not enforce the server's limits or error messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infergate.tokenization.protocol import TextTokenizer


def _flag(body: Mapping[str, Any], default: bool) -> bool:
    value = body.get("add_special_tokens", default)
    return value if isinstance(value, bool) else default


def completion_token_ids(tokenizer: TextTokenizer, body: Mapping[str, Any]) -> list[list[int]]:
    """``/v1/completions``: one id list per prompt. Text gets the tokenizer's BOS first (vLLM's
    default ``add_special_tokens`` is true there); token-id prompts are used as given."""
    prompt = body.get("prompt")
    prompts: Any = (
        [prompt] if isinstance(prompt, str) or (isinstance(prompt, list) and _is_ids(prompt)) else prompt
    )
    if not isinstance(prompts, list) or not prompts:
        raise ValueError("prompt must be a string, token ids, or a non-empty list of either")
    bos = tokenizer.bos_id
    prefix = [bos] if bos is not None and _flag(body, True) else []
    out: list[list[int]] = []
    for p in prompts:
        if isinstance(p, str):
            out.append(prefix + tokenizer.encode(p))
        elif isinstance(p, list) and _is_ids(p):
            out.append(list(p))
        else:
            raise ValueError("prompt must be a string, token ids, or a non-empty list of either")
    return out


def chat_token_ids(tokenizer: TextTokenizer, body: Mapping[str, Any]) -> list[int]:
    """``/v1/chat/completions``: ``messages`` through the chat template (which starts with BOS;
    vLLM's chat default ``add_special_tokens`` is false, true adds another)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValueError("messages must be a list of objects")
    bos = tokenizer.bos_id
    prefix = [bos] if bos is not None and _flag(body, False) else []
    return prefix + tokenizer.encode(tokenizer.apply_chat_template(messages))


def messages_as_chat(body: Mapping[str, Any]) -> list[dict[str, str]]:
    """``/v1/messages`` (Anthropic): the chat messages vLLM runs it as. The ``system`` field, a
    string or text blocks, first; each message's text (a string, or its text blocks joined);
    an empty system message dropped. ValueError naming the field for anything but text."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ValueError("messages: Input should be a valid list")
    chat: list[dict[str, str]] = []
    system = body.get("system")
    if system:
        chat.append({"role": "system", "content": _blocks_text(system, "system")})
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, Mapping) else None
        if role not in ("user", "assistant", "system"):
            raise ValueError(f"messages[{i}].role: Input should be 'user', 'assistant' or 'system'")
        text = _blocks_text(msg.get("content"), f"messages[{i}].content")
        if role != "system" or text:
            chat.append({"role": role, "content": text})
    return chat


def _blocks_text(content: object, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"{where}: Input should be a valid string or list of content blocks")
    parts = []
    for i, block in enumerate(content):
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind != "text":
            raise ValueError(f"{where}[{i}]: block type {kind!r} is not text")
        text = block.get("text")
        # vLLM drops Claude Code's attribution header: a per-request hash that defeats caching
        if isinstance(text, str) and not text.startswith("x-anthropic-billing-header"):
            parts.append(text)
    return "".join(parts)


def _is_ids(value: list[Any]) -> bool:
    return bool(value) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
