"""The picker's own latency and a stream's inter-token latency, under llm-d-router v0.10's names:
``llm_d_epp_request_streaming_itl_seconds`` (the gap between consecutive chunks of a streamed 200
answer, labelled as the other per-request series), ``llm_d_epp_request_processing_duration_seconds``
(routed or refused) and ``llm_d_epp_response_processing_duration_seconds`` (the chunk handler's
time for a stream, head to completion otherwise). Timed with a fake clock."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from infergate.errors import RequestError
from infergate.telemetry import GatewayMetrics
from tests.integration.test_extproc import metric_value
from tests.unit.test_director import FakeClock, body, make_director, make_store

ITL = "llm_d_epp_request_streaming_itl_seconds"
REQUEST = "llm_d_epp_request_processing_duration_seconds"
RESPONSE = "llm_d_epp_response_processing_duration_seconds"


async def test_itl_is_the_gap_between_chunks_of_a_stream() -> None:
    clock = FakeClock()
    registry = CollectorRegistry()
    d = make_director(make_store(clock), clock, metrics=GatewayMetrics(registry))
    ctx = await d.handle_request(path="/v1/completions", headers={}, body=body(stream=True))
    d.handle_response_headers(ctx, 200, {"content-type": "text/event-stream"})
    for gap in (0.5, 0.008, 0.03):  # the first chunk's wait is its TTFT, not an ITL
        clock.t += gap
        d.handle_response_chunk(ctx, b'data: {"choices":[{"text":"a"}]}\n\n', end_of_stream=False)
    clock.t += 0.05
    d.handle_response_chunk(ctx, b"data: [DONE]\n\n", end_of_stream=True)
    d.handle_response_complete(ctx)
    labels = {
        "model_name": ctx.request.model,
        "target_model_name": ctx.request.target_model,
        "fairness_id": ctx.request.fairness_id,
        "priority": str(ctx.request.priority),
    }
    assert metric_value(registry, f"{ITL}_count", **labels) == 3
    assert metric_value(registry, f"{ITL}_sum", **labels) == pytest.approx(0.088)
    assert metric_value(registry, f"{ITL}_bucket", le="0.01", **labels) == 1
    assert metric_value(registry, f"{ITL}_bucket", le="0.04", **labels) == 2
    assert metric_value(registry, f"{RESPONSE}_count") == 1  # a stream: its handler time, 0 here


async def test_a_whole_answer_has_no_itl_and_its_response_time_runs_head_to_end() -> None:
    clock = FakeClock()
    registry = CollectorRegistry()
    d = make_director(make_store(clock), clock, metrics=GatewayMetrics(registry))
    ctx = await d.handle_request(path="/v1/completions", headers={}, body=body())
    clock.t += 1.0
    d.handle_response_headers(ctx, 200, {"content-type": "application/json"})
    clock.t += 0.25
    d.handle_response_chunk(ctx, b'{"choices":[{"text":"a"}]}', end_of_stream=True)
    d.handle_response_complete(ctx)
    assert metric_value(registry, f"{ITL}_count") == 0
    assert metric_value(registry, f"{RESPONSE}_sum") == pytest.approx(0.25)
    assert metric_value(registry, f"{REQUEST}_count") == 1


async def test_refused_requests_count_in_the_processing_time() -> None:
    clock = FakeClock()
    registry = CollectorRegistry()
    d = make_director(make_store(clock), clock, metrics=GatewayMetrics(registry))
    with pytest.raises(RequestError):
        await d.handle_request(path="/v1/completions", headers={}, body=b"{not json")
    assert metric_value(registry, f"{REQUEST}_count") == 1
    assert metric_value(registry, f"{RESPONSE}_count") == 0  # never reached the response phase
