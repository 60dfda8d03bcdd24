"""Unit tests for the ext_proc reply builders: the fast paths build exactly what the plain ones did.

The builders in :mod:`infergate.dataplanes.extproc.messages` take shortcuts for speed (shared constant
acks, direct Struct field access, a one-chunk fast path); each test compares against the message
built the straightforward way, so a shortcut that changes the wire shape fails here.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2  # type: ignore[import-untyped, unused-ignore]

from infergate.dataplanes.extproc import messages as msg


def _plain_streamed(data: bytes, *, eos: bool, request: bool) -> pb.ProcessingResponse:
    br = pb.BodyResponse(
        response=pb.CommonResponse(
            body_mutation=pb.BodyMutation(
                streamed_response=pb.StreamedBodyResponse(body=data, end_of_stream=eos)
            )
        )
    )
    return pb.ProcessingResponse(request_body=br) if request else pb.ProcessingResponse(response_body=br)


def test_route_metadata_matches_struct_update() -> None:
    expected = struct_pb2.Struct()
    expected.update({"envoy.lb": {"x-gateway-destination-endpoint": "10.0.0.1:8000"}})
    got = msg.route_metadata("10.0.0.1:8000")
    assert got == expected
    assert got.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


def test_plain_acks_equal_fresh_messages_and_are_not_mutated_by_use() -> None:
    fresh_req = pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=pb.CommonResponse()))
    fresh_resp = pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=pb.CommonResponse()))
    assert msg.headers_response(request=True) == fresh_req
    assert msg.headers_response(request=False) == fresh_resp
    assert msg.trailers_response(request=True) == pb.ProcessingResponse(
        request_trailers=pb.TrailersResponse()
    )
    assert msg.trailers_response(request=False) == pb.ProcessingResponse(
        response_trailers=pb.TrailersResponse()
    )
    # A reply with a mutation is a new object; the shared ack stays empty.
    mutation = pb.HeaderMutation(remove_headers=["content-length"])
    changed = msg.headers_response(request=False, mutation=mutation)
    assert changed.response_headers.response.header_mutation.remove_headers == ["content-length"]
    assert msg.headers_response(request=False) == fresh_resp


def test_streamed_body_fast_path_and_chunked_path_agree_with_plain_builds() -> None:
    for request in (True, False):
        for eos in (True, False):
            assert msg.streamed_body_responses(b"abc", request=request, end_of_stream=eos) == [
                _plain_streamed(b"abc", eos=eos, request=request)
            ]
            assert msg.streamed_body_responses(b"", request=request, end_of_stream=eos) == [
                _plain_streamed(b"", eos=eos, request=request)
            ]
    big = bytes(range(256)) * 500  # 128,000 bytes -> 62,000 + 62,000 + 4,000
    out = msg.streamed_body_responses(big, request=True, end_of_stream=True)
    assert out == [
        _plain_streamed(big[:62_000], eos=False, request=True),
        _plain_streamed(big[62_000:124_000], eos=False, request=True),
        _plain_streamed(big[124_000:], eos=True, request=True),
    ]
    exact = b"x" * msg.MAX_CHUNK
    assert msg.streamed_body_responses(exact, request=False, end_of_stream=True) == [
        _plain_streamed(exact, eos=True, request=False)
    ]


def test_read_headers_prefers_raw_value_and_joins_repeats() -> None:
    headers = pb.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[
                base_pb2.HeaderValue(key="X-A", raw_value=b"1"),
                base_pb2.HeaderValue(key="x-a", value="2"),
                base_pb2.HeaderValue(key=":path", raw_value=b"/v1/x", value="ignored"),
            ]
        )
    )
    assert msg.read_headers(headers) == {"x-a": "1,2", ":path": "/v1/x"}
