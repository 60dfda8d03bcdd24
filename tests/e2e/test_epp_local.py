"""The picker's local wiring: file-mode ``epp`` (health port, token-protected /metrics), the subset
hint honoured only where the data plane sets it, and ``serve --metrics-auth token``."""

from __future__ import annotations

import random
import re
import signal
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from infergate.api.loader import load_manifests
from infergate.app.gateway import Gateway, ManifestPoolSource
from infergate.config.picker import default_picker_config
from infergate.config.settings import Settings
from infergate.dataplanes.extproc import ExtProcDataPlane
from infergate.datastore.store import Datastore
from infergate.errors import NoCapacityError
from infergate.requestcontrol.director import Director
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.servers.metrics_auth import StaticTokenAuth
from infergate.types import EndpointMeta, EndpointMetrics, MonotonicClock
from tests.e2e.test_proxy_e2e import write_manifests
from tests.support import free_port, local_settings, start_infergate, wait_for

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
BODY = b'{"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": "hi", "max_tokens": 1}'
SUBSET = {"x-gateway-destination-endpoint-subset": "10.0.0.2:8000"}


def _make_candidate(ds: Datastore, meta: EndpointMeta, queue: int) -> None:
    ds.upsert_endpoint(meta)
    ds.set_healthy(meta.key, True)
    ds.update_metrics(meta.key, EndpointMetrics(waiting_queue_size=queue, updated_at=MonotonicClock().now()))


def _datastore() -> Datastore:
    ds = Datastore()
    # 10.0.0.1 idle, 10.0.0.2 loaded: without a subset the pick is always 10.0.0.1.
    _make_candidate(ds, EndpointMeta(name="e0", address="10.0.0.1", port=8000), 0)
    _make_candidate(ds, EndpointMeta(name="e1", address="10.0.0.2", port=8000), 50)
    return ds


def _director(ds: Datastore, *, honor: bool) -> Director:
    sched = build_scheduler(default_picker_config(lora=False), rng=random.Random(0))
    return Director(datastore=ds, scheduler=sched, flow=None, honor_subset_hint=honor)


async def test_subset_hint_restricts_only_when_honoured() -> None:
    ds = _datastore()
    honoured = await _director(ds, honor=True).handle_request(
        path="/v1/completions", headers=SUBSET, body=BODY
    )
    assert honoured.target.key == "10.0.0.2:8000"
    assert {t.key for t in honoured.result.targets} == {"10.0.0.2:8000"}
    ignored = await _director(ds, honor=False).handle_request(
        path="/v1/completions", headers=SUBSET, body=BODY
    )
    assert ignored.target.key == "10.0.0.1:8000"
    with pytest.raises(NoCapacityError):
        await _director(ds, honor=True).handle_request(
            path="/v1/completions",
            headers={"x-gateway-destination-endpoint-subset": "10.9.9.9:8000"},
            body=BODY,
        )


async def test_builtin_gateway_ignores_a_client_subset_header(tmp_path: Path) -> None:
    gw = Gateway(ManifestPoolSource(load_manifests([write_manifests(tmp_path, [8000])])), Settings())
    try:
        (ep,) = gw.datastore.endpoints()
        _make_candidate(gw.datastore, ep.meta, 0)
        # A client naming an address outside the pool must neither steer nor block routing.
        ctx = await gw.director.handle_request(
            path="/v1/completions", headers={"x-gateway-destination-endpoint-subset": "10.9.9.9:1"}, body=BODY
        )
        assert ctx.target.key == ep.key
        gw.director.handle_response_complete(ctx)
    finally:
        gw.flow.close()


async def health(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=60
        )
        return int(reply.status)


async def test_file_mode_epp_has_health_port_and_protected_metrics(tmp_path: Path) -> None:
    manifests = load_manifests([write_manifests(tmp_path, [free_port()])])
    cfg = local_settings({"data_plane": "epp", "listeners.grpc_port": 0, "listeners.grpc_health_port": 0})
    gw = Gateway(ManifestPoolSource(manifests), cfg, metrics_auth=StaticTokenAuth(["s3cret"]))
    await gw.start()
    try:
        assert isinstance(gw.data_plane, ExtProcDataPlane)
        serving = health_pb2.HealthCheckResponse.SERVING
        for name in ("liveness", "readiness", "", "inference-extension"):
            assert await health(gw.data_plane.health.port, name) == serving
        url = f"http://127.0.0.1:{gw.admin_port}"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{url}/metrics") as r:
                assert r.status == 401
            async with s.get(f"{url}/metrics", headers={"Authorization": "Bearer s3cret"}) as r:
                assert r.status == 200
                assert "inference_pool_ready_pods" in await r.text()
            async with s.get(f"{url}/healthz") as r:
                assert r.status == 200
    finally:
        await gw.stop()


def test_serve_generates_and_prints_a_metrics_token(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    manifests = write_manifests(tmp_path, [free_port()])
    child = start_infergate(
        [
            *("serve", "-f", str(manifests), "--host", "127.0.0.1", "--port", str(port)),
            *("--admin-port", str(admin), "--metrics-auth", "token"),
        ],
        tmp_path,
        health_url=f"http://127.0.0.1:{admin}/healthz",
    )
    try:
        wait_for(lambda: "Authorization: Bearer" in child.output(), timeout=10, what="the token banner")
        found = re.search(r"Bearer (\S+)' http://127\.0\.0\.1:(\d+)/metrics", child.output())
        assert found is not None and int(found.group(2)) == admin, child.output()
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=30)
        denied.value.close()
        assert denied.value.code == 401
        req = urllib.request.Request(
            f"http://127.0.0.1:{admin}/metrics", headers={"Authorization": f"Bearer {found.group(1)}"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200
    finally:
        assert child.stop(signal.SIGTERM) == 0, child.output()
