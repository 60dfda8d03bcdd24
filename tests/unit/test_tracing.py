"""OpenTelemetry spans per request: parse, admission, queue, schedule, upstream under one request
span, each carrying the request id; errors end the trace; tracing is off unless configured."""

from __future__ import annotations

import random
import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from infergate.config.picker import default_picker_config
from infergate.errors import ConfigError, ModelNotFoundError
from infergate.requestcontrol.director import Director
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.tracing import REQUEST_ID, RequestTracer, _import_problem, tracer_from_env
from tests.unit.test_director import FakeClock, body, make_store


class PassingFlow:
    """Flow control that admits at once (the queue span still wraps the wait)."""

    with_room = None

    async def admit(self, request: object) -> bool:
        return False

    def observe_tpot(self, tpot_seconds: float) -> None:
        pass

    def observe_ttft(self, seconds: float) -> None:
        pass


def traced_director() -> tuple[Director, InMemorySpanExporter]:
    clock = FakeClock()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    director = Director(
        datastore=make_store(clock),
        scheduler=build_scheduler(default_picker_config(lora=True), rng=random.Random(1), clock=clock),
        flow=PassingFlow(),  # type: ignore[arg-type]
        clock=clock,
        rng=random.Random(7),
    )
    director.set_tracer(RequestTracer(provider.get_tracer("test")))
    return director, exporter


async def test_a_request_has_one_span_per_phase_with_its_request_id() -> None:
    director, exporter = traced_director()
    ctx = await director.handle_request(
        path="/v1/completions", headers={"x-request-id": "req-42"}, body=body(stream=True)
    )
    director.handle_response_headers(ctx, 200, {"content-type": "text/event-stream"})
    director.handle_response_chunk(ctx, b"data: [DONE]\n\n", end_of_stream=True)
    director.handle_response_complete(ctx)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"infergate.request", "parse", "admission", "queue", "schedule", "upstream"}
    root = spans["infergate.request"]
    assert root.attributes is not None and root.attributes["infergate.priority"] == 0
    for span in spans.values():
        assert span.attributes is not None and span.attributes[REQUEST_ID] == "req-42"
        if span is not root:
            assert span.parent is not None and span.parent.span_id == root.context.span_id
    upstream = spans["upstream"]
    assert upstream.attributes is not None and upstream.attributes["infergate.endpoint"] == ctx.target.key
    assert upstream.attributes["http.response.status_code"] == 200
    order = sorted(spans.values(), key=lambda s: s.start_time or 0)
    assert [s.name for s in order][1:] == ["parse", "admission", "queue", "schedule", "upstream"]


async def test_a_rejected_request_ends_its_trace_with_the_error() -> None:
    director, exporter = traced_director()
    with pytest.raises(ModelNotFoundError):
        await director.handle_request(
            path="/v1/completions", headers={"x-request-id": "r1"}, body=body(model="no-such-model")
        )
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert "upstream" not in spans and "schedule" not in spans
    assert spans["admission"].status.status_code is StatusCode.ERROR
    root = spans["infergate.request"]
    assert root.attributes is not None and root.attributes["http.response.status_code"] == 404


def test_tracing_is_off_without_an_endpoint_and_names_the_extra_when_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert tracer_from_env({}) is None
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with pytest.raises(ConfigError, match=r"pip install 'infergate\[otel\]'"):
        tracer_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})


def test_the_exporter_variable_turns_tracing_off_or_names_what_is_not_wired() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
    assert tracer_from_env({**endpoint, "OTEL_TRACES_EXPORTER": "none"}) is None
    with pytest.raises(ConfigError, match=r"OTEL_TRACES_EXPORTER='zipkin'.*OTLP/gRPC only"):
        tracer_from_env({**endpoint, "OTEL_TRACES_EXPORTER": "zipkin"})
    tracer = tracer_from_env({**endpoint, "OTEL_TRACES_EXPORTER": "otlp"})
    assert tracer is not None
    tracer.shutdown()


def test_shadowed_protobuf_modules_are_told_apart_from_a_missing_extra() -> None:
    shadowed = ImportError(
        "cannot import name 'InstrumentationScope'", name="opentelemetry.proto.common.v1.common_pb2"
    )
    message = _import_problem("OTEL_EXPORTER_OTLP_ENDPOINT", shadowed)
    assert "xds-protos" in message and "--force-reinstall --no-deps opentelemetry-proto" in message
    missing = ImportError("No module named 'opentelemetry.exporter'", name="opentelemetry.exporter")
    assert _import_problem("OTEL_EXPORTER_OTLP_ENDPOINT", missing).endswith("pip install 'infergate[otel]'")
