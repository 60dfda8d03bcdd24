"""The whole Envoy data plane with real simulated model servers.

Two ``infergate simulate`` children are scraped by the real MetricsScraper; the picker (real
Director, scheduler and datastore) answers a real Envoy; the ``openai`` SDK talks to Envoy only.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from infergate.config.picker import default_picker_config
from infergate.dataplanes.extproc.bootstrap import EnvoySettings, render_bootstrap
from infergate.dataplanes.extproc.process import EnvoyProcess
from infergate.dataplanes.extproc.server import ExtProcServer, serve_extproc
from infergate.datastore.store import Datastore
from infergate.requestcontrol.director import Director
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.sources.scraper import MetricsScraper
from infergate.types import EndpointMeta, Objective
from tests.support import ChildProcess, async_wait_for, free_port, start_infergate

pytestmark = pytest.mark.slow

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
# The tutorial's adapters (vllm-llama3.1-8b-adapters ConfigMap) and objectives.
ADAPTERS = {"food-review": "Kawon/llama3.1-food-finetune_v14_r8", "cad-fabricator": "redcathode/fabricator"}
OBJECTIVES = {"food-review": 10, "llama3-base-model": 20}


@dataclass
class Fleet:
    sims: list[ChildProcess]
    keys: list[str]
    ds: Datastore
    picker: ExtProcServer
    envoy: EnvoyProcess
    url: str

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key="none", max_retries=0, timeout=30)


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    import asyncio

    sims: list[ChildProcess] = []
    keys: list[str] = []
    for _ in range(2):
        port = free_port()
        sims.append(
            start_infergate(
                [
                    *("simulate", "--model", MODEL, "--host", "127.0.0.1", "--port", str(port)),
                    *("--enable-lora", "--max-loras", "2", "--max-cpu-loras", "12", "--lora-modules"),
                    *[f"{name}={src}" for name, src in ADAPTERS.items()],
                ],
                tmp_path,
                health_url=f"http://127.0.0.1:{port}/health",
            )
        )
        keys.append(f"127.0.0.1:{port}")
    ds = Datastore()
    for i, key in enumerate(keys):
        host, port_s = key.rsplit(":", 1)
        ds.upsert_endpoint(EndpointMeta(name=f"sim-{i}", address=host, port=int(port_s)))
    for name, priority in OBJECTIVES.items():
        ds.upsert_objective(Objective(name=name, priority=priority))
    scraper = MetricsScraper(ds, interval=0.05, health_interval=0.2)
    scrape_task = asyncio.create_task(scraper.run())
    director = Director(
        datastore=ds,
        scheduler=build_scheduler(default_picker_config(lora=True), rng=random.Random(1)),
        flow=None,
    )
    picker = serve_extproc(director, "127.0.0.1", 0, endpoints=ds)
    await picker.start()
    listen = free_port()
    envoy = EnvoyProcess(
        render_bootstrap(EnvoySettings(listen_host="127.0.0.1", listen_port=listen, picker_port=picker.port)),
        concurrency=1,
    )
    try:
        await envoy.start_async()

        async def ready() -> bool:
            return len(ds.candidates()) == 2

        await async_wait_for(ready, timeout=15, what="both simulators scraped")
        yield Fleet(sims, keys, ds, picker, envoy, f"http://127.0.0.1:{listen}")
    finally:
        await envoy.stop_async()
        await picker.stop(0)
        scrape_task.cancel()
        await asyncio.gather(scrape_task, return_exceptions=True)
        for s in sims:
            s.stop()


async def test_openai_sdk_through_envoy_to_simulators(fleet: Fleet) -> None:
    client = fleet.client()
    chat = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello"}], max_tokens=8
    )
    assert chat.model == MODEL
    assert chat.usage is not None and 0 < chat.usage.completion_tokens <= 8
    comp = await client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5)
    assert comp.choices[0].text
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = 0, None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces += 1
        if chunk.usage is not None:
            usage = chunk.usage
    assert pieces > 0
    assert usage is not None and usage.completion_tokens > 0
    models = await client.models.list()
    assert MODEL in [m.id for m in models.data]
    await client.close()


@pytest.mark.parametrize("model", [MODEL, *ADAPTERS])
async def test_each_tutorial_model_streaming_and_not(fleet: Fleet, model: str) -> None:
    client = fleet.client()
    objective = "food-review" if model == "food-review" else "llama3-base-model"
    headers = {"x-gateway-inference-objective": objective}
    done = await client.completions.create(
        model=model,
        prompt="Write as if you were a critic: San Francisco",
        max_tokens=6,
        extra_headers=headers,
    )
    assert done.model == model
    assert done.choices[0].text
    stream = await client.completions.create(
        model=model,
        prompt="Write as if you were a critic: Paris",
        max_tokens=6,
        stream=True,
        extra_headers=headers,
    )
    text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert text
    await client.close()


async def test_a_replica_stopping_takes_it_out_of_rotation(fleet: Fleet) -> None:
    fleet.sims[1].stop()

    async def gone() -> bool:
        return [e.key for e in fleet.ds.candidates()] == [fleet.keys[0]]

    await async_wait_for(gone, timeout=15, what="stopped replica leaves the candidates")
    client = fleet.client()
    for i in range(6):
        chat = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"q{i}"}], max_tokens=3
        )
        assert chat.choices[0].message.content is not None
    await client.close()
