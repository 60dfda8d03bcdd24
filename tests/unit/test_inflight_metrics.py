"""llm-d-router's ``llm_d_epp_inflight_requests`` / ``llm_d_epp_inflight_tokens`` by endpoint and
flow, exported when a config declares ``inflight-load-producer``: a request counts from its
dispatch to its end, its prompt tokens until its first streamed chunk (prefill done)."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry

from infergate.flowcontrol import FlowControlConfig, FlowController, SaturationDetector
from infergate.requestcontrol.director import Director
from infergate.telemetry import GatewayMetrics
from tests.unit.test_flowcontrol_room import AffinityScheduler, FakeClock, metas, pool, scrape

PROMPT = "x" * 400  # 100 tokens estimated (UTF-8 bytes / 4)


def _director(producer: str | None) -> tuple[Director, GatewayMetrics]:
    clock = FakeClock()
    ds = pool(clock, 1, {"chat": 5})
    scrape(ds, clock, metas(1)[0].key, 0)
    metrics = GatewayMetrics(CollectorRegistry())
    flow = FlowController(ds, detector=SaturationDetector(), clock=clock, config=FlowControlConfig())
    d = Director(
        datastore=ds,
        scheduler=AffinityScheduler(metas(1)[0].key),
        flow=flow,
        clock=clock,
        metrics=metrics,
        check_models=False,
    )
    d.set_inflight_producer(producer)
    return d, metrics


def _gauges(metrics: GatewayMetrics) -> tuple[float | None, float | None]:
    labels = {
        "endpoint_name": "ep0",
        "namespace": "default",
        "producer_name": "load",
        "fairness_id": "tenant-a",
        "priority": "5",
    }
    sample = metrics.registry.get_sample_value
    return sample("llm_d_epp_inflight_requests", labels), sample("llm_d_epp_inflight_tokens", labels)


async def test_a_streamed_request_counts_until_its_end_and_its_prompt_until_its_first_token() -> None:
    d, metrics = _director("load")
    body = json.dumps({"model": "m", "prompt": PROMPT, "max_tokens": 4, "stream": True}).encode()
    headers = {"x-gateway-inference-objective": "chat", "x-llm-d-inference-fairness-id": "tenant-a"}
    ctx = await d.handle_request(path="/v1/completions", headers=headers, body=body)
    assert _gauges(metrics) == (1.0, 100.0)
    d.handle_response_headers(ctx, 200, {"content-type": "text/event-stream"})
    d.handle_response_chunk(ctx, b'data: {"choices": [{"text": "hi"}]}\n\n', end_of_stream=False)
    assert _gauges(metrics) == (1.0, 0.0)  # prefill done: the prompt no longer loads the endpoint
    d.handle_response_chunk(ctx, b"data: [DONE]\n\n", end_of_stream=True)
    d.handle_response_complete(ctx)
    assert _gauges(metrics) == (0.0, 0.0)


async def test_without_the_producer_there_are_no_such_series() -> None:
    d, metrics = _director(None)
    body = json.dumps({"model": "m", "prompt": PROMPT, "max_tokens": 4}).encode()
    ctx = await d.handle_request(path="/v1/completions", headers={}, body=body)
    d.handle_response_complete(ctx)
    assert "llm_d_epp_inflight" not in metrics.render().decode()


def test_the_config_s_producer_is_wired_by_name() -> None:
    import random

    from infergate.app.core import build_core
    from infergate.config.picker import parse_picker_config
    from infergate.config.settings import Settings
    from infergate.types import PoolSpec

    clock = FakeClock()
    ds = pool(clock, 1)
    config = parse_picker_config(
        "plugins: [{type: inflight-load-producer, name: load}, {type: queue-scorer}, "
        "{type: max-score-picker}]\n"
    )
    metrics = GatewayMetrics(CollectorRegistry())
    core = build_core(
        ds,
        PoolSpec(name="pool"),
        picker=config,
        settings=Settings(),
        metrics=metrics,
        clock=clock,
        rng=random.Random(1),
    )
    assert core.director._inflight is not None and core.director._inflight[0] == "load"
