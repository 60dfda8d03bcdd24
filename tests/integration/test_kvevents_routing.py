"""Precise prefix routing over real ZMQ sockets against in-process simulators (the process-level
test with ``infergate simulate`` and a publisher restart is ``tests/e2e/test_kvevents_process.py``).

* Connect mode: the subscriber connects to a simulator's bound publisher.
* The gateway with ``precise-prefix-cache-scorer`` in front of three simulators: after each
  tenant's first request, its later requests land where its blocks are, by the events alone.
"""

from __future__ import annotations

import asyncio
import functools
import random
import socket
from collections.abc import Callable
from pathlib import Path

import aiohttp
import openai
import yaml

from infergate.api.loader import load_manifests
from infergate.app.gateway import Gateway, ManifestPoolSource
from infergate.config.picker import parse_picker_config
from infergate.scheduling.plugins.precise_prefix import PrecisePrefixParams, PrecisePrefixScorer
from infergate.scheduling.sdk.framework import CycleState
from infergate.simulator.args import SimulatorArgs
from infergate.simulator.server import SimServer
from infergate.types import Endpoint, EndpointMeta, InferenceRequest
from tests.support import async_wait_for, free_port, local_settings, static_pool_docs

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
TIMEOUT = 60.0


def listen_port() -> int:
    """A free port below the ephemeral range: a publisher's outgoing ZMQ connection (which takes an
    ephemeral port) can never occupy it before the simulator that is told to listen there binds."""
    while True:
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def prompt(tenant: int, question: int) -> str:
    return (
        f"Tenant {tenant} system prompt: "
        + f"rule {tenant} is to be precise and brief. " * 30
        + f"Q{question}?"
    )


def request(p: str, model: str = MODEL) -> InferenceRequest:
    return InferenceRequest(request_id="r", model=model, target_model=model, prompt=p, body={"prompt": p})


async def until_received(port: int, received: Callable[[], bool]) -> None:
    """Send distinct prompts to the simulator on ``port`` until ``received()``: a PUB socket drops
    what it publishes before the subscription reaches it, and a repeated prompt would hit the
    simulator's cache and publish nothing new."""
    attempt = 0

    async def check() -> bool:
        nonlocal attempt
        if received():
            return True
        attempt += 1
        await complete(port, f"warm-up {attempt} " * 40)
        return False

    await async_wait_for(check, timeout=TIMEOUT, interval=0.1, what=f"KV events from the simulator on {port}")


async def complete(port: int, p: str) -> None:
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=TIMEOUT
    )
    try:
        await client.completions.create(model=MODEL, prompt=p, max_tokens=2)
    finally:
        await client.close()


async def test_connect_mode_follows_each_endpoints_publisher() -> None:
    zmq_port = free_port()
    sim = SimServer(
        SimulatorArgs(
            host="127.0.0.1",
            port=0,
            served_model_names=(MODEL,),
            time_scale=0.05,
            kv_events_endpoint=f"tcp://*:{zmq_port}",  # a wildcard address binds
        )
    )
    await sim.start()
    s = PrecisePrefixScorer(
        PrecisePrefixParams.model_validate(
            {"kvEventsConfig": {"topicFilter": "", "podDiscoveryConfig": {"socketPort": zmq_port}}}
        )
    )
    assert [name for name, _ in s.background_tasks()] == ["kv-events"]  # binds the socket
    task = asyncio.create_task(s.subscriber.run())
    endpoint = Endpoint(meta=EndpointMeta(name="sim", address="127.0.0.1", port=sim.port))
    try:
        s.sync_endpoints([endpoint])
        await until_received(sim.port, lambda: s.index.is_live("127.0.0.1"))
        p = prompt(4, 1)
        await complete(sim.port, p)
        await async_wait_for(lambda: _scored(s, p, endpoint), timeout=TIMEOUT, what="blocks over the socket")
        assert s.index.is_live("127.0.0.1")
        s.sync_endpoints([])  # the endpoint left the pool: its blocks go with it
        assert not s.index.is_live("127.0.0.1")
        assert s.score(request(p), [endpoint], CycleState()) == {}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sim.stop()


