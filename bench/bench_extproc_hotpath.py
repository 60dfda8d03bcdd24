"""The picker's own Python per request, without gRPC: the ext_proc servicer driven in process.

A fake stream context hands ``ExternalProcessor.Process`` the messages the local Envoy sends for one
non-streaming completion (request headers with ``protocol_config``, the buffered body, response
headers, the whole JSON answer) and collects the replies; the picker is wired as ``infergate serve
--data-plane envoy`` wires it (Director, flow control, decision log, metrics) and routes over one
endpoint, whose metrics are refreshed every 0.1 s as a scraper would. CPU per request is
``time.process_time`` over ``--requests`` requests (the least of ``--reps`` is the figure to
compare: other load on the machine raises it). ``--http2`` sends the same messages through the
picker's gRPC server (``servers/grpc_http2.py``) instead: HTTP/2 frames as Envoy writes them (one
connection, HPACK-encoded stream headers, 32 streams at a time) into the server's protocol over an
in-memory transport, so framing, header decoding and the per-stream tasks are counted too. What the
sockets and Envoy cost on top is measured by ``bench_envoy.py`` and ``bench_dataplane.py``.
``--profile out.prof`` writes a cProfile of one repetition.

    .venv/bin/python bench/bench_extproc_hotpath.py [--requests 20000] [--reps 3] [--http2] \
        [--profile out.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import struct
import time
from pathlib import Path
from typing import Any

import grpc
import uvloop
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from hpack import Encoder, HeaderTuple, NeverIndexedHeaderTuple
from prometheus_client import CollectorRegistry

from infergate.app.core import build_core
from infergate.config.picker import default_picker_config
from infergate.config.settings import Settings
from infergate.dataplanes.extproc.server import ExternalProcessor
from infergate.datastore.store import Datastore
from infergate.servers.grpc_http2 import GrpcMethod, GrpcServer
from infergate.telemetry import GatewayMetrics
from infergate.types import EndpointMeta, EndpointMetrics, PoolSpec

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ENDPOINT = "10.0.0.1:8000"
_Mode = processing_mode_pb2.ProcessingMode.BodySendMode


def _headers(pairs: list[tuple[str, str]], *, eos: bool = False) -> pb.HttpHeaders:
    hv = [base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
    return pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=hv), end_of_stream=eos)


def envoy_messages(i: int) -> list[pb.ProcessingRequest]:
    """What Envoy sends for one completion (its usual request headers, a fresh request id)."""
    body = json.dumps({"model": MODEL, "prompt": f"Say hello {i}.", "max_tokens": 1}).encode()
    answer = json.dumps(
        {
            "id": f"cmpl-{i}",
            "object": "text_completion",
            "model": MODEL,
            "choices": [{"index": 0, "text": "Hi", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }
    ).encode()
    head = pb.ProcessingRequest(
        request_headers=_headers(
            [
                (":authority", "127.0.0.1:8080"),
                (":path", "/v1/completions"),
                (":method", "POST"),
                (":scheme", "http"),
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
                ("user-agent", "Python/3.11 aiohttp/3.9"),
                ("accept", "*/*"),
                ("x-forwarded-proto", "http"),
                ("x-request-id", f"6f1c2e4a-0000-4000-8000-{i:012d}"),
            ]
        )
    )
    head.protocol_config.request_body_mode = _Mode.BUFFERED
    head.protocol_config.response_body_mode = _Mode.STREAMED
    return [
        head,
        pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)),
        pb.ProcessingRequest(
            response_headers=_headers(
                [
                    (":status", "200"),
                    ("content-type", "application/json"),
                    ("content-length", str(len(answer))),
                    ("date", "Wed, 02 Dec 2026 16:00:00 GMT"),
                    ("server", "uvicorn"),
                ]
            )
        ),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=answer, end_of_stream=True)),
    ]


class FakeStream:
    """The reader/writer side of one ext_proc stream, without gRPC."""

    def __init__(self, messages: list[pb.ProcessingRequest]) -> None:
        self._messages = iter(messages)
        self.replies: list[pb.ProcessingResponse] = []

    async def read(self) -> Any:
        return next(self._messages, grpc.aio.EOF)

    async def write(self, reply: pb.ProcessingResponse) -> None:
        self.replies.append(reply)


def _metrics(now: float, finished: int) -> EndpointMetrics:
    """An idle server's scrape, with vLLM's finished-requests counter (flow control reads it)."""
    return EndpointMetrics(updated_at=now, finished_requests=float(finished))


def build() -> tuple[ExternalProcessor, Datastore]:
    """The picker as ``infergate serve --data-plane envoy`` wires it (``build_core``: default
    settings, flow control and the decision log included) over one endpoint."""
    ds = Datastore()
    host, port = ENDPOINT.rsplit(":", 1)
    ds.upsert_endpoint(EndpointMeta(name="e", address=host, port=int(port)))
    ds.set_models(ENDPOINT, frozenset({MODEL}))
    ds.update_metrics(ENDPOINT, _metrics(ds.clock.now(), 0))
    core = build_core(
        ds,
        PoolSpec(name="bench"),
        picker=default_picker_config(lora=False),
        settings=Settings(),
        metrics=GatewayMetrics(CollectorRegistry()),
        clock=ds.clock,
        rng=random.Random(0),
    )
    return ExternalProcessor(core.director, endpoints=ds), ds


async def run(proc: ExternalProcessor, ds: Datastore, streams: list[list[pb.ProcessingRequest]]) -> float:
    start = time.process_time()
    scraped = 0.0
    for done, messages in enumerate(streams):
        now = ds.clock.now()
        if now - scraped > 0.1:  # keep the endpoint's metrics fresh, as the scraper would
            ds.update_metrics(ENDPOINT, _metrics(now, done))
            scraped = now
        fake = FakeStream(messages)
        await proc.Process(None, fake)  # type: ignore[arg-type]
        routed = fake.replies[1].request_body.response.header_mutation.set_headers
        assert len(fake.replies) == 4 and routed, fake.replies
    return time.process_time() - start


PROCESS = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
_H2 = struct.Struct(">I")
BATCH = 32


def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + _H2.pack(sid) + payload


class MemoryTransport(asyncio.Transport):
    """What the server writes, kept; nothing is sent anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def http2_streams(streams: list[list[pb.ProcessingRequest]]) -> list[bytes]:
    """Each stream's bytes as Envoy sends them: HEADERS, then one DATA frame per message."""
    encoder = Encoder()
    out = []
    for i, messages in enumerate(streams):
        sid = 2 * i + 1
        headers: list[HeaderTuple | tuple[str, str]] = [
            (":method", "POST"),
            NeverIndexedHeaderTuple(":path", PROCESS),  # Envoy sends the path literal, never indexed
            (":authority", "127.0.0.1:9002"),
            (":scheme", "http"),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
            ("x-envoy-internal", "true"),
            ("x-forwarded-for", "192.0.2.2"),
        ]
        chunks = [_frame(1, 0x4, sid, encoder.encode(headers))]
        for n, m in enumerate(messages):
            data = m.SerializeToString()
            last = n == len(messages) - 1
            chunks.append(_frame(0, 0x1 if last else 0, sid, b"\x00" + _H2.pack(len(data)) + data))
        out.append(b"".join(chunks))
    return out


