"""TTFT and TPOT per objective, under both families' names and labels.

The GIE series (``inference_objective_*``) are labelled by model and target model. llm-d-router v0.10
(``llm_d_epp_*``) adds the fairness id and the priority of the objective the request resolved to,
TTFT adds ``streaming``, and its TPOT is ``llm_d_epp_request_streaming_tpot_seconds``. The priority
label is how an objective that is not a model (one named by ``x-gateway-inference-objective``)
shows up.
"""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from infergate.telemetry import GatewayMetrics
from infergate.types import EndpointMetrics, Objective
from tests.unit.test_director import BASE, FakeClock, body, make_director, make_store

# llm-d-router v0.10 pkg/epp/metrics/llm_d_router_metrics.go: label names per family
LLMD_LABELS = {
    "llm_d_epp_request_total": {"model_name", "target_model_name", "fairness_id", "priority"},
    "llm_d_epp_request_error_total": {
        "model_name",
        "target_model_name",
        "fairness_id",
        "priority",
        "error_code",
    },
    "llm_d_epp_request_duration_seconds": {"model_name", "target_model_name", "fairness_id", "priority"},
    "llm_d_epp_request_ttft_seconds": {
        "model_name",
        "target_model_name",
        "fairness_id",
        "priority",
        "streaming",
    },
    "llm_d_epp_request_streaming_tpot_seconds": {
        "model_name",
        "target_model_name",
        "fairness_id",
        "priority",
    },
    "llm_d_epp_request_ntpot_seconds": {"model_name", "target_model_name", "fairness_id", "priority"},
    "llm_d_epp_request_size_bytes": {"model_name", "target_model_name", "fairness_id", "priority"},
    "llm_d_epp_response_size_bytes": {"model_name", "target_model_name", "fairness_id", "priority"},
    "llm_d_epp_request_input_tokens": {"model_name", "target_model_name", "fairness_id", "priority"},
    "llm_d_epp_request_output_tokens": {"model_name", "target_model_name", "fairness_id", "priority"},
    "llm_d_epp_request_cached_tokens": {"model_name", "target_model_name", "fairness_id", "priority"},
    "llm_d_epp_request_running": {"model_name", "target_model_name", "fairness_id", "priority"},
}
GIE_LABELS = {
    "inference_objective_request_ttft_seconds": {"model_name", "target_model_name"},
    "inference_objective_request_tpot_seconds": {"model_name", "target_model_name"},
    "inference_objective_request_total": {"model_name", "target_model_name", "priority"},
    "inference_objective_running_requests": {"model_name"},
}


def _label_names(m: GatewayMetrics) -> dict[str, set[str]]:
    """Family name (as exported, counters with ``_total``) → its label names, from /metrics."""
    out: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            name = s.name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
            out.setdefault(name, set()).update(k for k in s.labels if k != "le")
    return out


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
    gie = {"model_name": model, "target_model_name": ctx.request.target_model}
    llmd = {**gie, "fairness_id": ctx.request.fairness_id, "priority": str(ctx.request.priority)}
    for family, labels in (
        ("inference_objective_request_tpot_seconds", gie),
        ("llm_d_epp_request_streaming_tpot_seconds", llmd),
    ):
        assert m.registry.get_sample_value(f"{family}_count", labels) == 1
        assert abs((m.registry.get_sample_value(f"{family}_sum", labels) or 0) - 1.0 / 4) < 1e-9
    # no _created series beside the histogram (the reference exports none)
    assert b"_created" not in m.render()


