"""Protocol tests for the ext_proc endpoint picker: its real gRPC server over a real grpcio channel.

Each test writes the exact message sequence Envoy sends and asserts the exact protobuf replies
(GIE reference §2.1 and §8.3). The Director is the real one over a real Datastore with synthetic
metrics: endpoint A (10.0.0.1) is idle, endpoint B (10.0.0.2) loaded, so A is the pick whenever both
are candidates.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import struct_pb2  # type: ignore[import-untyped, unused-ignore]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from infergate.config.picker import default_picker_config
from infergate.dataplanes.extproc.server import EXTPROC_SERVICE, ExtProcServer, TlsSettings, serve_extproc
from infergate.datastore.store import Datastore
from infergate.flowcontrol.controller import FlowController
from infergate.flowcontrol.saturation import SaturationDetector
from infergate.requestcontrol.director import Director
from infergate.scheduling.engine.scheduler import Scheduler, build_scheduler
from infergate.telemetry import GatewayMetrics
from infergate.types import (
    EndpointMeta,
    EndpointMetrics,
    ModelRewrite,
    Objective,
    RewriteRule,
    RewriteTarget,
)
from tests.support import async_wait_for

A = "10.0.0.1:8000"
B = "10.0.0.2:8000"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t


def _scheduler(clock: FakeClock) -> Scheduler:
    return build_scheduler(default_picker_config(lora=False), rng=random.Random(0), clock=clock)


@dataclass
class Rig:
    ds: Datastore
    clock: FakeClock
    server: ExtProcServer
    channel: grpc.aio.Channel
    stub: pb_grpc.ExternalProcessorStub
    metrics: GatewayMetrics
    registry: CollectorRegistry
    flow: FlowController


def _add(ds: Datastore, clock: FakeClock, key: str, *, queue: int, kv: float) -> None:
    host, port = key.rsplit(":", 1)
    ds.upsert_endpoint(EndpointMeta(name=host, address=host, port=int(port)))
    ds.update_metrics(
        key, EndpointMetrics(waiting_queue_size=queue, kv_cache_usage=kv, updated_at=clock.now())
    )
    ds.set_models(key, frozenset({MODEL}))


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = FakeClock()
    ds = Datastore(clock)
    _add(ds, clock, A, queue=0, kv=0.1)
    _add(ds, clock, B, queue=8, kv=0.7)
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    flow = FlowController(ds, detector=SaturationDetector(), clock=clock)
    director = Director(datastore=ds, scheduler=_scheduler(clock), flow=flow, clock=clock, metrics=metrics)
    server = serve_extproc(director, "127.0.0.1", 0, endpoints=ds)
    await server.start()
    channel = grpc.aio.insecure_channel(server.address)
    try:
        yield Rig(ds, clock, server, channel, pb_grpc.ExternalProcessorStub(channel), metrics, registry, flow)
    finally:
        await channel.close()
        await server.stop(0)


# ---------------------------------------------------------------------------- message helpers
def headers_msg(
    path: str = "/v1/chat/completions",
    method: str = "POST",
    extra: dict[str, str] | None = None,
    *,
    eos: bool = False,
    subset: list[str] | None = None,
    mode: int | None = None,
) -> pb.ProcessingRequest:
    hv = [("x-request-id", "req-1"), (":path", path), (":method", method), (":authority", "gw")]
    hv += list((extra or {}).items())
    req = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in hv]
            ),
            end_of_stream=eos,
        )
    )
    if subset is not None:
        s = struct_pb2.Struct()
        s.update({"x-gateway-destination-endpoint-subset": subset})
        req.metadata_context.filter_metadata["envoy.lb.subset_hint"].CopyFrom(s)
    if mode is not None:
        req.protocol_config.request_body_mode = mode
        req.protocol_config.response_body_mode = mode
    return req


def body_msg(data: bytes, *, eos: bool, response: bool = False) -> pb.ProcessingRequest:
    if response:
        return pb.ProcessingRequest(response_body=pb.HttpBody(body=data, end_of_stream=eos))
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=data, end_of_stream=eos))


def response_headers_msg(status: str = "200", ctype: str = "application/json", length: int | None = None):
    hv = [(":status", status), ("content-type", ctype)]
    if length is not None:
        hv.append(("content-length", str(length)))
    return pb.ProcessingRequest(
        response_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in hv]
            )
        )
    )


def expected_route(
    dest: str, body: bytes, extra: Sequence[tuple[str, str]] = (), remove: Sequence[str] = ()
) -> pb.ProcessingResponse:
    """The exact request-headers reply of the reference (§2.1), built independently of the server;
    ``remove``: the control headers the picker consumed (not in the reference, which forwards them)."""
    overwrite = base_pb2.HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
    hdrs = [("x-gateway-destination-endpoint", dest)]
    if body:
        hdrs.append(("Content-Length", str(len(body))))
    hdrs += list(extra)
    md = struct_pb2.Struct()
    md.update({"envoy.lb": {"x-gateway-destination-endpoint": dest}})
    return pb.ProcessingResponse(
        request_headers=pb.HeadersResponse(
            response=pb.CommonResponse(
                clear_route_cache=True,
                header_mutation=pb.HeaderMutation(
                    set_headers=[
                        base_pb2.HeaderValueOption(
                            header=base_pb2.HeaderValue(key=k, raw_value=v.encode()), append_action=overwrite
                        )
                        for k, v in hdrs
                    ],
                    remove_headers=list(remove),
                ),
            )
        ),
        dynamic_metadata=md,
    )


def expected_body(data: bytes, *, eos: bool, request: bool = True) -> pb.ProcessingResponse:
    br = pb.BodyResponse(
        response=pb.CommonResponse(
            body_mutation=pb.BodyMutation(
                streamed_response=pb.StreamedBodyResponse(body=data, end_of_stream=eos)
            )
        )
    )
    return pb.ProcessingResponse(request_body=br) if request else pb.ProcessingResponse(response_body=br)


def chat_body(model: str = MODEL, **extra: object) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}).encode()


async def read(call, n: int) -> list[pb.ProcessingResponse]:
    out: list[pb.ProcessingResponse] = []
    for _ in range(n):
        r = await asyncio.wait_for(call.read(), 60)
        assert r is not grpc.aio.EOF, f"stream ended after {len(out)} replies"
        out.append(r)
    return out


def metric_value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    from prometheus_client import generate_latest

    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


# ---------------------------------------------------------------------------- request path
async def test_body_split_across_chunks_routes_after_end_of_stream(rig: Rig) -> None:
    body = chat_body()
    call = rig.stub.Process()
    await call.write(headers_msg())
    await call.write(body_msg(body[:10], eos=False))
    await call.write(body_msg(body[10:], eos=True))
    # The first reply must be the deferred headers reply: nothing was answered before the body ended.
    head, tail = await read(call, 2)
    assert head == expected_route(A, body)
    assert tail == expected_body(body, eos=True)
    assert rig.ds.endpoint(A).in_flight == 1  # type: ignore[union-attr]
    await call.done_writing()
    call.cancel()


async def test_fallbacks_in_destination_when_asked(rig: Rig) -> None:
    director = rig.server.processor._director
    server = serve_extproc(director, "127.0.0.1", 0, endpoints=rig.ds, max_endpoints=3)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as ch:
            call = pb_grpc.ExternalProcessorStub(ch).Process()
            body = chat_body()
            await call.write(headers_msg())
            await call.write(body_msg(body, eos=True))
            head, _ = await read(call, 2)
            assert head == expected_route(f"{A},{B}", body)
            call.cancel()
    finally:
        await server.stop(0)


async def test_request_trailers_end_the_body(rig: Rig) -> None:
    body = chat_body()
    call = rig.stub.Process()
    await call.write(headers_msg())
    await call.write(body_msg(body, eos=False))
    await call.write(pb.ProcessingRequest(request_trailers=pb.HttpTrailers()))
    head, sent, trailers = await read(call, 3)
    assert head == expected_route(A, body)
    assert sent == expected_body(body, eos=True)
    assert trailers == pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
    call.cancel()


async def test_large_body_is_streamed_back_in_62000_byte_chunks(rig: Rig) -> None:
    body = chat_body(padding="x" * 130_000)
    call = rig.stub.Process()
    await call.write(headers_msg())
    await call.write(body_msg(body, eos=True))
    replies = await read(call, 4)
    assert replies[0] == expected_route(A, body)
    assert [len(r.request_body.response.body_mutation.streamed_response.body) for r in replies[1:]] == [
        62_000,
        62_000,
        len(body) - 124_000,
    ]
    assert [r.request_body.response.body_mutation.streamed_response.end_of_stream for r in replies[1:]] == [
        False,
        False,
        True,
    ]
    assert b"".join(r.request_body.response.body_mutation.streamed_response.body for r in replies[1:]) == body
    call.cancel()


async def test_get_models_is_answered_by_the_picker(rig: Rig) -> None:
    """``/v1/models`` never reaches a replica: the picker lists what the pool serves, as JSON."""
    rig.ds.set_models(A, frozenset({MODEL, "food-review"}))
    call = rig.stub.Process()
    await call.write(headers_msg("/v1/models", "GET", eos=True, subset=[A]))
    (reply,) = await read(call, 1)
    imm = reply.immediate_response
    assert imm.status.code == 200
    assert {h.header.key: h.header.raw_value for h in imm.headers.set_headers}["content-type"] == (
        b"application/json"
    )
    assert [m["id"] for m in json.loads(imm.body)["data"]] == sorted({MODEL, "food-review"})
    call.cancel()


async def test_bodiless_post_goes_to_the_director_and_is_400(rig: Rig) -> None:
    call = rig.stub.Process()
    await call.write(headers_msg(eos=True))
    (reply,) = await read(call, 1)
    assert reply.immediate_response.status.code == 400
    assert json.loads(reply.immediate_response.body)["error"]["type"] == "invalid_request_error"
    call.cancel()


async def test_subset_hint_restricts_candidates(rig: Rig) -> None:
    body = chat_body()
    call = rig.stub.Process()
    await call.write(headers_msg(subset=[B]))
    await call.write(body_msg(body, eos=True))
    head, _ = await read(call, 2)
    assert head == expected_route(B, body)
    call.cancel()


async def test_subset_hint_with_no_match_is_503(rig: Rig) -> None:
    call = rig.stub.Process()
    await call.write(headers_msg(subset=["10.9.9.9:8000"]))
    await call.write(body_msg(chat_body(), eos=True))
    (reply,) = await read(call, 1)
    assert reply.immediate_response.status.code == 503
    assert json.loads(reply.immediate_response.body)["error"]["code"] == "no_capacity"
    call.cancel()


async def test_missing_request_id_is_generated_and_injected(rig: Rig) -> None:
    body = chat_body()
    req = headers_msg()
    del req.request_headers.headers.headers[0]  # x-request-id
    call = rig.stub.Process()
    await call.write(req)
    await call.write(body_msg(body, eos=True))
    head, _ = await read(call, 2)
    set_headers = {
        h.header.key: h.header.raw_value.decode()
        for h in head.request_headers.response.header_mutation.set_headers
    }
    assert len(set_headers["x-request-id"]) == 32
    call.cancel()


async def test_client_destination_header_is_overwritten_not_obeyed(rig: Rig) -> None:
    body = chat_body()
    call = rig.stub.Process()
    await call.write(
        headers_msg(extra={"x-gateway-destination-endpoint": B, "x-gateway-destination-endpoint-subset": B})
    )
    await call.write(body_msg(body, eos=True))
    head, _ = await read(call, 2)
    # A is chosen although the client asked for B; the header option overwrites (never appends).
    assert head == expected_route(A, body)
    call.cancel()


async def test_body_over_the_limit_is_413_without_waiting_for_the_end(rig: Rig) -> None:
    director = rig.server.processor._director
    server = serve_extproc(director, "127.0.0.1", 0, endpoints=rig.ds, max_body_bytes=1000)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as ch:
            call = pb_grpc.ExternalProcessorStub(ch).Process()
            await call.write(headers_msg())
            await call.write(body_msg(b"x" * 800, eos=False))
            await call.write(body_msg(b"x" * 800, eos=False))
            (reply,) = await read(call, 1)
            assert reply.immediate_response.status.code == 413
            call.cancel()
    finally:
        await server.stop(0)


async def test_invalid_json_is_400(rig: Rig) -> None:
    call = rig.stub.Process()
    await call.write(headers_msg())
    await call.write(body_msg(b"{not json", eos=True))
    (reply,) = await read(call, 1)
    assert reply.immediate_response.status.code == 400
    assert json.loads(reply.immediate_response.body)["error"]["type"] == "invalid_request_error"
    assert reply.WhichOneof("response") == "immediate_response"
    call.cancel()


async def test_missing_model_is_400(rig: Rig) -> None:
    call = rig.stub.Process()
    await call.write(headers_msg())
    await call.write(body_msg(b'{"messages": [{"role": "user", "content": "hi"}]}', eos=True))
    (reply,) = await read(call, 1)
    assert reply.immediate_response.status.code == 400
    call.cancel()


async def test_no_healthy_endpoint_queues_until_one_recovers(rig: Rig) -> None:
    """Scale from zero: with no ready endpoint the request waits in flow control, not a 503."""
    rig.ds.set_healthy(A, False)
    rig.ds.set_healthy(B, False)
    body = chat_body()
    call = rig.stub.Process()
    await call.write(headers_msg())
    await call.write(body_msg(body, eos=True))

    async def queued() -> bool:
        return rig.flow.queued() == 1

    await async_wait_for(queued, timeout=5, what="the request to wait for an endpoint")
    rig.ds.set_healthy(A, True)
    rig.ds.update_metrics(A, EndpointMetrics(updated_at=rig.clock.now()))
    head, _ = await read(call, 2)
    assert head == expected_route(A, body)
    call.cancel()


async def test_no_healthy_endpoint_within_the_ttl_is_503_with_the_dropped_reason(rig: Rig) -> None:
    rig.ds.set_healthy(A, False)
    rig.ds.set_healthy(B, False)
    call = rig.stub.Process()
    await call.write(headers_msg())
    await call.write(body_msg(chat_body(), eos=True))

    async def queued() -> bool:
        return rig.flow.queued() == 1

    await async_wait_for(queued, timeout=5, what="the request to wait for an endpoint")
    rig.clock.t += rig.flow.config.default_ttl or 0.0  # the no-endpoint budget follows defaultRequestTTL
    rig.flow.poke()
    (reply,) = await read(call, 1)
    imm = reply.immediate_response
    assert imm.status.code == 503
    headers = {h.header.key: h.header.raw_value.decode() for h in imm.headers.set_headers}
    assert headers["x-llm-d-request-dropped-reason"] == "rejected-no-endpoints"
    call.cancel()


async def test_stale_metrics_queue_the_request_until_a_fresh_scrape(rig: Rig) -> None:
    """Stale metrics are unknown load, not a dead pool: the request waits instead of a 503."""
    rig.clock.t += 60  # every scrape is now stale (e.g. the gateway stalled)
    body = chat_body()
    call = rig.stub.Process()
    await call.write(headers_msg())
    await call.write(body_msg(body, eos=True))

    async def queued() -> bool:
        return rig.flow.queued() == 1

    await async_wait_for(queued, timeout=5, what="the request to wait in flow control")
    rig.ds.update_metrics(A, EndpointMetrics(updated_at=rig.clock.now()))  # the scraper catches up
    head, _ = await read(call, 2)
    assert head == expected_route(A, body)
    call.cancel()


async def test_sheddable_request_under_saturation_is_429(rig: Rig) -> None:
    rig.ds.upsert_objective(Objective(name="batch", priority=-1))
    for key in (A, B):  # both servers over the queue and KV thresholds
        rig.ds.update_metrics(
            key, EndpointMetrics(waiting_queue_size=20, kv_cache_usage=0.95, updated_at=rig.clock.now())
        )
    call = rig.stub.Process()
    await call.write(headers_msg(extra={"x-gateway-inference-objective": "batch"}))
    await call.write(body_msg(chat_body(), eos=True))
    (reply,) = await read(call, 1)
    assert reply.WhichOneof("response") == "immediate_response"
    assert reply.immediate_response.status.code == 429
    assert json.loads(reply.immediate_response.body)["error"]["type"] == "rate_limit_error"
    call.cancel()
    # Once the pool has room again, the same objective is scheduled.
    rig.ds.update_metrics(A, EndpointMetrics(updated_at=rig.clock.now()))
    rig.ds.update_metrics(B, EndpointMetrics(updated_at=rig.clock.now()))
    call = rig.stub.Process()
    await call.write(headers_msg(extra={"x-gateway-inference-objective": "batch"}))
    await call.write(body_msg(chat_body(), eos=True))
    head, _ = await read(call, 2)
    assert head.WhichOneof("response") == "request_headers"
    call.cancel()


async def test_request_waiting_in_flow_control_leaves_the_queue_when_envoy_cancels(rig: Rig) -> None:
    from tests.support import async_wait_for

    for key in (A, B):
        rig.ds.update_metrics(
            key, EndpointMetrics(waiting_queue_size=20, kv_cache_usage=0.95, updated_at=rig.clock.now())
        )
    call = rig.stub.Process()
    await call.write(headers_msg())
    await call.write(body_msg(chat_body(), eos=True))

    async def queued() -> bool:
        return rig.flow.queued() == 1

    await async_wait_for(queued, timeout=5, what="request queued in flow control")
    call.cancel()

    async def left() -> bool:
        return rig.flow.queued() == 0

    await async_wait_for(left, timeout=5, what="queue empty after the stream was cancelled")
    assert all(e.in_flight == 0 for e in rig.ds.endpoints())


# ---------------------------------------------------------------------------- rewrite and response
async def test_rewrite_header_changes_body_and_is_put_back_in_response(rig: Rig) -> None:
    rig.ds.set_models(A, frozenset({MODEL, "food-review-1"}))
    rig.ds.set_models(B, frozenset({MODEL, "food-review-1"}))
    body = chat_body()
    call = rig.stub.Process()
    await call.write(headers_msg(extra={"x-gateway-model-name-rewrite": "food-review-1"}))
    await call.write(body_msg(body, eos=True))
    head, sent = await read(call, 2)
    upstream = sent.request_body.response.body_mutation.streamed_response.body
    assert json.loads(upstream)["model"] == "food-review-1"
    assert head == expected_route(A, upstream, remove=["x-gateway-model-name-rewrite"])
    answer = (
        b'{"id":"x","object":"chat.completion","model":"food-review-1",'
        b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}'
    )
    await call.write(response_headers_msg(length=len(answer)))
    (rh,) = await read(call, 1)
    assert rh == pb.ProcessingResponse(
        response_headers=pb.HeadersResponse(
            response=pb.CommonResponse(header_mutation=pb.HeaderMutation(remove_headers=["content-length"]))
        )
    )
    await call.write(body_msg(answer[:40], eos=False, response=True))
    await call.write(body_msg(answer[40:], eos=True, response=True))
    chunks: list[pb.ProcessingResponse] = []
    while not chunks or not chunks[-1].response_body.response.body_mutation.streamed_response.end_of_stream:
        chunks += await read(call, 1)
    back = b"".join(c.response_body.response.body_mutation.streamed_response.body for c in chunks)
    assert back == answer.replace(b"food-review-1", MODEL.encode())
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert rig.ds.endpoint(A).in_flight == 0  # type: ignore[union-attr]
    assert metric_value(rig.registry, "inference_objective_input_tokens_sum", model_name=MODEL) == 3


async def test_rewrite_rule_from_datastore(rig: Rig) -> None:
    rig.ds.upsert_rewrite(
        ModelRewrite(
            name="canary",
            rules=(RewriteRule(match_models=("alias",), targets=(RewriteTarget(model=MODEL),)),),
        )
    )
    call = rig.stub.Process()
    await call.write(headers_msg())
    await call.write(body_msg(chat_body("alias"), eos=True))
    _, sent = await read(call, 2)
    assert json.loads(sent.request_body.response.body_mutation.streamed_response.body)["model"] == MODEL
    call.cancel()


async def test_sse_response_is_streamed_chunk_by_chunk_with_usage(rig: Rig) -> None:
    body = chat_body(stream=True, stream_options={"include_usage": True})
    call = rig.stub.Process()
    await call.write(headers_msg())
    await call.write(body_msg(body, eos=True))
    await read(call, 2)
    await call.write(response_headers_msg(ctype="text/event-stream"))
    (rh,) = await read(call, 1)
    assert rh == pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=pb.CommonResponse()))
    events = [
        b'data: {"object":"chat.completion.chunk","model":"m","choices":[{"delta":{"content":"a"}}]}\n\n',
        b'data: {"object":"chat.completion.chunk","model":"m","choices":[],'
        b'"usage":{"prompt_tokens":7,"completion_tokens":4,"total_tokens":11}}\n\n',
        b"data: [DONE]\n\n",
    ]
    for i, ev in enumerate(events):
        await call.write(body_msg(ev, eos=i == len(events) - 1, response=True))
        # Each SSE chunk is answered before the next arrives: streaming is not buffered.
        (r,) = await read(call, 1)
        assert r == expected_body(ev, eos=i == len(events) - 1, request=False)
        if i == 0:  # the first token: in flight and seen to start (flow control reads it)
            ep = rig.ds.endpoint(A)
            assert ep is not None and (ep.in_flight, ep.in_flight_started) == (1, 1)
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert metric_value(rig.registry, "inference_objective_output_tokens_sum", model_name=MODEL) == 4
    ep = rig.ds.endpoint(A)
    assert ep is not None and (ep.in_flight, ep.in_flight_started) == (0, 0)


async def test_response_trailers_finish_the_request(rig: Rig) -> None:
    call = rig.stub.Process()
    await call.write(headers_msg())
    await call.write(body_msg(chat_body(), eos=True))
    await read(call, 2)
    await call.write(response_headers_msg())
    await read(call, 1)
    await call.write(body_msg(b"{}", eos=False, response=True))
    await read(call, 1)
    await call.write(pb.ProcessingRequest(response_trailers=pb.HttpTrailers()))
    (r,) = await read(call, 1)
    assert r == pb.ProcessingResponse(response_trailers=pb.TrailersResponse())
    assert rig.ds.endpoint(A).in_flight == 0  # type: ignore[union-attr]
    call.cancel()


async def test_envoy_cancelling_the_stream_releases_the_endpoint(rig: Rig) -> None:
    call = rig.stub.Process()
    await call.write(headers_msg())
    await call.write(body_msg(chat_body(), eos=True))
    await read(call, 2)
    assert rig.ds.endpoint(A).in_flight == 1  # type: ignore[union-attr]
    call.cancel()

    async def released() -> bool:
        return rig.ds.endpoint(A).in_flight == 0  # type: ignore[union-attr]

    from tests.support import async_wait_for

    await async_wait_for(released, timeout=5, what="in-flight released after cancel")
    assert metric_value(rig.registry, "inference_objective_request_error_total", model_name=MODEL) == 1


async def test_buffered_mode_acknowledges_headers_then_mutates_on_body(rig: Rig) -> None:
    body = chat_body()
    call = rig.stub.Process()
    await call.write(headers_msg(mode=processing_mode_pb2.ProcessingMode.BodySendMode.BUFFERED))
    (ack,) = await read(call, 1)
    assert ack == pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=pb.CommonResponse()))
    await call.write(body_msg(body, eos=True))
    (reply,) = await read(call, 1)
    route = expected_route(A, b"")  # Envoy holds the unchanged body: no copy, no new length
    common = reply.request_body.response
    assert common.header_mutation == route.request_headers.response.header_mutation
    assert common.clear_route_cache
    assert not common.HasField("body_mutation")
    assert reply.dynamic_metadata == route.dynamic_metadata
    call.cancel()


# ---------------------------------------------------------------------------- health and TLS
async def test_health_service_reports_serving_and_draining(rig: Rig) -> None:
    stub = health_pb2_grpc.HealthStub(rig.channel)
    # "inference-extension": what the reference charts probe with one replica; the reference
    # picker answers any name so without leader election, and so does this one
    for name in ("", "liveness", "readiness", EXTPROC_SERVICE, "inference-extension"):
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, name
    await rig.server.set_serving(False)
    for name in (EXTPROC_SERVICE, "inference-extension"):
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING, name


async def test_tls_with_self_signed_certificate(rig: Rig) -> None:
    director = rig.server.processor._director
    server = serve_extproc(director, "127.0.0.1", 0, tls=TlsSettings())
    await server.start()
    try:
        assert server.certificate_pem is not None and server.certificate_pem.startswith(
            b"-----BEGIN CERTIFICATE"
        )
        creds = grpc.ssl_channel_credentials(root_certificates=server.certificate_pem)
        async with grpc.aio.secure_channel(server.address, creds) as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=EXTPROC_SERVICE)
            )
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        async with grpc.aio.insecure_channel(server.address) as ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
    finally:
        await server.stop(0)
