"""Pure builders and readers for Envoy ext_proc protobuf messages (endpoint-picker protocol).

This module owns the exact *shape* of every reply the picker sends to Envoy, so the stream state
machine in :mod:`infergate.dataplanes.extproc.server` stays about ordering and the tests can build
the expected protobufs with the same vocabulary. Nothing here does I/O or touches scheduling.

Shapes follow the Gateway API Inference Extension's endpoint picker (GIE reference §2.1-§2.4): the
request-headers reply carries ``x-gateway-destination-endpoint`` (primary then fallbacks, comma
separated), a recomputed ``Content-Length``, ``clear_route_cache`` and the same value as dynamic
metadata ``envoy.lb``; bodies go back as streamed chunks of at most 62,000 bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2  # type: ignore[import-untyped, unused-ignore]

from infergate.errors import RequestError
from infergate.requestcontrol.context import error_code_name
from infergate.requestcontrol.headers import (
    DESTINATION_ENDPOINT,
    DESTINATION_ENDPOINT_SUBSET,
    LowerCaseHeaders,
)

__all__ = [
    "DESTINATION_NAMESPACE",
    "MAX_CHUNK",
    "SUBSET_NAMESPACE",
    "body_chunks",
    "buffered_body_response",
    "destination_value",
    "error_code_name",
    "error_response",
    "header_option",
    "headers_response",
    "immediate_response",
    "json_immediate_response",
    "read_headers",
    "request_route_mutation",
    "route_metadata",
    "streamed_body_responses",
    "subset_hint",
    "trailers_response",
]

# Envoy rejects ext_proc body frames near 64 KiB; the reference EPP keeps each chunk under this.
MAX_CHUNK = 62_000
DESTINATION_NAMESPACE = "envoy.lb"
DESTINATION_ENDPOINT_SCORES = "x-gateway-destination-endpoint-scores"
SUBSET_NAMESPACE = "envoy.lb.subset_hint"

_OVERWRITE = base_pb2.HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD


def read_headers(headers: pb.HttpHeaders) -> LowerCaseHeaders:
    """Header map as a dict with lower-case names; ``raw_value`` preferred over ``value`` (as the reference).

    Repeated names are joined with ``,`` so nothing the client sent is silently lost.
    """
    out = LowerCaseHeaders()
    for hv in headers.headers.headers:
        raw = hv.raw_value
        value = raw.decode("utf-8", "replace") if raw else hv.value
        key = hv.key.lower()  # Envoy already sends lower case; this is cheap insurance
        prev = out.get(key)
        out[key] = value if prev is None else f"{prev},{value}"
    return out


def subset_hint(metadata: base_pb2.Metadata) -> list[str] | None:
    """Candidate addresses from ``filter_metadata["envoy.lb.subset_hint"]``; None when not set.

    The protocol sends a list of ``ip:port`` strings; a comma-separated string is accepted too.
    """
    if SUBSET_NAMESPACE not in metadata.filter_metadata:
        return None
    fields = metadata.filter_metadata[SUBSET_NAMESPACE].fields
    if DESTINATION_ENDPOINT_SUBSET not in fields:
        return None
    value = fields[DESTINATION_ENDPOINT_SUBSET]
    kind = value.WhichOneof("kind")
    items: list[str] = []
    if kind == "list_value":
        for v in value.list_value.values:
            if v.WhichOneof("kind") == "string_value":
                items.extend(v.string_value.split(","))
    elif kind == "string_value":
        items.extend(value.string_value.split(","))
    return [s.strip() for s in items if s.strip()]


def header_option(key: str, value: str) -> base_pb2.HeaderValueOption:
    """A header that replaces any value the client sent (never appended next to it)."""
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()), append_action=_OVERWRITE
    )


def destination_value(addresses: Sequence[str]) -> str:
    """``ip:port[,ip:port...]``: Envoy uses the first; retries walk down the list."""
    return ",".join(addresses)


def route_metadata(destination: str, scores: Mapping[str, float] | None = None) -> struct_pb2.Struct:
    """Dynamic metadata ``envoy.lb: {x-gateway-destination-endpoint: <destination>}``, and with
    ``scores`` (``--emit-endpoint-scores``) ``x-gateway-destination-endpoint-scores: {ip:port:
    score}``, every candidate's weighted total, as llm-d-router emits them."""
    md = struct_pb2.Struct()
    # Direct field access: Struct.update() walks Python dicts through the slow well-known-type path.
    lb = md.fields[DESTINATION_NAMESPACE].struct_value.fields
    lb[DESTINATION_ENDPOINT].string_value = destination
    if scores:
        by_endpoint = lb[DESTINATION_ENDPOINT_SCORES].struct_value.fields
        for key, score in scores.items():
            by_endpoint[key].number_value = score
    return md


