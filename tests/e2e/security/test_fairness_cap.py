"""Fairness ids come from a client header; a client sending a new one with every request must not
grow the gateway's flows and metric series without bound (upstream caps distinct values at 1,000).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.security.conftest import MODEL, PLANES, Replica, start_gateway

FAMILY = "inference_extension_flow_control_request_queue_duration_seconds"


@pytest.mark.parametrize("plane", PLANES)
async def test_distinct_fairness_ids_are_capped(plane: str, replicas: list[Replica], tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path, plane, replicas)
    ids = [f"tenant-{i}" for i in range(1010)] + ["x" * 200]  # and one id longer than 128 characters
    limit = asyncio.Semaphore(16)
    try:
        async with aiohttp.ClientSession() as s:

            async def send(fairness_id: str) -> int:
                async with (
                    limit,
                    s.post(
                        f"http://127.0.0.1:{gw.port}/v1/completions",
                        json={"model": MODEL, "prompt": "x", "max_tokens": 1},
                        headers={"x-gateway-inference-fairness-id": fairness_id},
                    ) as r,
                ):
                    await r.read()
                    return r.status

            # the first 1,000 distinct ids all arrive before any later one
            statuses = await asyncio.gather(*(send(i) for i in ids[:1000]))
            statuses += await asyncio.gather(*(send(i) for i in ids[1000:]))
        labels: set[str] = set()
        for family in gw.metrics.registry.collect():
            if family.name == FAMILY:
                labels |= {sample.labels["fairness_id"] for sample in family.samples}
    finally:
        await gw.stop()
    assert set(statuses) == {200}
    assert len(labels) <= 1001, len(labels)  # 1,000 ids, then one shared value
    assert "x" * 200 not in labels and {"tenant-0", "tenant-999"} <= labels
    assert not {f"tenant-{i}" for i in range(1000, 1010)} & labels
