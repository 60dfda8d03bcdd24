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
from infergate.app.gateway import Gateway, GatewayConfig
from infergate.config.picker import parse_picker_config
from infergate.config.picker_sections import apply_sections
from infergate.config.settings import GatewaySettings
from infergate.datastore.store import Datastore
from infergate.errors import NoCapacityError, RateLimitedError
from infergate.flowcontrol import (
    Decision,
    FlowControlConfig,
    FlowController,
    FlowCore,
    ItemState,
    SaturationDetector,
)
from infergate.flowcontrol.settings import flow_control_from_settings
from infergate.simulator.args import SimulatorArgs
from infergate.simulator.server import SimServer
from infergate.types import EndpointMeta, EndpointMetrics, InferenceRequest, PoolSpec
from tests.support import async_wait_for, free_port

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


def _settings(flow_control_section: str) -> GatewaySettings:
    """Settings as ``infergate epp --config-file`` derives them from an EndpointPickerConfig."""
    cfg = parse_picker_config(
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins: [{type: queue-scorer}, {type: max-score-picker}]\n"
        "schedulingProfiles: [{name: default, plugins: [{pluginRef: queue-scorer},\n"
        "  {pluginRef: max-score-picker}]}]\n" + flow_control_section
    )
    base = GatewaySettings(scrape_backoff_max=0.2, health_interval=0.2)
    settings, enabled = apply_sections(cfg, base, flow_control=True)
    assert enabled
    return settings


async def _gateway(tmp_path: Path, sim_port: int, settings: GatewaySettings) -> Gateway:
    path = tmp_path / "pool.yaml"
    await asyncio.to_thread(path.write_text, _manifest(sim_port))
    gw = Gateway(
        load_manifests([path]),
        GatewayConfig(
            host="127.0.0.1",
            port=free_port(),
            admin_host="127.0.0.1",
            admin_port=free_port(),
            settings=settings,
            seed=1,
        ),
    )
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


# ----------------------------------------------------------------- the budgets, in virtual time


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t


_META = EndpointMeta(name="pod-a", address="10.0.0.1", port=8000)


def _core(config: FlowControlConfig) -> tuple[FlowCore, Datastore, _Clock]:
    clock = _Clock()
    ds = Datastore(clock, staleness=2.0)
    ds.set_pool(PoolSpec(name="pool"))
    ds.upsert_endpoint(_META)
    return FlowCore(ds, detector=SaturationDetector(), config=config), ds, clock


def _req(name: str, priority: int = 0) -> InferenceRequest:
    return InferenceRequest(request_id=name, model="m", target_model="m", priority=priority, body_size=10)


def test_an_empty_pool_queues_on_its_own_budget_and_switches_to_the_default_when_an_endpoint_comes() -> None:
    core, ds, clock = _core(FlowControlConfig(default_ttl=2.0, no_endpoint_ttl=10.0))
    ds.set_healthy(_META.key, False)
    offer = core.offer(_req("r"), clock.now())
    assert offer.decision is Decision.QUEUED and offer.item is not None
    assert offer.item.deadline == 110.0  # the no-endpoint budget
    clock.t = 105.0
    ds.set_healthy(_META.key, True)  # ready but not scraped yet: still saturated, still waiting
    assert core.expire(clock.now()) == [] and core.pop_ready(clock.now()) is None
    assert offer.item.deadline == 107.0  # a fresh default budget from the switch
    clock.t = 107.0
    assert core.expire(clock.now()) == [offer.item]
    assert offer.item.state is ItemState.EVICTED_TTL  # the pool had an endpoint: 429 backpressure


