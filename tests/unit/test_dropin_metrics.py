"""Metric names of both families, label-cardinality caps, build info, and the TTFT histogram.

llm-d-router v0.10 emits ``llm_d_epp_*`` and still writes the GIE names; infergate writes both from
one call. Client-derived label values (model names, fairness ids) are capped at 1000 distinct
values each, the rest reported as ``other``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from infergate.telemetry import LABEL_CAP, OTHER, GatewayMetrics
from tests.unit.test_director import FakeClock, body, make_director, make_store


def _samples(m: GatewayMetrics, name: str) -> dict[frozenset[tuple[str, str]], float]:
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            if s.name == name:
                out[frozenset(s.labels.items())] = s.value
    return out


def test_both_families_from_one_call_with_renamed_labels() -> None:
    m = GatewayMetrics(CollectorRegistry())
    m.request_total.labels(model_name="a", target_model_name="b", fairness_id="f", priority="0").inc()
    m.pool_per_pod_queue_size.labels("pool", "pod-0").set(4)
    m.scheduler_e2e_duration.observe(0.001)
    labels = frozenset({("model_name", "a"), ("target_model_name", "b"), ("priority", "0")})
    assert _samples(m, "inference_objective_request_total") == {labels: 1.0}
    assert _samples(m, "llm_d_epp_request_total") == {labels | {("fairness_id", "f")}: 1.0}
    assert _samples(m, "llm_d_epp_per_endpoint_queue_size") == {
        frozenset({("name", "pool"), ("model_server_endpoint", "pod-0")}): 4.0
    }
    assert _samples(m, "inference_pool_per_pod_queue_size") == {
        frozenset({("name", "pool"), ("model_server_pod", "pod-0")}): 4.0
    }
    assert sum(_samples(m, "llm_d_epp_scheduler_e2e_duration_seconds_count").values()) == 1
    m.pool_per_pod_queue_size.remove("pool", "pod-0")
    assert _samples(m, "llm_d_epp_per_endpoint_queue_size") == {}
    assert _samples(m, "inference_pool_per_pod_queue_size") == {}


def test_build_info_is_set_in_both_families() -> None:
    m = GatewayMetrics(CollectorRegistry())
    for name in ("inference_extension_info", "llm_d_epp_info"):
        ((labels, value),) = _samples(m, name).items()
        assert value == 1.0 and {k for k, _ in labels} == {"commit", "build_ref"}


def test_model_and_fairness_labels_are_capped() -> None:
    m = GatewayMetrics(CollectorRegistry())

    def start(model: str) -> None:
        m.running_requests.labels(
            model_name=model, target_model_name=model, fairness_id="f", priority="0"
        ).inc()

    for i in range(LABEL_CAP):  # model_name and target_model_name share one cap
        start(f"m{i}")
    start("late")
    start("m0")  # a value already seen keeps its series
    running = _samples(m, "inference_objective_running_requests")
    assert len(running) == LABEL_CAP + 1
    assert running[frozenset({("model_name", OTHER)})] == 1.0
    assert running[frozenset({("model_name", "m0")})] == 2.0
    # fairness ids have their own cap: a fresh id is still kept
    m.fc_rejected_total.labels(priority="0", reason="capacity").inc()
    m.fc_queue_size.labels(
        fairness_id="tenant-a", priority="0", inference_pool="p", model_name="m1", target_model_name="late"
    ).set(1)
    queued = _samples(m, "llm_d_epp_flow_control_queue_size")
    assert {dict(k)["fairness_id"] for k in queued} == {"tenant-a"}
    assert {dict(k)["target_model_name"] for k in queued} == {OTHER}


async def test_ttft_is_recorded_for_streamed_and_plain_responses() -> None:
    clock = FakeClock()
    ds = make_store(clock)
    m = GatewayMetrics(CollectorRegistry())
    d = make_director(ds, clock, metrics=m)
    ctx = await d.handle_request(path="/v1/completions", headers={}, body=body(stream=True))
    clock.t += 0.2
    d.handle_response_headers(ctx, 200, {"content-type": "text/event-stream"})
    clock.t += 0.3
    d.handle_response_chunk(ctx, b'data: {"choices":[]}\n\n', end_of_stream=False)
    clock.t += 1.0
    d.handle_response_chunk(ctx, b"data: [DONE]\n\n", end_of_stream=True)
    d.handle_response_complete(ctx)
    plain = await d.handle_request(path="/v1/completions", headers={}, body=body())
    clock.t += 0.25
    d.handle_response_headers(plain, 200, {"content-type": "application/json"})
    clock.t += 0.5
    d.handle_response_chunk(plain, b"{}", end_of_stream=True)
    d.handle_response_complete(plain)
    for family in ("inference_objective_request_ttft_seconds", "llm_d_epp_request_ttft_seconds"):
        assert sum(_samples(m, f"{family}_count").values()) == 2
        assert abs(sum(_samples(m, f"{family}_sum").values()) - (0.5 + 0.25)) < 1e-9
