"""The P/D sidecar's proxy: llm-d's NIXL v2 protocol in front of a decode model server.

The endpoint picker sends a request it wants disaggregated to the decode pod with the header
``x-prefiller-host-port: <address:port>``. The sidecar then

1. sends the prefill to that address: the same path and body with
   ``kv_transfer_params = {do_remote_decode: true, do_remote_prefill: false, remote_engine_id: null,
   remote_block_ids: null, remote_host: null, remote_port: null}``, ``stream: false`` (no
   ``stream_options``) and the token limits (``max_tokens``, and ``max_completion_tokens`` when the
   request has it) set to 1; an error answer of the prefiller is relayed to the client as is;
2. sends the original request to the local decode server with the ``kv_transfer_params`` of the
   prefiller's answer (where the decoder pulls the prompt's KV from), and streams its answer back.

Requests without the header, and every other path (``/metrics``, ``/health``, ``/v1/models``), go
straight to the decode server, so the pod looks like a plain model server to everything else.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

__all__ = ["PREFILLER_HEADER", "SIDECAR_OPTIONS", "SidecarOptions", "build_app"]

log = logging.getLogger(__name__)

PREFILLER_HEADER = "x-prefiller-host-port"
FIELD = "kv_transfer_params"
_PD_PATHS = ("/v1/completions", "/v1/chat/completions")
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")


@dataclass(slots=True)
class SidecarOptions:
    decoder_url: str = "http://127.0.0.1:8200"
    prefill_timeout: float = 600.0
    request_timeout: float = 3600.0
    stats: dict[str, int] = field(
        default_factory=lambda: {"disaggregated": 0, "local": 0, "prefill_errors": 0}
    )


def _forward_headers(request: web.Request) -> dict[str, str]:
    return {
        k: v
        for k, v in request.headers.items()
        if k.lower() not in _HOP_BY_HOP and k.lower() != PREFILLER_HEADER
    }


def _error(status: int, message: str) -> web.Response:
    body = {
        "error": {
            "message": message,
            "type": "BadRequestError" if status < 500 else "BadGateway",
            "code": status,
        }
    }
    return web.json_response(body, status=status)


def prefill_body(body: dict[str, Any]) -> dict[str, Any]:
    """The prefill request's body (step 1 of the module docstring)."""
    out = dict(body)
    out[FIELD] = {
        "do_remote_decode": True,
        "do_remote_prefill": False,
        "remote_engine_id": None,
        "remote_block_ids": None,
        "remote_host": None,
        "remote_port": None,
    }
    out["stream"] = False
    out.pop("stream_options", None)
    out["max_tokens"] = 1
    if "max_completion_tokens" in out:
        out["max_completion_tokens"] = 1
    return out


SIDECAR_OPTIONS: web.AppKey[SidecarOptions] = web.AppKey("sidecar_options", SidecarOptions)


class _Sidecar:
    def __init__(self, options: SidecarOptions) -> None:
        self.o = options
        self.session: aiohttp.ClientSession | None = None

    async def start(self, _app: web.Application) -> None:
        self.session = aiohttp.ClientSession(auto_decompress=False)

    async def close(self, _app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        prefiller = request.headers.get(PREFILLER_HEADER)
        if prefiller and request.method == "POST" and request.path in _PD_PATHS:
            return await self._disaggregated(request, prefiller.strip())
        self.o.stats["local"] += 1
        return await self._relay(request, await request.read(), _forward_headers(request))

    async def _disaggregated(self, request: web.Request, prefiller: str) -> web.StreamResponse:
        assert self.session is not None
        if not _HOST_PORT.match(prefiller):
            return _error(400, f"{PREFILLER_HEADER}: {prefiller!r} is not <address>:<port>")
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error(400, "request body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "request body is not a JSON object")
        headers = _forward_headers(request)
        headers["x-request-id"] = headers.get("x-request-id") or uuid.uuid4().hex
        headers["Content-Type"] = "application/json"
        url = f"http://{prefiller}{request.path_qs}"
        timeout = aiohttp.ClientTimeout(total=self.o.prefill_timeout)
        try:
            async with self.session.post(
                url, json=prefill_body(body), headers=headers, timeout=timeout
            ) as resp:
                answer = await resp.read()
                if resp.status >= 400:
                    self.o.stats["prefill_errors"] += 1
                    return web.Response(status=resp.status, body=answer, content_type=resp.content_type)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.o.stats["prefill_errors"] += 1
            return _error(502, f"prefill on {prefiller} failed: {type(exc).__name__}: {exc}")
        try:
            params = json.loads(answer).get(FIELD)
        except (ValueError, AttributeError):
            self.o.stats["prefill_errors"] += 1
            return _error(502, f"prefill on {prefiller} answered no JSON object")
        decode = dict(body)
        if isinstance(params, dict):
            decode[FIELD] = params
        else:  # the prefiller kept nothing for us: the decoder computes the prompt itself
            log.warning("prefill on %s returned no kv_transfer_params; decoding without them", prefiller)
        self.o.stats["disaggregated"] += 1
        return await self._relay(request, json.dumps(decode).encode(), headers)

    async def _relay(self, request: web.Request, body: bytes, headers: dict[str, str]) -> web.StreamResponse:
        """Send to the decode server and stream its answer back."""
        assert self.session is not None
        url = self.o.decoder_url + request.path_qs
        timeout = aiohttp.ClientTimeout(total=self.o.request_timeout)
        try:
            upstream = await self.session.request(
                request.method, url, data=body or None, headers=headers, timeout=timeout
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _error(502, f"decode server unreachable: {type(exc).__name__}")
        out = web.StreamResponse(status=upstream.status)
        try:
            for k, v in upstream.headers.items():
                if k.lower() not in _HOP_BY_HOP:
                    out.headers.add(k, v)
            await out.prepare(request)
            async for chunk in upstream.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
        except ConnectionError:  # the client went away (a probe that timed out): nothing to answer
            log.debug("client of %s %s disconnected", request.method, request.path)
        finally:
            upstream.release()
        return out


def build_app(options: SidecarOptions | None = None) -> web.Application:
    """The sidecar's aiohttp application (every path is proxied)."""
    sidecar = _Sidecar(options or SidecarOptions())
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.on_startup.append(sidecar.start)
    app.on_cleanup.append(sidecar.close)
    app.router.add_route("*", "/{tail:.*}", sidecar.handle)
    app[SIDECAR_OPTIONS] = sidecar.o
    return app
