"""``probabilistic-admitter`` through the built-in proxy: upstream's example config, two fake vLLM
servers whose scrapes show a full waiting queue (saturation 1.0, so every sheddable request is shed
and no draw decides), and the utilization-detector neutered as upstream's config does, so the 429
comes from the admitter, not from flow control."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from infergate.config.picker import parse_picker_config
from infergate.types import Objective
from tests.integration import test_proxy_faults
from tests.integration.test_proxy_faults import MODEL, FakeServer, start_gateway, url
from tests.unit.test_probabilistic_admitter import UPSTREAM

SATURATED = (
    f'vllm:num_requests_waiting{{model_name="{MODEL}"}} 5\n'
    f'vllm:num_requests_running{{model_name="{MODEL}"}} 4\n'
    f'vllm:kv_cache_usage_perc{{model_name="{MODEL}"}} 0.5\n'
)


async def test_upstream_config_sheds_sheddable_requests_through_the_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(test_proxy_faults, "METRICS", SATURATED)
    servers = [FakeServer(), FakeServer()]
    for s in servers:
        await s.start()
    gw = await start_gateway(tmp_path, servers, picker=parse_picker_config(UPSTREAM))
    try:
        assert all(e.metrics.waiting_queue_size == 5 for e in gw.datastore.candidates())
        gw.datastore.upsert_objective(Objective(name="batch", priority=-1))
        gw.datastore.upsert_objective(Objective(name="interactive", priority=1))
        payload = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                headers = {"x-gateway-inference-objective": "interactive"}
                async with session.post(url(gw), json=payload, headers=headers) as r:
                    assert r.status == 200, await r.text()
                async with session.post(
                    url(gw), json=payload, headers={"x-gateway-inference-objective": "batch"}
                ) as r:
                    assert r.status == 429
                    assert r.headers["x-llm-d-request-dropped-reason"] == "rejected-saturated"
                    err = (await r.json())["error"]
                    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
                    assert err["message"].startswith("probabilistic-admitter: sheddable request rejected")
        assert len(servers[0].seen) + len(servers[1].seen) == 3  # only the interactive requests
        labels = {
            "model_name": MODEL,
            "target_model_name": MODEL,
            "fairness_id": "default-flow",
            "priority": "-1",
            "error_code": "ResourceExhausted",
        }
        assert gw.metrics.registry.get_sample_value("llm_d_epp_request_error_total", labels) == 3
    finally:
        await gw.stop()
        for s in servers:
            await s.stop()
