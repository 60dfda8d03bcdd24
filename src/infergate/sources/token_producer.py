"""``token-producer``: a request's prompt tokens from the model server's own renderer.

The precise prefix scorer looks a prompt's KV blocks up by the token ids the model server will
compute. Tokenizing in the gateway needs the model's tokenizer and chat template; llm-d-router
v0.10 instead asks vLLM to render the request (``POST /v1/completions/render``,
``/v1/chat/completions/render``, served by ``vllm serve`` and by the GPU-less ``vllm launch
render``), so the ids are the engine's by construction. This does the same, once per request
after admission, with the ``token-producer`` plugin's ``modelName`` and ``vllm.url``.

A render that fails (unreachable, an error status, a body without ``token_ids``, past
``vllm.timeout``) is counted, logged at most once a minute, and the request goes on without ids:
the scorer then tokenizes it itself, as upstream's scorers fall back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from infergate.net.http1_client import UpstreamConnectionError, UpstreamPool, UpstreamTimeout
from infergate.tokenization.requests import messages_as_chat
from infergate.types import ApiKind, InferenceRequest

__all__ = ["RenderTokenProducer"]

log = logging.getLogger(__name__)

_JSON = (("Content-Type", "application/json"), ("Accept", "application/json"))
_WARN_EVERY = 60.0  # seconds between two warnings about failing renders
# What the renderer needs of a chat request besides the messages (the template's inputs).
_CHAT_FIELDS = (
    "add_generation_prompt",
    "add_special_tokens",
    "chat_template_kwargs",
    "tools",
    "continue_final_message",
)


class RenderTokenProducer:
    """Token ids for requests from a vLLM render endpoint at ``url`` (``http://host:port``)."""

    def __init__(self, url: str, model: str, *, timeout: float = 5.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"vllm.url: {url!r} must be http://host[:port] (TLS is not supported)")
        self.url = url
        self.model = model
        self._host = parts.hostname
        self._port = parts.port or 80
        self._key = f"[{self._host}]:{self._port}" if ":" in self._host else f"{self._host}:{self._port}"
        self._base = parts.path.rstrip("/")
        self._pool = UpstreamPool(connect_timeout=timeout, read_timeout=timeout, max_per_host=64)
        self.failures = 0
        """Renders that failed (the request went on without ids)."""
        self._warned_at = -_WARN_EVERY

    async def token_ids(self, request: InferenceRequest) -> tuple[int, ...] | None:
        """The prompt's ids as the renderer computes them (an Anthropic message as the chat vLLM
        runs it as); None for requests it does not render (other APIs, batches of prompts) or when
        the render fails."""
        body = request.body
        if body is None:
            return None
        payload: dict[str, Any]
        if request.api is ApiKind.COMPLETIONS:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
                return tuple(prompt)  # already token ids
            if not isinstance(prompt, str):
                return None
            path, payload = "/v1/completions/render", {"model": self.model, "prompt": prompt}
        elif request.api is ApiKind.CHAT and isinstance(body.get("messages"), list):
            payload = {"model": self.model, "messages": body["messages"]}
            payload.update({k: body[k] for k in _CHAT_FIELDS if k in body})
            path = "/v1/chat/completions/render"
        elif request.api is ApiKind.MESSAGES:
            try:  # vLLM runs an Anthropic message as this chat
                chat = messages_as_chat(body)
            except ValueError:
                return None  # images, tools: the scorer tokenizes the text it has
            payload = {"model": self.model, "messages": chat}
            path = "/v1/chat/completions/render"
        else:
            return None
        try:
            return await self._render(path, payload)
        except (UpstreamConnectionError, UpstreamTimeout, ValueError) as exc:
            self.failures += 1
            now = time.monotonic()
            if now - self._warned_at >= _WARN_EVERY:  # a renderer that is down fails every request
                self._warned_at = now
                log.warning(
                    "token-producer: render at %s%s failed (%d failures so far; requests are "
                    "tokenized by the scorer meanwhile): %s",
                    self.url,
                    path,
                    self.failures,
                    exc,
                )
            return None

    async def _render(self, path: str, payload: Mapping[str, Any]) -> tuple[int, ...]:
        data = json.dumps(payload).encode()
        resp = await self._pool.request(
            self._key, self._host, self._port, "POST", self._base + path, _JSON, data
        )
        try:
            text = await resp.read()
        finally:
            resp.release()
        if resp.status != 200:
            raise ValueError(f"status {resp.status}: {text[:200]!r}")
        decoded = json.loads(text)
        entry = decoded[0] if isinstance(decoded, list) and decoded else decoded  # completions: a list
        ids = entry.get("token_ids") if isinstance(entry, dict) else None
        if not isinstance(ids, list) or not all(type(t) is int for t in ids):
            raise ValueError("the answer holds no token_ids")
        return tuple(ids)

    async def hold(self) -> None:
        """Keep the connections for the gateway's lifetime; close them when cancelled."""
        try:
            await asyncio.Event().wait()
        finally:
            await self._pool.close()
