"""llm-d-router's burst prefix pipeline (``deploy/config/epp-burst-prefix-cache-config.yaml``) in
the gateway, against simulated model servers on loopback: the token producer renders each prompt
through a simulator's render endpoint, the window assigns the burst jointly, and the
``prefix-cache-scorer`` naming the producer routes each request to its assignment.

The config is the published one with the placeholders filled in (model name, render URL) and, so
that a loaded test machine cannot split one burst over two windows, a longer window; the
verbatim file and the window's timing are covered by ``tests/unit/test_burst_window.py``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import yaml

from infergate.api.loader import load_manifests
from infergate.app.gateway import Gateway, ManifestPoolSource
from infergate.config.picker import parse_picker_config
from infergate.requestcontrol.burst import BurstWindow
from infergate.simulator.args import SimulatorArgs
from infergate.simulator.server import SimServer
from tests.support import local_settings, static_pool_docs
from tests.unit.test_burst_window import BURST_CONFIG

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
TIMEOUT = 60.0


def config(render_port: int, *, max_per_replica: int = -1) -> str:
    return (
        BURST_CONFIG.replace("hf-repo/model-name", MODEL)
        .replace(
            "http://<vllm-service>.<namespace>.svc.cluster.local:8000", f"http://127.0.0.1:{render_port}"
        )
        .replace("windowDurationMs: 100", "windowDurationMs: 1000")
        .replace("maxPerReplica: -1", f"maxPerReplica: {max_per_replica}")
    )


@asynccontextmanager
async def gateway(tmp_path: Path, *, max_per_replica: int = -1) -> AsyncIterator[tuple[Gateway, BurstWindow]]:
    sims = [
        SimServer(
            SimulatorArgs(host="127.0.0.1", port=0, served_model_names=(MODEL,), time_scale=0.05, seed=i)
        )
        for i in range(4)
    ]
    for s in sims:
        await s.start()
    docs = tmp_path / "pool.yaml"
    docs.write_text(yaml.safe_dump_all(static_pool_docs([f"127.0.0.1:{s.port}" for s in sims])))
    picker = parse_picker_config(config(sims[0].port, max_per_replica=max_per_replica))
    gw = Gateway(
        ManifestPoolSource(load_manifests([docs])),
        local_settings({"proxy.served_header": True, "seed": 3}),
        picker=picker,
    )
    await gw.start()
    try:
        assert await gw.wait_ready(TIMEOUT)
        assert gw.core is not None and gw.core.burst is not None and gw.core.tokens is not None
        yield gw, gw.core.burst
    finally:
        await gw.stop()
        for s in sims:
            await s.stop()


async def burst(gw: Gateway, prompts: list[str]) -> list[str]:
    """Send the prompts at once; the endpoint that served each."""
    url = f"http://127.0.0.1:{gw.port}/v1/completions"
    async with aiohttp.ClientSession() as session:

        async def send(p: str) -> str:
            async with session.post(url, json={"model": MODEL, "prompt": p, "max_tokens": 2}) as resp:
                assert resp.status == 200, await resp.text()
                return resp.headers["x-gateway-destination-endpoint-served"]

        return await asyncio.gather(*(send(p) for p in prompts))


PROMPT = "Rollout step 7. Solve the following problem and show your work: " * 6


async def test_a_rollout_group_lands_on_one_replica_and_groups_spread(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (gw, window):
        served = await burst(gw, [PROMPT] * 8)
        assert window.windows == 1  # one burst, one window
        assert len(set(served)) == 1
        groups = [f"Group {g}. " + PROMPT for g in range(4)]
        served = await burst(gw, [p for p in groups for _ in range(2)])
        assert window.windows == 2
        assert all(served[2 * g] == served[2 * g + 1] for g in range(4))
        assert len(set(served)) == 4  # the window balances the groups over the replicas
        assert gw.core is not None and gw.core.tokens is not None and gw.core.tokens.failures == 0


async def test_a_cap_per_replica_spills_the_group(tmp_path: Path) -> None:
    async with gateway(tmp_path, max_per_replica=3) as (gw, window):
        served = await burst(gw, [PROMPT] * 8)
        assert window.windows == 1
        assert sorted(Counter(served).values()) == [2, 3, 3]
