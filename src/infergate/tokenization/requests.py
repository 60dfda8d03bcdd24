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


def _is_ids(value: list[Any]) -> bool:
    return bool(value) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