def _connection(server: GrpcServer) -> asyncio.Protocol:
    from infergate.servers import grpc_http2

    return grpc_http2._Connection(server)


def build_http2(proc: ExternalProcessor) -> GrpcServer:
    read, write = pb.ProcessingRequest.FromString, pb.ProcessingResponse.SerializeToString
    method = GrpcMethod(proc.Process, read, write, client_streaming=True)
    return GrpcServer({PROCESS: method})


async def run_http2(server: GrpcServer, ds: Datastore, streams: list[bytes]) -> float:
    """One connection, ``BATCH`` streams fed at a time and run to completion before the next."""
    conn = server.protocol() if hasattr(server, "protocol") else _connection(server)  # older sources
    transport = MemoryTransport()
    conn.connection_made(transport)
    window = _H2.pack((1 << 31) - 1 - 65535)  # the client's connection window: never a limit here
    conn.data_received(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b"") + _frame(8, 0, 0, window))
    start = time.process_time()
    scraped = 0.0
    for at in range(0, len(streams), BATCH):
        now = ds.clock.now()
        if now - scraped > 0.1:
            ds.update_metrics(ENDPOINT, _metrics(now, at))
            scraped = now
        conn.data_received(b"".join(streams[at : at + BATCH]))
        await asyncio.gather(*(s.task for s in conn.streams.values()))  # type: ignore[attr-defined]
    elapsed = time.process_time() - start
    await asyncio.sleep(0)  # the last flush
    trailers = transport.written.count(b"grpc-status")
    ok = transport.written.count(b"grpc-status\x010")  # the literal OK trailer, as pre-encoded
    assert trailers == ok == len(streams), (trailers, ok, len(streams))
    conn.connection_lost(None)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--http2", action="store_true", help="through the picker's gRPC server")
    ap.add_argument("--profile", type=Path)
    args = ap.parse_args()
    proc, ds = build()
    streams = [envoy_messages(i) for i in range(args.requests)]

    async def once(count: int) -> float:
        if args.http2:
            return await run_http2(build_http2(proc), ds, http2_streams(streams[:count]))
        return await run(proc, ds, streams[:count])

    async def measure() -> list[float]:
        await once(1000)  # warm-up
        return [1e6 * await once(args.requests) / args.requests for _ in range(args.reps)]

    per_request = uvloop.run(measure())
    what = "HTTP/2 server + servicer + Director" if args.http2 else "servicer + Director"
    figures = ", ".join(f"{v:.1f}" for v in per_request)
    print(f"{what} CPU per request: {figures} µs (min {min(per_request):.1f})")
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        uvloop.run(once(args.requests))
        prof.disable()
        prof.dump_stats(args.profile)


if __name__ == "__main__":
    main()
