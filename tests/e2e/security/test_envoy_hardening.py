"""The Envoy data plane when the picker is gone: fail-open routes around dead replicas, fail-close
answers within a bounded time, and slow or greedy clients are bounded by the bootstrap."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from infergate.dataplanes.extproc.envoy import EnvoyProcess, EnvoySettings, render_bootstrap
from tests.e2e.security.conftest import MODEL, Replica
from tests.support import free_port


def _hcm(boot: dict[str, Any]) -> dict[str, Any]:
    filters = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
    return dict(filters[-1]["typed_config"])


def test_bootstrap_bounds_the_picker_wait_and_slow_clients() -> None:
    boot = render_bootstrap(EnvoySettings())
    hcm = _hcm(boot)
    ext = hcm["http_filters"][0]["typed_config"]
    assert ext["message_timeout"] == "65s"  # a frozen picker fails requests after the queue TTL
    assert hcm["request_headers_timeout"] == "75s" and hcm["request_timeout"] == "140s"
    limit = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert limit["max_connections"] == 10000


@pytest.fixture
async def live() -> AsyncIterator[Replica]:
    r = Replica()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


async def test_fail_open_routes_around_a_dead_replica(live: Replica) -> None:
    """The picker is down and one of two replicas too: every request still gets an answer."""
    dead, picker, port = free_port(), free_port(), free_port()
    settings = EnvoySettings(
        listen_host="127.0.0.1",
        listen_port=port,
        picker_port=picker,  # nothing listens there
        failure_mode="FailOpen",
        fallback_endpoints=(live.key, f"127.0.0.1:{dead}"),
    )
    envoy = EnvoyProcess(render_bootstrap(settings), concurrency=1)
    await envoy.start_async()
    try:
        async with aiohttp.ClientSession() as s:
            for i in range(12):
                body = {"model": MODEL, "prompt": f"p{i}"}
                async with s.post(f"http://127.0.0.1:{port}/v1/completions", json=body) as r:
                    assert r.status == 200, await r.text()
    finally:
        await envoy.stop_async(2)
    assert len(live.seen) == 12
