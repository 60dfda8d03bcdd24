"""Scale from zero, with real processes: a request that arrives while the pool has no ready
endpoint waits in flow control (bounded by ``noEndpointRequestTTL``) and is served by a replica
that starts after it arrived; when no replica comes in time the answer is 503 with the reference's
``x-llm-d-request-dropped-reason: rejected-no-endpoints``.

The gateway (built-in proxy) and the simulated vLLM server listen on 127.0.0.1; the client is the
openai SDK. Waits are event-driven (the gateway's queue gauge, the response itself) with generous
deadlines, so a loaded machine only makes the test slower.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import pytest

from infergate.api.loader import load_manifests
from infergate.app.gateway import Gateway, ManifestPoolSource
from infergate.config.picker import parse_picker_config
from infergate.config.picker_sections import apply_sections
from infergate.config.settings import Settings
from infergate.simulator.args import SimulatorArgs
from infergate.simulator.server import SimServer
from tests.support import async_wait_for, free_port, local_settings

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def _manifest(port: int) -> str:
    return f"""apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {{name: pool}}
spec:
  selector: {{matchLabels: {{app: sim}}}}
  targetPorts: [{{number: 8000}}]
  endpointPickerRef: {{name: epp, port: {{number: 9002}}}}
---
apiVersion: infergate.dev/v1alpha1
kind: EndpointList
metadata: {{name: sims}}
spec:
  poolName: pool
  endpoints:
  - address: 127.0.0.1:{port}
"""


def _settings(flow_control_section: str) -> Settings:
    """Settings as ``infergate epp --config-file`` derives them from an EndpointPickerConfig."""
    cfg = parse_picker_config(
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins: [{type: queue-scorer}, {type: max-score-picker}]\n"
        "schedulingProfiles: [{name: default, plugins: [{pluginRef: queue-scorer},\n"
        "  {pluginRef: max-score-picker}]}]\n" + flow_control_section
    )
    base = local_settings({"scrape.backoff_max": 0.2, "scrape.health_interval": 0.2, "seed": 1})
    settings = apply_sections(cfg, base)
    assert settings.flow_control.enabled
    return settings


async def _gateway(tmp_path: Path, sim_port: int, settings: Settings) -> Gateway:
    path = tmp_path / "pool.yaml"
    await asyncio.to_thread(path.write_text, _manifest(sim_port))
    gw = Gateway(ManifestPoolSource(load_manifests([path])), settings)
    await gw.start()
    return gw


def _client(gw: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{gw.port}/v1", api_key="none", max_retries=0, timeout=300
    )


async def _empty(gw: Gateway) -> bool:
    eps = gw.datastore.endpoints()
    return bool(eps) and not any(e.healthy for e in eps)


async def _queued(gw: Gateway) -> bool:
    return gw.flow.queued() == 1


async def test_a_request_waits_for_a_replica_that_starts_after_it_arrived(tmp_path: Path) -> None:
    sim_port = free_port()
    # a cold start takes longer than a saturated pool should make anyone wait
    gw = await _gateway(
        tmp_path, sim_port, _settings("flowControl: {defaultRequestTTL: 2s, noEndpointRequestTTL: 10m}\n")
    )
    sim = SimServer(SimulatorArgs(host="127.0.0.1", port=sim_port, seed=0, served_model_names=(MODEL,)))
    try:
        await async_wait_for(lambda: _empty(gw), timeout=60, what="the endpoint to be down")
        client = _client(gw)
        request = asyncio.create_task(
            client.completions.create(model=MODEL, prompt="hello from a cold pool", max_tokens=4)
        )
        await async_wait_for(lambda: _queued(gw), timeout=60, what="the request to wait for an endpoint")
        assert not request.done()  # no 503 at once: nothing was ready when it arrived
        await sim.start()  # the replica comes up only now
        completion = await asyncio.wait_for(request, 240)
        assert completion.choices[0].text
        assert gw.flow.queued() == 0
        await client.close()
    finally:
        await gw.stop()
        await sim.stop()


async def test_no_replica_within_the_no_endpoint_ttl_is_503_rejected_no_endpoints(tmp_path: Path) -> None:
    gw = await _gateway(tmp_path, free_port(), _settings("flowControl: {noEndpointRequestTTL: 500ms}\n"))
    try:
        await async_wait_for(lambda: _empty(gw), timeout=60, what="the endpoint to be down")
        client = _client(gw)
        with pytest.raises(openai.APIStatusError) as info:
            await asyncio.wait_for(
                client.completions.create(model=MODEL, prompt="hello from an empty pool", max_tokens=4), 240
            )
        assert info.value.status_code == 503
        assert info.value.response.headers["x-llm-d-request-dropped-reason"] == "rejected-no-endpoints"
        assert "no ready endpoint" in info.value.message
        assert gw.flow.queued() == 0
        await client.close()
    finally:
        await gw.stop()
