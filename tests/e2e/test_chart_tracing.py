"""The chart's tracing values, end to end: the OTEL_* variables it renders for the picker's
container make the picker's tracer export its spans over OTLP/gRPC to a collector listening on
127.0.0.1 (a real gRPC server speaking OpenTelemetry's TraceService), with the chart's sampler and
the pod's resource attributes. This also proves the OTLP exporter imports in this environment,
which it did not while xds-protos' copies of opentelemetry/proto/ shadowed opentelemetry-proto's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from infergate.tracing import REQUEST_ID, tracer_from_env
from tests.e2e.test_deploy_chart import TUTORIAL, container, render

# What the kubelet puts where the container's env says valueFrom (downward API).
DOWNWARD = {
    "metadata.namespace": "inference",
    "metadata.name": "pool-epp-7d9f-abcde",
    "spec.nodeName": "gpu-node-3",
}


class Collector:
    """An OTLP/gRPC trace collector: keeps every export request it is sent."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            {
                "Export": grpc.unary_unary_rpc_method_handler(
                    self._export,
                    request_deserializer=ExportTraceServiceRequest.FromString,
                    response_serializer=ExportTraceServiceResponse.SerializeToString,
                )
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def _export(self, request: ExportTraceServiceRequest, context: object) -> ExportTraceServiceResponse:
        self.requests.append(request)
        return ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    c.server.start()
    yield c
    c.server.stop(grace=None)


def container_env(docs: list[dict[str, object]]) -> dict[str, str]:
    """The container's environment as the kubelet would set it: downward-API values filled in and
    $(VAR) references to earlier variables expanded."""
    env: dict[str, str] = {}
    for item in container(docs)["env"]:
        if "valueFrom" in item:
            value = DOWNWARD[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            value = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], item["value"])
        env[item["name"]] = value
    return env


def test_the_rendered_variables_export_traces_to_the_collector(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(
        *TUTORIAL,
        "--set", "inferenceExtension.tracing.enabled=true",
        "--set", f"inferenceExtension.tracing.otelExporterEndpoint=http://127.0.0.1:{collector.port}",
        "--set-string", "inferenceExtension.tracing.sampling.samplerArg=1",
        "--set-string", "inferenceExtension.flags.tracing=true",
    )  # fmt: skip
    env = container_env(docs)
    assert "--tracing" not in " ".join(container(docs)["args"])  # mapped onto the variables
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # the SDK reads the sampler and resource from os.environ
    tracer = tracer_from_env()
    assert tracer is not None
    trace = tracer.start("req-7", "/v1/completions")
    with trace.phase("schedule"):
        pass
    trace.end(200)
    tracer.shutdown()  # flushes the batch: one export, synchronously

    spans = [
        (resource_spans.resource, span)
        for request in collector.requests
        for resource_spans in request.resource_spans
        for scope in resource_spans.scope_spans
        for span in scope.spans
    ]
    assert sorted(span.name for _, span in spans) == ["infergate.request", "schedule"]
    resource = {a.key: a.value.string_value for a in spans[0][0].attributes}
    assert resource["service.name"] == "infergate-epp"
    assert resource["k8s.namespace.name"] == "inference"
    assert resource["k8s.pod.name"] == "pool-epp-7d9f-abcde"
    assert resource["k8s.node.name"] == "gpu-node-3"
    for _, span in spans:
        attributes = {a.key: a.value.string_value for a in span.attributes}
        assert attributes[REQUEST_ID] == "req-7"


def test_the_default_sampler_keeps_a_tenth_of_new_traces(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(*TUTORIAL, "--set", "inferenceExtension.tracing.enabled=true")
    env = container_env(docs)
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://localhost:4317"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    tracer = tracer_from_env()
    assert tracer is not None
    provider = tracer._provider
    assert provider is not None
    description = provider.sampler.get_description()
    assert description.startswith("ParentBased{root:TraceIdRatioBased{0.1}"), description
    tracer.shutdown()


def test_no_tracing_variables_unless_enabled() -> None:
    env = container_env(render(*TUTORIAL))
    assert not [name for name in env if name.startswith("OTEL_")]
