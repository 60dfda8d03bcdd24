"""Per-request body modes: the picker asks Envoy for only the part of a response it needs.

With a response body mode other than full-duplex (the local Envoy's bootstrap: STREAMED with
``allow_mode_override``), the response-headers reply carries a ``mode_override`` chosen from the
status, content type and rewrite of that request, and body chunks that the picker did not change
are acknowledged instead of copied back. Same rig as ``test_extproc``: the real grpc.aio server and
Director over a real channel.
"""

from __future__ import annotations

import json

import grpc
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from tests.integration.test_extproc import (
    MODEL,
    A,
    B,
    Rig,
    body_msg,
    chat_body,
    expected_route,
    headers_msg,
    metric_value,
    read,
    response_headers_msg,
)
from tests.integration.test_extproc import rig as rig_fixture

rig = rig_fixture  # the same rig as the protocol tests

_Mode = processing_mode_pb2.ProcessingMode.BodySendMode
ACK = pb.ProcessingResponse(response_body=pb.BodyResponse(response=pb.CommonResponse()))
USAGE = b'{"object":"text_completion","usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}'


def envoy_headers(**kw: object) -> pb.ProcessingRequest:
    """Request headers as the local Envoy sends them: request BUFFERED, response STREAMED."""
    req = headers_msg(**kw)  # type: ignore[arg-type]
    req.protocol_config.request_body_mode = _Mode.BUFFERED
    req.protocol_config.response_body_mode = _Mode.STREAMED
    return req


def headers_reply(response_mode: int, mutation: pb.HeaderMutation | None = None) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(
        response_headers=pb.HeadersResponse(response=pb.CommonResponse(header_mutation=mutation)),
        mode_override=processing_mode_pb2.ProcessingMode(
            request_body_mode=_Mode.BUFFERED, response_body_mode=response_mode
        ),
    )


async def routed(rig: Rig, body: bytes | None = None, **kw: object) -> grpc.aio.StreamStreamCall:
    call = rig.stub.Process()
    await call.write(envoy_headers(**kw))
    await call.write(body_msg(body or chat_body(), eos=True))
    await read(call, 2)
    return call


async def test_json_answer_is_read_in_one_message_and_acknowledged(rig: Rig) -> None:
    call = await routed(rig)
    await call.write(response_headers_msg(length=len(USAGE)))
    assert await read(call, 1) == [headers_reply(_Mode.BUFFERED_PARTIAL)]
    await call.write(body_msg(USAGE, eos=True, response=True))
    assert await read(call, 1) == [ACK]  # nothing changed: nothing copied back
    assert rig.ds.endpoint(A).in_flight == 0  # type: ignore[union-attr]
    assert metric_value(rig.registry, "inference_objective_output_tokens_sum", model_name=MODEL) == 3
    assert metric_value(rig.registry, "inference_objective_request_error_total", model_name=MODEL) == 0
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF


async def test_event_stream_is_read_chunk_by_chunk(rig: Rig) -> None:
    call = await routed(rig, chat_body(stream=True, stream_options={"include_usage": True}))
    await call.write(response_headers_msg(ctype="text/event-stream"))
    assert await read(call, 1) == [headers_reply(_Mode.STREAMED)]
    events = [
        b'data: {"object":"chat.completion.chunk","model":"m","choices":[{"delta":{"content":"a"}}]}\n\n',
        b'data: {"object":"chat.completion.chunk","model":"m","choices":[],'
        b'"usage":{"prompt_tokens":7,"completion_tokens":4,"total_tokens":11}}\n\n',
        b"data: [DONE]\n\n",
    ]
    for i, ev in enumerate(events):
        await call.write(body_msg(ev, eos=i == len(events) - 1, response=True))
        assert await read(call, 1) == [ACK]  # each chunk answered before the next: not buffered
    assert metric_value(rig.registry, "inference_objective_output_tokens_sum", model_name=MODEL) == 4
    assert rig.ds.endpoint(A).in_flight == 0  # type: ignore[union-attr]
    call.cancel()