async def _scored(s: PrecisePrefixScorer, p: str, endpoint: Endpoint) -> bool:
    return bool(s.score(request(p), [endpoint], CycleState()))


PICKER = """
plugins:
- type: precise-prefix-cache-scorer
  parameters:
    kvEventsConfig: {{zmqEndpoint: "tcp://127.0.0.1:{port}", discoverPods: false}}
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: precise-prefix-cache-scorer
    weight: 3
  - pluginRef: queue-scorer
    weight: 1
"""


async def test_gateway_routes_to_the_endpoint_holding_the_blocks(tmp_path: Path) -> None:
    zmq_port = free_port()
    ports = [listen_port() for _ in range(3)]
    sims = [
        SimServer(
            SimulatorArgs(
                host="127.0.0.1",
                port=port,
                served_model_names=(MODEL,),
                time_scale=0.05,
                seed=i,
                kv_events_endpoint=f"tcp://127.0.0.1:{zmq_port}",
                kv_events_topic=f"kv@127.0.0.1:{port}@{MODEL}",
            )
        )
        for i, port in enumerate(ports)
    ]
    docs = tmp_path / "pool.yaml"

    docs.write_text(yaml.safe_dump_all(static_pool_docs([f"127.0.0.1:{p}" for p in ports])))
    gw = Gateway(
        ManifestPoolSource(load_manifests([docs])),
        local_settings({"proxy.served_header": True, "seed": 3}),
        picker=parse_picker_config(PICKER.format(port=zmq_port)),
    )
    for s in sims:
        await s.start()
    await gw.start()
    scorer = gw.scheduler.plugin("precise-prefix-cache-scorer")
    assert isinstance(scorer, PrecisePrefixScorer)
    try:
        await tenants_return_home(gw, scorer, ports, tenants=6, questions=3, probe=request)
    finally:
        await gw.stop()
        for s in sims:
            await s.stop()


async def tenants_return_home(
    gw: Gateway,
    scorer: PrecisePrefixScorer,
    ports: list[int],
    *,
    tenants: int,
    questions: int,
    probe: Callable[[str], InferenceRequest],
) -> None:
    """Each tenant's first prompt goes somewhere; once that server's events for it are in the
    index (``probe`` builds the request the scorer is asked about), every later prompt of the
    tenant goes to the same server."""
    assert await gw.wait_ready(TIMEOUT)
    url = f"http://127.0.0.1:{gw.port}/v1/completions"
    async with aiohttp.ClientSession() as session:

        async def send(p: str) -> str:
            body = {"model": MODEL, "prompt": p, "max_tokens": 2}
            async with session.post(url, json=body) as resp:
                assert resp.status == 200, await resp.text()
                return resp.headers["x-gateway-destination-endpoint-served"]

        # every simulator's events must be flowing first (PUB-SUB drops messages sent before
        # the connection is up): warm each one directly until the index knows it
        for port in ports:
            await until_received(port, functools.partial(scorer.index.is_live, f"127.0.0.1:{port}"))
        homes: dict[int, str] = {}
        for tenant in range(tenants):
            homes[tenant] = await send(prompt(tenant, 0))
            home = Endpoint(
                meta=EndpointMeta(name="x", address="127.0.0.1", port=int(homes[tenant].rsplit(":", 1)[1]))
            )

            async def held(tenant: int = tenant, home: Endpoint = home) -> bool:
                return bool(scorer.score(probe(prompt(tenant, 1)), [home], CycleState()))

            await async_wait_for(held, timeout=TIMEOUT, what=f"tenant {tenant}'s blocks in the index")
        for question in range(1, questions + 1):
            for tenant in range(tenants):
                assert await send(prompt(tenant, question)) == homes[tenant], (tenant, question)
