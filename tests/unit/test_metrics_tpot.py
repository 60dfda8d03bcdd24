"""Time per output token per objective: streamed responses, from the first token to the last."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from infergate.telemetry import GatewayMetrics
from tests.unit.test_director import FakeClock, body, make_director, make_store


async def test_tpot_counts_the_gaps_after_the_first_token() -> None:
    clock = FakeClock()
    m = GatewayMetrics(CollectorRegistry())
    d = make_director(make_store(clock), clock, metrics=m)
    ctx = await d.handle_request(path="/v1/completions", headers={}, body=body(stream=True))
    model = ctx.request.model
    d.handle_response_headers(ctx, 200, {"content-type": "text/event-stream"})
    clock.t += 0.5
    d.handle_response_chunk(ctx, b'data: {"choices":[{"text":"a"}]}\n\n', end_of_stream=False)
    clock.t += 1.0
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}\n\ndata: [DONE]\n\n'
    d.handle_response_chunk(ctx, usage, end_of_stream=True)
    d.handle_response_complete(ctx)
    labels = {"model_name": model, "target_model_name": ctx.request.target_model}
    for family in ("inference_objective_request_tpot_seconds", "llm_d_epp_request_tpot_seconds"):
        assert m.registry.get_sample_value(f"{family}_count", labels) == 1
        assert abs((m.registry.get_sample_value(f"{family}_sum", labels) or 0) - 1.0 / 4) < 1e-9
    # no _created series beside the histogram (the reference exports none)
    assert b"_created" not in m.render()