async def test_latency_per_objective_carries_llmd_labels() -> None:
    """An objective named by header (not a model) is told apart by its priority; each exported
    family has exactly the label names of its upstream counterpart."""
    clock = FakeClock()
    ds = make_store(clock)
    ds.upsert_objective(Objective(name="food-review", priority=10))
    ds.upsert_objective(Objective(name="batch", priority=-5))
    m = GatewayMetrics(CollectorRegistry())
    d = make_director(ds, clock, metrics=m)

    async def run(headers: dict[str, str], ttft: float, *, stream: bool) -> None:
        ctx = await d.handle_request(
            path="/v1/completions", headers=headers, body=body(model="food-review", stream=stream)
        )
        clock.t += ttft
        d.handle_response_headers(
            ctx, 200, {"content-type": "text/event-stream" if stream else "application/json"}
        )
        if stream:
            d.handle_response_chunk(ctx, b'data: {"choices":[{"text":"a"}]}\n\n', end_of_stream=False)
            clock.t += 0.3
            usage = (
                b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\ndata: [DONE]\n\n'
            )
            d.handle_response_chunk(ctx, usage, end_of_stream=True)
        else:
            d.handle_response_chunk(
                ctx, b'{"usage":{"prompt_tokens":3,"completion_tokens":4}}', end_of_stream=True
            )
        d.handle_response_complete(ctx)

    await run({}, 0.2, stream=True)  # objective food-review (named like the model), priority 10
    batch = {"x-gateway-inference-objective": "batch", "x-gateway-inference-fairness-id": "tenant-a"}
    await run(batch, 0.7, stream=True)
    await run(batch, 0.4, stream=False)

    base = {"model_name": "food-review", "target_model_name": "food-review"}
    fr = {**base, "fairness_id": "default-flow", "priority": "10"}
    bt = {**base, "fairness_id": "tenant-a", "priority": "-5"}
    ttft = "llm_d_epp_request_ttft_seconds_sum"
    assert m.registry.get_sample_value(ttft, {**fr, "streaming": "true"}) == pytest.approx(0.2)
    assert m.registry.get_sample_value(ttft, {**bt, "streaming": "true"}) == pytest.approx(0.7)
    assert m.registry.get_sample_value(ttft, {**bt, "streaming": "false"}) == pytest.approx(0.4)
    assert m.registry.get_sample_value(ttft, {**fr, "streaming": "false"}) is None
    tpot = "llm_d_epp_request_streaming_tpot_seconds_count"
    assert m.registry.get_sample_value(tpot, fr) == m.registry.get_sample_value(tpot, bt) == 1
    assert m.registry.get_sample_value("llm_d_epp_request_total", bt) == 2
    # the GIE names keep their own labels: all three requests in one series
    assert m.registry.get_sample_value("inference_objective_request_ttft_seconds_count", base) == 3

    names = _label_names(m)
    for family, labels in {**LLMD_LABELS, **GIE_LABELS}.items():
        if family == "llm_d_epp_request_error_total":
            continue  # checked below, once an error exists
        assert names.get(family) == labels, family
    assert "llm_d_epp_request_tpot_seconds" not in names  # llm-d's name is request_streaming_tpot

    ctx = await d.handle_request(path="/v1/completions", headers=batch, body=body(model="food-review"))
    d.handle_response_headers(ctx, 500, {"content-type": "application/json"})
    d.handle_response_complete(ctx)
    assert _label_names(m)["llm_d_epp_request_error_total"] == LLMD_LABELS["llm_d_epp_request_error_total"]
    assert (
        m.registry.get_sample_value("llm_d_epp_request_error_total", {**bt, "error_code": "ModelServerError"})
        == 1
    )