def request_route_mutation(
    destination: str,
    *,
    body_length: int | None,
    extra: Iterable[tuple[str, str]] = (),
    remove: Iterable[str] = (),
) -> pb.HeaderMutation:
    """Headers the picker sets on the upstream request: destination, Content-Length, then ``extra``;
    ``remove`` names client headers only the picker may set (``x-prefiller-host-port``)."""
    set_headers = [header_option(DESTINATION_ENDPOINT, destination)]
    if body_length is not None and body_length > 0:
        set_headers.append(header_option("Content-Length", str(body_length)))
    set_headers.extend(header_option(k, v) for k, v in extra)
    return pb.HeaderMutation(set_headers=set_headers, remove_headers=list(remove))


# Replies that never vary are built once: constructing a protobuf costs more than serialising it.
# They are shared, so nobody may mutate them (the builders below return fresh objects otherwise).
_REQUEST_HEADERS_ACK = pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=pb.CommonResponse()))
_RESPONSE_HEADERS_ACK = pb.ProcessingResponse(
    response_headers=pb.HeadersResponse(response=pb.CommonResponse())
)
_REQUEST_BODY_ACK = pb.ProcessingResponse(request_body=pb.BodyResponse(response=pb.CommonResponse()))
_RESPONSE_BODY_ACK = pb.ProcessingResponse(response_body=pb.BodyResponse(response=pb.CommonResponse()))
_REQUEST_TRAILERS_ACK = pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
_RESPONSE_TRAILERS_ACK = pb.ProcessingResponse(response_trailers=pb.TrailersResponse())


_RESPONSE_HEADERS_WITH_MODES: dict[tuple[int, int], pb.ProcessingResponse] = {}


def headers_response(
    *,
    request: bool,
    mutation: pb.HeaderMutation | None = None,
    clear_route_cache: bool = False,
    dynamic_metadata: struct_pb2.Struct | None = None,
    body_modes: tuple[int, int] | None = None,
) -> pb.ProcessingResponse:
    """A reply to request or response headers (a shared constant when nothing is changed).

    ``body_modes`` (request, response) is a ``mode_override``: what Envoy sends next for this
    request only, honoured when the filter has ``allow_mode_override`` and no full-duplex body
    mode. Envoy takes both body modes of an override as given, so the request's is repeated;
    header and trailer modes are left as configured."""
    plain = mutation is None and not clear_route_cache and dynamic_metadata is None
    if plain and body_modes is None:
        return _REQUEST_HEADERS_ACK if request else _RESPONSE_HEADERS_ACK
    if plain and not request and body_modes is not None:
        found = _RESPONSE_HEADERS_WITH_MODES.get(body_modes)
        if found is None:  # a handful of mode pairs exist: build each once
            found = _RESPONSE_HEADERS_WITH_MODES[body_modes] = _headers_reply(
                request=False, common=pb.CommonResponse(), metadata=None, body_modes=body_modes
            )
        return found
    common = pb.CommonResponse(header_mutation=mutation, clear_route_cache=clear_route_cache)
    return _headers_reply(request=request, common=common, metadata=dynamic_metadata, body_modes=body_modes)


def _headers_reply(
    *,
    request: bool,
    common: pb.CommonResponse,
    metadata: struct_pb2.Struct | None,
    body_modes: tuple[int, int] | None,
) -> pb.ProcessingResponse:
    override = None
    if body_modes is not None:
        override = processing_mode_pb2.ProcessingMode(
            request_body_mode=body_modes[0], response_body_mode=body_modes[1]
        )
    hr = pb.HeadersResponse(response=common)
    if request:
        return pb.ProcessingResponse(request_headers=hr, dynamic_metadata=metadata, mode_override=override)
    return pb.ProcessingResponse(response_headers=hr, dynamic_metadata=metadata, mode_override=override)


def body_chunks(body: bytes, limit: int = MAX_CHUNK) -> Iterator[bytes]:
    """``body`` cut into pieces of at most ``limit`` bytes; an empty body yields one empty piece."""
    if not body:
        yield b""
        return
    for start in range(0, len(body), limit):
        yield body[start : start + limit]


