"""`infergate epp --pool-name` as the in-cluster picker: a real process, a real Kubernetes client.

The picker runs as a child process with a kubeconfig pointing at tests/k8s_apiserver.py's
stand-in; the pool's pods point at two real `infergate simulate` processes (127.0.0.1 and
127.0.0.2, both loopback on Linux, so the subset hint's IP matching is exercised). The test drives
the ext_proc gRPC service with the message sequence Envoy sends, forwards the request to the
endpoint the picker chose, and checks the plaintext health port (what the chart's probes call), the
token-protected /metrics (TokenReview + SubjectAccessReview against the stand-in) and the SIGTERM
order: NOT_SERVING first, then drain, then exit 0.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from infergate.app.epp import parse_duration
from infergate.requestcontrol.director import parse_subset
from tests.integration.test_extproc import body_msg, headers_msg, read, response_headers_msg
from tests.k8s_apiserver import FakeApiServer, objective, pod, pool
from tests.support import ChildProcess, async_wait_for, free_port, start_infergate

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
POOL = "vllm-pool"
READER_TOKEN = "prometheus-token"
NOBODY_TOKEN = "someone-else-token"
SERVING = int(health_pb2.HealthCheckResponse.SERVING)
NOT_SERVING = int(health_pb2.HealthCheckResponse.NOT_SERVING)


@dataclass
class Cluster:
    api: FakeApiServer
    kubeconfig: Path
    sim_port: int
    ips: tuple[str, str]
    log_dir: Path


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    port = free_port()
    ips = ("127.0.0.1", "127.0.0.2")
    sims = [
        start_infergate(
            ["simulate", "--model", MODEL, "--host", ip, "--port", str(port)],
            tmp_path / "sims",
            health_url=f"http://{ip}:{port}/health",
        )
        for ip in ips
    ]
    api = FakeApiServer(bookmark_interval=0.1)
    await api.start()
    api.auth.tokens[READER_TOKEN] = ("system:serviceaccount:monitoring:prometheus", ["system:authenticated"])
    api.auth.tokens[NOBODY_TOKEN] = ("jane", ["system:authenticated"])
    api.auth.metrics_readers.add("system:serviceaccount:monitoring:prometheus")
    for i, ip in enumerate(ips):
        api.apply(pod(f"vllm-{i}", ip))
    api.apply(objective("food-review", 10))
    try:
        yield Cluster(api, api.write_kubeconfig(tmp_path / "kubeconfig"), port, ips, tmp_path)
    finally:
        await api.stop()
        for s in sims:
            s.stop()


@dataclass
class Picker:
    child: ChildProcess
    grpc: int
    health: int
    metrics: int


def start_picker(c: Cluster) -> Picker:
    g, h, m = free_port(), free_port(), free_port()
    args = [
        *("epp", "--pool-name", POOL, "--pool-namespace", "default", "--kubeconfig", str(c.kubeconfig)),
        *("--grpc-port", str(g), "--grpc-health-port", str(h), "--metrics-port", str(m)),
        *("--host", "127.0.0.1", "--no-secure-serving", "--metrics-auth", "kubernetes", "--grace", "20"),
        *("--refresh-prometheus-metrics-interval", "100ms"),
    ]
    return Picker(start_infergate(args, c.log_dir), g, h, m)


async def health_status(port: int, service: str) -> int | None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
        except grpc.aio.AioRpcError:
            return None
        return int(reply.status)


async def get(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        return r.status, await r.text()


def completion(max_tokens: int = 5) -> bytes:
    return json.dumps(
        {"model": MODEL, "prompt": "Write as if you were a critic: Paris", "max_tokens": max_tokens}
    ).encode()


async def routed(
    stub: pb_grpc.ExternalProcessorStub, body: bytes, subset: list[str] | None
) -> tuple[Any, pb.ProcessingResponse]:
    """Send a request as Envoy does until the picker routes it (not a 503 while endpoints are
    still being scraped); returns the open stream and the headers reply (its body reply is read)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        call = stub.Process()
        await call.write(headers_msg("/v1/completions", subset=subset))
        await call.write(body_msg(body, eos=True))
        (first,) = await read(call, 1)
        if not first.HasField("immediate_response"):
            await read(call, 1)
            return call, first
        call.cancel()
        assert first.immediate_response.status.code == 503, first
        assert loop.time() < deadline, "the picker kept answering 503"
        await asyncio.sleep(0.05)