async def test_error_answer_skips_the_body_and_completes_at_its_headers(rig: Rig) -> None:
    call = await routed(rig)
    assert rig.ds.endpoint(A).in_flight == 1  # type: ignore[union-attr]
    await call.write(response_headers_msg(status="500"))
    assert await read(call, 1) == [headers_reply(_Mode.NONE)]
    assert rig.ds.endpoint(A).in_flight == 0  # type: ignore[union-attr]
    errors = metric_value(
        rig.registry,
        "inference_objective_request_error_total",
        model_name=MODEL,
        error_code="ModelServerError",
    )
    assert errors == 1
    await call.done_writing()  # Envoy half-closes: no second completion, no disconnect error
    assert await call.read() is grpc.aio.EOF
    assert metric_value(rig.registry, "inference_objective_request_error_total", model_name=MODEL) == 1


async def test_rewritten_model_is_put_back_chunk_by_chunk(rig: Rig) -> None:
    rig.ds.set_models(A, frozenset({MODEL, "food-review-1"}))
    rig.ds.set_models(B, frozenset({MODEL, "food-review-1"}))
    call = rig.stub.Process()
    await call.write(envoy_headers(extra={"x-gateway-model-name-rewrite": "food-review-1"}))
    await call.write(body_msg(chat_body(), eos=True))
    _, sent = await read(call, 2)
    upstream = sent.request_body.response.body_mutation.body  # changed: sent back with its length
    assert json.loads(upstream)["model"] == "food-review-1"
    expected = expected_route(
        A, upstream, remove=["x-gateway-model-name-rewrite"]
    ).request_headers.response.header_mutation
    assert sent.request_body.response.header_mutation == expected
    answer = b'{"id":"x","model":"food-review-1","usage":{"prompt_tokens":3,"completion_tokens":2}}'
    await call.write(response_headers_msg(length=len(answer)))
    assert await read(call, 1) == [
        headers_reply(_Mode.STREAMED, pb.HeaderMutation(remove_headers=["content-length"]))
    ]
    back = b""
    for piece, eos in ((answer[:20], False), (answer[20:], True)):
        await call.write(body_msg(piece, eos=eos, response=True))
        (r,) = await read(call, 1)
        assert r.response_body.response.HasField("body_mutation")
        back += r.response_body.response.body_mutation.body
    assert back == answer.replace(b"food-review-1", MODEL.encode())
    assert rig.ds.endpoint(A).in_flight == 0  # type: ignore[union-attr]
    call.cancel()


async def test_partly_buffered_answer_completes_cleanly_at_the_stream_end(rig: Rig) -> None:
    """Envoy's buffer filled before the end: it sends what it holds, the rest passes unseen, and
    the stream's end (not a disconnect) completes the request."""
    call = await routed(rig)
    await call.write(response_headers_msg())
    await read(call, 1)
    await call.write(body_msg(USAGE[:30], eos=False, response=True))
    assert await read(call, 1) == [ACK]
    assert rig.ds.endpoint(A).in_flight == 1  # type: ignore[union-attr]
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert rig.ds.endpoint(A).in_flight == 0  # type: ignore[union-attr]
    assert metric_value(rig.registry, "inference_objective_request_error_total", model_name=MODEL) == 0
    assert (
        metric_value(rig.registry, "inference_objective_request_duration_seconds_count", model_name=MODEL)
        == 1
    )


async def test_an_envoy_that_ignores_the_override_still_has_every_chunk_read(rig: Rig) -> None:
    """Without ``allow_mode_override`` Envoy keeps streaming: the JSON answer arrives in chunks and
    the error's body arrives although none was asked for; both are acknowledged and counted once."""
    call = await routed(rig)
    await call.write(response_headers_msg())
    assert await read(call, 1) == [headers_reply(_Mode.BUFFERED_PARTIAL)]
    for piece, eos in ((USAGE[:30], False), (USAGE[30:], True)):
        await call.write(body_msg(piece, eos=eos, response=True))
        assert await read(call, 1) == [ACK]
    assert metric_value(rig.registry, "inference_objective_output_tokens_sum", model_name=MODEL) == 3
    call.cancel()

    call = await routed(rig)
    await call.write(response_headers_msg(status="503"))
    assert await read(call, 1) == [headers_reply(_Mode.NONE)]
    await call.write(body_msg(b'{"error": "busy"}', eos=True, response=True))
    assert await read(call, 1) == [ACK]
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert metric_value(rig.registry, "inference_objective_request_error_total", model_name=MODEL) == 1
    assert rig.ds.endpoint(A).in_flight == 0  # type: ignore[union-attr]