def streamed_body_responses(
    body: bytes, *, request: bool, end_of_stream: bool, limit: int = MAX_CHUNK
) -> list[pb.ProcessingResponse]:
    """FULL_DUPLEX_STREAMED body replies; only the last may carry ``end_of_stream``."""
    if len(body) <= limit:  # the common case: one reply, built without the chunking loop
        return [_streamed_body(body, request=request, end_of_stream=end_of_stream)]
    pieces = list(body_chunks(body, limit))
    last = len(pieces) - 1
    return [
        _streamed_body(piece, request=request, end_of_stream=end_of_stream and i == last)
        for i, piece in enumerate(pieces)
    ]


def _streamed_body(piece: bytes, *, request: bool, end_of_stream: bool) -> pb.ProcessingResponse:
    mutation = pb.BodyMutation(
        streamed_response=pb.StreamedBodyResponse(body=piece, end_of_stream=end_of_stream)
    )
    br = pb.BodyResponse(response=pb.CommonResponse(body_mutation=mutation))
    return pb.ProcessingResponse(request_body=br) if request else pb.ProcessingResponse(response_body=br)


def buffered_body_response(
    body: bytes | None,
    *,
    request: bool,
    mutation: pb.HeaderMutation | None = None,
    clear_route_cache: bool = False,
    dynamic_metadata: struct_pb2.Struct | None = None,
) -> pb.ProcessingResponse:
    """BUFFERED/STREAMED-mode body reply: the whole (chunk) body replaced, headers mutated alongside.

    ``body`` None leaves the body as Envoy holds it (nothing is copied back); with nothing else
    to say either, the reply is a shared constant."""
    if body is None and mutation is None and not clear_route_cache and dynamic_metadata is None:
        return _REQUEST_BODY_ACK if request else _RESPONSE_BODY_ACK
    common = pb.CommonResponse(
        header_mutation=mutation,
        body_mutation=pb.BodyMutation(body=body) if body is not None else None,
        clear_route_cache=clear_route_cache,
    )
    br = pb.BodyResponse(response=common)
    if request:
        return pb.ProcessingResponse(request_body=br, dynamic_metadata=dynamic_metadata)
    return pb.ProcessingResponse(response_body=br, dynamic_metadata=dynamic_metadata)


def trailers_response(*, request: bool) -> pb.ProcessingResponse:
    """An empty trailers reply (trailers pass through unchanged); a shared constant."""
    return _REQUEST_TRAILERS_ACK if request else _RESPONSE_TRAILERS_ACK


# Dynamic metadata on every immediate reply, so the bootstrap's local-reply mapper can tell the
# picker's own (already OpenAI-shaped) answers from errors Envoy makes up itself.
LOCAL_REPLY_NAMESPACE = "infergate"
LOCAL_REPLY_KEY = "answered"


def _answered_metadata() -> struct_pb2.Struct:
    md = struct_pb2.Struct()
    md.fields[LOCAL_REPLY_NAMESPACE].struct_value.fields[LOCAL_REPLY_KEY].string_value = "picker"
    return md


def json_immediate_response(
    status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()
) -> pb.ProcessingResponse:
    """End the HTTP request at Envoy with ``status`` and a JSON ``body`` (content type set)."""
    set_headers = [header_option("content-type", "application/json")]
    set_headers.extend(header_option(k, v) for k, v in headers)
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            body=body,
            headers=pb.HeaderMutation(set_headers=set_headers),
            details=f"infergate_{error_code_name(status)}" if status >= 400 else "infergate",
        ),
        dynamic_metadata=_answered_metadata(),
    )


def immediate_response(status: int, message: str) -> pb.ProcessingResponse:
    """An OpenAI-shaped error reply for ``status`` (the same body the built-in proxy answers)."""
    err = RequestError(message)
    err.status = status
    err.error_type = "service_unavailable" if status == 503 else "internal_error"
    err.code = error_code_name(status)
    return error_response(err)


def error_response(err: RequestError) -> pb.ProcessingResponse:
    """The immediate reply for a request-ending gateway error: OpenAI error JSON, as the proxy's."""
    headers: list[tuple[str, str]] = list(err.headers.items())
    if err.retry_after is not None:
        headers.append(("retry-after", str(max(1, round(err.retry_after)))))
    elif err.status == 429:
        headers.append(("retry-after", "1"))
    allow = getattr(err, "allow", None)
    if isinstance(allow, str):
        headers.append(("allow", allow))
    return json_immediate_response(err.status, json.dumps(err.to_openai()).encode(), headers)