async def test_a_streamed_answers_tpot_reaches_the_latency_scorer_with_a_token_count() -> None:
    """The scheduler's predicted-latency scorer learns the time per token after the first from a
    stream: its token count comes from usage when the client asked for it, else from the events
    counted; a stream of one event (nothing after the first token) teaches it nothing."""
    import random

    from infergate.config.picker import default_picker_config
    from infergate.requestcontrol.director import Director
    from infergate.scheduling.engine.scheduler import build_scheduler
    from infergate.scheduling.plugins.latency import PredictedLatencyScorer

    clock = FakeClock()
    sched = build_scheduler(default_picker_config(lora=True), rng=random.Random(1), clock=clock)
    ds = make_store(clock)
    d = Director(datastore=ds, scheduler=sched, flow=None, clock=clock, rng=random.Random(7))
    scorer = sched.plugin("predicted-latency-scorer")
    assert isinstance(scorer, PredictedLatencyScorer)
    event = b'data: {"choices":[{"text":"a"}]}\n\n'

    async def stream(rest: bytes) -> tuple[str, float, float]:
        """(endpoint, its factor before, after) for an answer whose first event comes 0.1 s in
        and ``rest`` 0.7 s later."""
        for ep in ds.endpoints():  # a fresh scrape: the store's metrics go stale after 2 s
            ds.update_metrics(ep.key, EndpointMetrics(updated_at=clock.now(), max_active_adapters=2))
        ctx = await d.handle_request(path="/v1/completions", headers={}, body=body(stream=True))
        before = factors().get(ctx.target.key, 1.0)
        d.handle_response_headers(ctx, 200, {"content-type": "text/event-stream"})
        clock.t += 0.1
        d.handle_response_chunk(ctx, event, end_of_stream=False)
        clock.t += 0.7
        d.handle_response_chunk(ctx, rest + b"data: [DONE]\n\n", end_of_stream=True)
        d.handle_response_complete(ctx)
        return ctx.target.key, before, factors()[ctx.target.key]

    def factors() -> dict[str, float]:
        return {k: v["tpot_observed_over_predicted"] for k, v in scorer.debug_state().items()}

    _, before, after = await stream(b"")  # one event, no usage: no time per token to take
    assert after == before == 1.0
    _, before, after = await stream(
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":8}}\n\n'
    )
    # 0.7 s over the 7 tokens after the first: 100 ms per token against ~7 ms predicted (a ratio
    # capped at 10), which moves the factor 2 % of the way
    assert after == pytest.approx(before + 0.02 * (10 - before)) and before == 1.0
    _, before, after = await stream(event * 7)  # no usage: 8 events counted
    assert after == pytest.approx(before + 0.02 * (10 - before))
    one = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
    _, before, after = await stream(event * 7 + one)  # usage wins over the events it explains
    assert after == before


async def test_a_long_stream_reports_its_tpot_at_its_33rd_token_and_not_again() -> None:
    """The scheduler hears a streamed answer's time per token once it has TPOT_REPORT_TOKENS tokens,
    long before its end, and only then."""
    import random

    from infergate.config.picker import default_picker_config
    from infergate.requestcontrol.director import Director
    from infergate.requestcontrol.usage import TPOT_REPORT_TOKENS
    from infergate.scheduling.engine.scheduler import build_scheduler

    clock = FakeClock()
    sched = build_scheduler(default_picker_config(lora=True), rng=random.Random(1), clock=clock)
    d = Director(datastore=make_store(clock), scheduler=sched, flow=None, clock=clock, rng=random.Random(7))
    event = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
    chat = json.dumps({"model": BASE, "messages": [{"role": "user", "content": "hi"}], "stream": True})

    def factor(key: str) -> float:
        return float(sched.debug_state()["predicted-latency-scorer"][key]["tpot_observed_over_predicted"])

    ctx = await d.handle_request(path="/v1/chat/completions", headers={}, body=chat.encode())
    key = ctx.target.key
    d.handle_response_headers(ctx, 200, {"content-type": "text/event-stream"})
    clock.t += 0.1
    role = b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
    d.handle_response_chunk(ctx, role + event, end_of_stream=False)  # the first token
    clock.t += 0.8
    d.handle_response_chunk(ctx, event * (TPOT_REPORT_TOKENS - 2), end_of_stream=False)
    assert factor(key) == 1.0  # one token short: not yet
    d.handle_response_chunk(ctx, event, end_of_stream=False)
    reported = factor(key)
    assert reported > 1.0  # 0.8 s over 32 gaps: 25 ms per token, slower than predicted
    clock.t += 10.0
    d.handle_response_chunk(ctx, event * 200 + b"data: [DONE]\n\n", end_of_stream=True)
    d.handle_response_complete(ctx)
    assert factor(key) == reported
