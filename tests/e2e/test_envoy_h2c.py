"""A pool's ``appProtocol: kubernetes.io/h2c``: the Envoy data plane speaks HTTP/2 to the model servers.

The model server here sits behind a second, real Envoy that accepts HTTP/2 only (prior knowledge,
no TLS) and names the protocol it was spoken to in a response header; the gateway's Envoy reaches
it only when its upstream cluster speaks h2c, and an HTTP/1.1 cluster gets no answer from it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from infergate.config.picker import default_picker_config
from infergate.dataplanes.extproc.bootstrap import EnvoySettings, render_bootstrap
from infergate.dataplanes.extproc.process import EnvoyProcess
from infergate.dataplanes.extproc.server import ExtProcServer, serve_extproc
from infergate.datastore.store import Datastore
from infergate.flowcontrol.controller import FlowController
from infergate.flowcontrol.saturation import SaturationDetector
from infergate.requestcontrol.director import Director
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.types import EndpointMeta, EndpointMetrics
from tests.e2e.test_envoy import MODEL, FixedClock, Upstream
from tests.support import free_port

_T = "type.googleapis.com/"
FRONT = "h2-only"
HCM = "envoy.filters.network.http_connection_manager"


def _h2_only_front(upstream_port: int) -> dict[str, Any]:
    """An Envoy that takes HTTP/2 only on a port of its choosing and relays to ``upstream_port``
    over HTTP/1.1, adding ``x-front-protocol`` (the protocol it was spoken to) to each answer."""
    hcm = {
        "@type": _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "front",
        "codec_type": "HTTP2",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "model"}}],
                    "response_headers_to_add": [
                        {"header": {"key": "x-front-protocol", "value": "%PROTOCOL%"}}
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _T + "envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    model = {"socket_address": {"address": "127.0.0.1", "port_value": upstream_port}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": FRONT,
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "model",
                    "type": "STATIC",
                    "connect_timeout": "5s",
                    "load_assignment": {
                        "cluster_name": "model",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": model}}]}],
                    },
                }
            ],
        },
    }


@dataclass
class H2Stack:
    model: Upstream
    front: EnvoyProcess
    front_port: int
    ds: Datastore
    picker: ExtProcServer

    async def gateway(self, *, h2c: bool) -> tuple[EnvoyProcess, str]:
        """The gateway's Envoy in front of the picker, its model-server clusters on h2c or not."""
        port = free_port()
        settings = EnvoySettings(
            listen_host="127.0.0.1",
            listen_port=port,
            picker_port=self.picker.port,
            failure_mode="FailOpen",
            fallback_endpoints=(f"127.0.0.1:{self.front_port}",),
            upstream_h2c=h2c,
        )
        envoy = EnvoyProcess(render_bootstrap(settings), concurrency=1)
        await envoy.start_async()
        return envoy, f"http://127.0.0.1:{port}"


@pytest.fixture
async def h2stack() -> AsyncIterator[H2Stack]:
    model = Upstream("h2")
    await model.start()
    front = EnvoyProcess(_h2_only_front(model.port), concurrency=1)
    await front.start_async()
    front_port = await asyncio.to_thread(front.listener_port, FRONT)
    clock = FixedClock()
    ds = Datastore(clock)
    ds.upsert_endpoint(EndpointMeta(name="h2", address="127.0.0.1", port=front_port))
    key = f"127.0.0.1:{front_port}"
    ds.update_metrics(key, EndpointMetrics(updated_at=clock.now()))
    ds.set_models(key, frozenset({MODEL}))
    director = Director(
        datastore=ds,
        scheduler=build_scheduler(default_picker_config(lora=False), rng=random.Random(0), clock=clock),
        flow=FlowController(ds, detector=SaturationDetector(), clock=clock),
        clock=clock,
    )
    picker = serve_extproc(director, "127.0.0.1", free_port(), endpoints=ds)
    await picker.start()
    try:
        yield H2Stack(model, front, front_port, ds, picker)
    finally:
        await picker.stop(0)
        await front.stop_async()
        await model.stop()


async def _complete(url: str) -> tuple[int, str | None]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/chat/completions", json=body) as resp,
    ):
        await resp.read()
        return resp.status, resp.headers.get("x-front-protocol")


async def test_an_h2c_pool_is_reached_over_http2(h2stack: H2Stack) -> None:
    envoy, url = await h2stack.gateway(h2c=True)
    try:
        assert await _complete(url) == (200, "HTTP/2")
        assert len(h2stack.model.seen) == 1
    finally:
        await envoy.stop_async()


async def test_without_h2c_the_http2_only_server_is_not_reached(h2stack: H2Stack) -> None:
    envoy, url = await h2stack.gateway(h2c=False)
    try:
        status, protocol = await _complete(url)
        assert status >= 500 and protocol is None
        assert not h2stack.model.seen
    finally:
        await envoy.stop_async()
