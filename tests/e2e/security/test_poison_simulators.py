"""Poison requests against real ``infergate simulate`` replicas, on both data planes.

A request that makes a model server allocate without bound (a huge ``n``, a million prompt token
ids, an id of 2^64) once stalled two of three replicas past their health probes. The gateway now
refuses it from the limits and the context length the simulators report in ``/v1/models``, and
the replicas stay in rotation and keep serving.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.e2e.security.conftest import MODEL, PLANES, start_gateway
from tests.e2e.security.test_request_policy import assert_openai_error
from tests.support import ChildProcess, free_port, start_infergate

pytestmark = pytest.mark.slow

CONTEXT = 2048


@dataclass
class Simulator:
    child: ChildProcess
    key: str


@pytest.fixture
async def simulators(tmp_path: Path) -> AsyncIterator[list[Simulator]]:
    sims: list[Simulator] = []
    try:
        for _ in range(2):
            port = free_port()
            args = ["simulate", "--model", MODEL, "--host", "127.0.0.1", "--port", str(port)]
            child = await asyncio.to_thread(
                start_infergate,
                [*args, "--max-model-len", str(CONTEXT)],
                tmp_path,
                health_url=f"http://127.0.0.1:{port}/health",
                timeout=60,
            )
            sims.append(Simulator(child, f"127.0.0.1:{port}"))
        yield sims
    finally:
        for sim in sims:
            await asyncio.to_thread(sim.child.stop)


POISON: list[tuple[dict[str, Any], str]] = [
    ({"prompt": "x", "n": 1_000_000_000}, "n_exceeded"),
    ({"prompt": [7] * 1_000_000}, "context_length_exceeded"),
    ({"prompt": [2**64]}, "invalid_token_id"),
    ({"prompt": "x", "max_tokens": 10 * CONTEXT}, "max_tokens_exceeded"),
]


@pytest.mark.parametrize("plane", PLANES)
async def test_poison_requests_never_reach_the_simulators(
    plane: str, simulators: list[Simulator], tmp_path: Path
) -> None:
    gw = await start_gateway(tmp_path, plane, simulators)
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{gw.port}/v1", api_key="-", max_retries=0, timeout=60
    )
    try:
        assert gw.datastore.max_model_len() == CONTEXT  # learned from the simulators' model cards
        # raw HTTP: the SDK takes half a minute to serialise a million ids, the gateway not a second
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
            for body, code in POISON:
                url = f"http://127.0.0.1:{gw.port}/v1/completions"
                data = io.BytesIO(json.dumps({"model": MODEL, **body}).encode())
                async with s.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
                    error = assert_openai_error(
                        r.status, r.content_type, await r.text(), 400, "invalid_request_error"
                    )
                assert error["code"] == code, error
        # beyond what vLLM accepts but inside the gateway's limits: the simulator's own 400 passes
        with pytest.raises(openai.BadRequestError) as err:
            await client.completions.create(model=MODEL, prompt="x", n=2, temperature=0)
        assert isinstance(err.value.body, dict) and "greedy" in str(err.value.body.get("message")), err.value
        # both replicas are still in rotation and serve
        assert len(gw.datastore.candidates()) == 2
        done = await client.completions.create(model=MODEL, prompt="hello", max_tokens=3)
        assert done.usage is not None and done.usage.completion_tokens == 3
    finally:
        await client.close()
        await gw.stop()