def gauge(text: str, metric: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == metric and labels.items() <= s.labels.items():
                return float(s.value)
    return None


def destination(reply: pb.ProcessingResponse) -> str:
    for h in reply.request_headers.response.header_mutation.set_headers:
        if h.header.key == "x-gateway-destination-endpoint":
            return str(h.header.raw_value.decode())
    raise AssertionError(f"no destination in {reply}")


async def test_epp_routes_to_simulators_from_the_cluster(cluster: Cluster) -> None:
    picker = start_picker(cluster)
    child = picker.child
    try:
        # Live but not ready while the pool does not exist yet: the kubelet must not route to it.
        async def live() -> bool:
            assert child.alive(), child.output()
            return await health_status(picker.health, "liveness") == SERVING

        await async_wait_for(live, timeout=20, what="liveness SERVING")
        assert await health_status(picker.health, "readiness") == NOT_SERVING
        assert (await get(f"http://127.0.0.1:{picker.metrics}/readyz"))[0] == 503

        cluster.api.apply(pool(POOL, ports=(cluster.sim_port,)))

        async def ready() -> bool:
            assert child.alive(), child.output()
            return await health_status(picker.health, "readiness") == SERVING

        await async_wait_for(ready, timeout=20, what="readiness SERVING after the pool synced")
        assert await health_status(picker.health, "") == SERVING
        assert await health_status(picker.health, "envoy.service.ext_proc.v3.ExternalProcessor") == SERVING

        # /metrics and /debug need a token that TokenReview knows and SubjectAccessReview allows.
        url = f"http://127.0.0.1:{picker.metrics}"
        assert (await get(f"{url}/metrics"))[0] == 401
        assert (await get(f"{url}/metrics", "not-a-token"))[0] == 401
        assert (await get(f"{url}/metrics", NOBODY_TOKEN))[0] == 403
        assert (await get(f"{url}/metrics", READER_TOKEN))[0] == 200
        assert (await get(f"{url}/healthz"))[0] == 200  # probes carry no token

        keys = {f"{ip}:{cluster.sim_port}" for ip in cluster.ips}

        async def both_candidates() -> bool:
            _, text = await get(f"{url}/metrics", READER_TOKEN)
            return gauge(text, "inference_pool_ready_pods", name=POOL) == 2

        await async_wait_for(both_candidates, timeout=20, what="both simulators scraped")

        async with grpc.aio.insecure_channel(f"127.0.0.1:{picker.grpc}") as ch:
            stub = pb_grpc.ExternalProcessorStub(ch)
            # The Envoy sequence: headers, body with end of stream → route; forward; response back.
            for subset in (None, [f"{cluster.ips[1]}:{cluster.sim_port}"]):
                body = completion()
                call, head = await routed(stub, body, subset)
                dest = destination(head)
                assert dest in keys
                if subset is not None:
                    assert dest == subset[0]
                async with (
                    aiohttp.ClientSession() as s,
                    s.post(f"http://{dest}/v1/completions", data=body) as r,
                ):
                    assert r.status == 200
                    answer = await r.read()
                assert json.loads(answer)["model"] == MODEL
                await call.write(response_headers_msg(length=len(answer)))
                await call.write(body_msg(answer, eos=True, response=True))
                await read(call, 2)
                await call.done_writing()

            call = stub.Process()
            await call.write(headers_msg("/v1/completions", subset=["10.9.9.9:8000"]))
            await call.write(body_msg(completion(), eos=True))
            (reply,) = await read(call, 1)
            assert reply.immediate_response.status.code == 503
            call.cancel()

        _, text = await get(f"{url}/metrics", READER_TOKEN)
        total = {
            s.labels.get("model_name"): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "inference_objective_request_total"
        }
        assert total.get(MODEL) == 2, total

        # A deleted pool makes the picker unready (not dead); it comes back with the pool.
        cluster.api.delete("InferencePool", POOL)

        async def not_ready() -> bool:
            return await health_status(picker.health, "readiness") == NOT_SERVING

        await async_wait_for(not_ready, timeout=10, what="readiness NOT_SERVING without the pool")
        assert await health_status(picker.health, "liveness") == SERVING
        cluster.api.apply(pool(POOL, ports=(cluster.sim_port,)))
        await async_wait_for(ready, timeout=10, what="readiness SERVING with the pool back")

        # SIGTERM with a stream open: NOT_SERVING at once, the stream still finishes, then exit 0.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{picker.grpc}") as ch:
            call, _ = await routed(pb_grpc.ExternalProcessorStub(ch), completion(), None)
            child.proc.send_signal(signal.SIGTERM)

            async def unready() -> bool:
                return await health_status(picker.health, "readiness") != SERVING

            await async_wait_for(unready, timeout=10, what="readiness NOT_SERVING on SIGTERM")
            assert child.alive(), "the picker exited without draining the open stream"
            await call.write(response_headers_msg(length=2))
            await call.write(body_msg(b"{}", eos=True, response=True))
            await read(call, 2)
            await call.done_writing()

        async def exited() -> bool:
            return not child.alive()

        await async_wait_for(exited, timeout=15, what="the picker to exit after draining")
        assert child.proc.returncode == 0, child.output()
    except BaseException:
        print(child.output())  # the picker's log, for the failure report
        raise
    finally:
        child.stop()


def test_epp_needs_a_pool_or_files() -> None:
    from typer.testing import CliRunner

    from infergate.cli import app

    result = CliRunner().invoke(app, ["epp"])
    assert result.exit_code == 2
    assert "--pool-name" in result.output


def test_subset_hint_and_duration_parsing() -> None:
    assert parse_subset(None) is None
    assert parse_subset("") == frozenset()
    expected = frozenset({"10.0.0.1", "10.0.0.2", "fd00::1", "10.0.0.3"})
    assert parse_subset("10.0.0.1:8000, 10.0.0.2:9000,[fd00::1]:8000,10.0.0.3") == expected
    assert parse_duration("50ms") == pytest.approx(0.05)
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("2") == 2.0
    with pytest.raises(ValueError):
        parse_duration("2 fortnights")


async def test_the_reference_deployments_args_and_probes_start_a_routing_picker(cluster: Cluster) -> None:
    """Swap only the image: the container args of llm-d-router's own EPP Deployment (its
    deploy/components/inference-gateway/deployment.yaml, variables filled in) start a picker that
    the probes those manifests use find ready (``envoy.service.ext_proc.v3.ExternalProcessor``;
    the charts' ``inference-extension``) and that routes."""
    g, h, m = free_port(), free_port(), free_port()
    args = [
        *("epp", "--pool-name", POOL, "--pool-namespace", "default"),
        *("--v", "4", "--zap-encoder", "json"),
        *("--grpc-port", str(g), "--grpc-health-port", str(h)),
        "--allow-experimental-plugins=true",
        "--metrics-endpoint-auth=false",
        "--ha-enable-leader-election=false",
        # the test's own: where the stand-in API server is, loopback, plaintext, a free metrics port
        *("--kubeconfig", str(cluster.kubeconfig), "--host", "127.0.0.1", "--secure-serving=false"),
        *("--metrics-port", str(m)),
    ]
    cluster.api.apply(pool(POOL, ports=(cluster.sim_port,)))
    child = start_infergate(args, cluster.log_dir)
    try:
        for service in ("envoy.service.ext_proc.v3.ExternalProcessor", "inference-extension"):

            async def ready(service: str = service) -> bool:
                return await health_status(h, service) == SERVING

            await async_wait_for(ready, timeout=60, what=f"{service} SERVING")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{g}") as ch:
            call, reply = await routed(pb_grpc.ExternalProcessorStub(ch), completion(), None)
            call.cancel()
        assert destination(reply).rsplit(":", 1)[0] in cluster.ips
        status, text = await get(f"http://127.0.0.1:{m}/metrics")  # --metrics-endpoint-auth=false
        assert status == 200 and "llm_d_epp_request_total" in text
    finally:
        child.stop()
    log = child.output()
    assert "reference flags mapped: --v=4 → --log-level debug" in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]  # --zap-encoder json
    assert lines and {"time", "level", "logger", "message"} <= set(lines[0])
    # debug (--v 4) is infergate's: the libraries' (hpack logs every header it decodes) stays off
    assert not [
        line for line in lines if line["level"] == "DEBUG" and not line["logger"].startswith("infergate")
    ]