def test_the_wait_never_exceeds_the_longer_budget_however_the_pool_flaps() -> None:
    core, ds, clock = _core(FlowControlConfig(default_ttl=2.0, no_endpoint_ttl=10.0))
    item = core.offer(_req("r"), clock.now()).item  # never scraped: saturated, queued on 2 s
    assert item is not None and item.deadline == 102.0
    clock.t = 101.0
    ds.set_healthy(_META.key, False)
    core.expire(clock.now())
    assert item.deadline == 110.0  # min(101 + 10, 100 + 10)
    clock.t = 109.5
    ds.set_healthy(_META.key, True)
    core.expire(clock.now())
    assert item.deadline == 110.0  # min(109.5 + 2, 100 + 10)
    clock.t = 109.9
    ds.set_healthy(_META.key, False)
    assert core.expire(clock.now()) == []
    clock.t = 110.0
    assert core.expire(clock.now()) == [item]
    assert item.state is ItemState.EVICTED_NO_ENDPOINTS  # 503: no endpoint came


def test_no_endpoint_budget_follows_the_default_and_none_waits_until_an_endpoint_comes() -> None:
    assert FlowControlConfig(default_ttl=7.0).empty_pool_ttl == 7.0
    core, ds, clock = _core(FlowControlConfig(default_ttl=2.0, no_endpoint_ttl=None))
    ds.set_healthy(_META.key, False)
    item = core.offer(_req("r"), clock.now()).item
    assert item is not None and item.deadline is None
    clock.t += 10_000
    assert core.expire(clock.now()) == []
    ds.set_healthy(_META.key, True)
    ds.update_metrics(_META.key, EndpointMetrics(updated_at=clock.now()))
    assert core.pop_ready(clock.now()) is item


@pytest.mark.parametrize(
    ("config", "priority"),
    [
        (FlowControlConfig(), -1),  # a sheddable request does not wait out a cold start
        (FlowControlConfig(enabled=False), 0),  # no queueing at all
        (FlowControlConfig(max_requests=1), 0),  # the queue is full: 503, not 429
    ],
)
def test_an_empty_pool_refuses_with_503_what_cannot_wait(config: FlowControlConfig, priority: int) -> None:
    core, ds, clock = _core(config)
    ds.set_healthy(_META.key, False)
    if config.max_requests == 1:
        assert core.offer(_req("first"), clock.now()).decision is Decision.QUEUED
    assert core.offer(_req("r", priority), clock.now()).decision is Decision.REJECT_NO_ENDPOINTS


async def test_the_controller_answers_each_drop_with_the_reference_reason_header() -> None:
    clock = _Clock()
    ds = Datastore(clock, staleness=2.0)
    ds.upsert_endpoint(_META)
    ds.set_healthy(_META.key, False)
    fc = FlowController(ds, detector=SaturationDetector(), clock=clock, config=FlowControlConfig())
    with pytest.raises(NoCapacityError) as shed:
        await fc.admit(_req("shed", -1))
    assert shed.value.headers == {"x-llm-d-request-dropped-reason": "rejected-no-endpoints"}
    ds.set_healthy(_META.key, True)
    ds.update_metrics(_META.key, EndpointMetrics(waiting_queue_size=50, updated_at=clock.now()))
    with pytest.raises(RateLimitedError) as saturated:
        await fc.admit(_req("shed", -1))
    assert saturated.value.headers == {"x-llm-d-request-dropped-reason": "rejected-saturated"}
    fc.close()
    with pytest.raises(NoCapacityError) as closed:
        await fc.admit(_req("late"))
    assert closed.value.headers == {"x-llm-d-request-dropped-reason": "rejected-shutting-down"}


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("flowControl: {noEndpointRequestTTL: 10m}", 600.0),
        ("flowControl: {defaultRequestTTL: 5s}", 5.0),  # unset: follows defaultRequestTTL
        ("flowControl: {defaultRequestTTL: 5s, noEndpointRequestTTL: 0s}", None),  # no eviction
    ],
)
def test_no_endpoint_request_ttl_reaches_the_flow_controller(section: str, expected: float | None) -> None:
    _, config = flow_control_from_settings(_settings(section + "\n"), pool_name="p")
    assert config.empty_pool_ttl == expected
