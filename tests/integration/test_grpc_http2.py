"""infergate's own gRPC server (servers/grpc_http2.py) against grpcio's client over loopback.

grpcio's client is the counterpart that checks the protocol: framing, HPACK, flow control both
ways, status trailers, deadlines, cancellation, GOAWAY. Messages are raw bytes (no serializers).
The ext_proc behaviour on top is covered by test_extproc.py and the Envoy e2e tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hpack import Decoder, Encoder

from infergate.servers.grpc_headers import status_trailers
from infergate.servers.grpc_http2 import GrpcMethod, GrpcServer, StreamContext


def _raw(b: bytes) -> bytes:
    return b


class Handlers:
    """Test methods; ``started``/``cancelled`` let a test wait for the handler, not for time."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()

    async def echo(self, _: Any, ctx: StreamContext) -> None:
        while (message := await ctx.read()) is not grpc.aio.EOF:
            await ctx.write(message)

    async def size(self, request: bytes, ctx: StreamContext) -> bytes:
        return str(len(request)).encode()

    async def big(self, request: bytes, ctx: StreamContext) -> bytes:
        return b"x" * int(request)

    async def abort(self, request: bytes, ctx: StreamContext) -> None:
        await ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, request.decode())

    async def crash(self, request: bytes, ctx: StreamContext) -> None:
        raise RuntimeError("boom")

    async def hold(self, request: bytes, ctx: StreamContext) -> bytes:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b"released"

    def methods(self) -> dict[str, GrpcMethod]:
        def unary(fn: Any) -> GrpcMethod:
            return GrpcMethod(fn, _raw, _raw)

        return {
            "/t.T/Echo": GrpcMethod(self.echo, _raw, _raw, client_streaming=True),
            "/t.T/Size": unary(self.size),
            "/t.T/Big": unary(self.big),
            "/t.T/Abort": unary(self.abort),
            "/t.T/Crash": unary(self.crash),
            "/t.T/Hold": unary(self.hold),
        }


@pytest.fixture
async def served() -> AsyncIterator[tuple[Handlers, GrpcServer, grpc.aio.Channel]]:
    handlers = Handlers()
    health = grpc_health.aio.HealthServicer()
    methods = handlers.methods()
    methods["/grpc.health.v1.Health/Watch"] = GrpcMethod(
        health.Watch,
        health_pb2.HealthCheckRequest.FromString,
        health_pb2.HealthCheckResponse.SerializeToString,
    )
    methods["/grpc.health.v1.Health/Check"] = GrpcMethod(
        health.Check,
        health_pb2.HealthCheckRequest.FromString,
        health_pb2.HealthCheckResponse.SerializeToString,
    )
    server = GrpcServer(methods, max_message_bytes=8 << 20)
    port = await server.start("127.0.0.1", 0)
    server.health = health  # type: ignore[attr-defined]
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)]
    )
    try:
        yield handlers, server, channel
    finally:
        await channel.close()
        await server.stop(0)


def unary(channel: grpc.aio.Channel, name: str) -> Any:
    return channel.unary_unary(f"/t.T/{name}")


async def test_bidirectional_stream_echoes_in_order(
    served: tuple[Handlers, GrpcServer, grpc.aio.Channel],
) -> None:
    _, _, channel = served
    call = channel.stream_stream("/t.T/Echo")()
    got = []
    for i in range(50):
        await call.write(f"m{i}".encode())
        got.append(await call.read())
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert got == [f"m{i}".encode() for i in range(50)]
    assert await call.code() is grpc.StatusCode.OK


async def test_messages_larger_than_every_window_both_ways(
    served: tuple[Handlers, GrpcServer, grpc.aio.Channel],
) -> None:
    """3 MB in (past the client's 64 KiB default send window, split by its frame size) and 5 MB
    out (past the client's receive window: the server must wait for its WINDOW_UPDATEs)."""
    _, _, channel = served
    assert await unary(channel, "Size")(b"y" * (3 << 20)) == str(3 << 20).encode()
    reply = await unary(channel, "Big")(str(5 << 20).encode())
    assert reply == b"x" * (5 << 20)
    # many concurrent calls share the connection window
    replies = await asyncio.gather(*(unary(channel, "Big")(b"200000") for _ in range(20)))
    assert all(r == b"x" * 200000 for r in replies)


async def test_status_codes(served: tuple[Handlers, GrpcServer, grpc.aio.Channel]) -> None:
    _, _, channel = served
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await unary(channel, "Nope")(b"")
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
    details = 'no such tenant: ünïcode, 100% / "quoted"\nnext line'
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await unary(channel, "Abort")(details.encode())
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == details
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await unary(channel, "Crash")(b"")
    assert err.value.code() is grpc.StatusCode.UNKNOWN
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await unary(channel, "Size")(b"z" * ((8 << 20) + 1))
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await unary(channel, "Size")(b"still serving") == b"13"


async def test_cancel_and_deadline_reach_the_handler(
    served: tuple[Handlers, GrpcServer, grpc.aio.Channel],
) -> None:
    handlers, _, channel = served
    call = unary(channel, "Hold")(b"")
    await handlers.started.wait()
    call.cancel()
    await handlers.cancelled.wait()  # RST_STREAM from the client cancels the handler
    handlers.started.clear()
    handlers.cancelled.clear()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await unary(channel, "Hold")(b"", timeout=0.5)
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    await handlers.cancelled.wait()  # grpc-timeout: the server cancels its side too


async def test_health_watch_streams_changes(served: tuple[Handlers, GrpcServer, grpc.aio.Channel]) -> None:
    _, server, channel = served
    health: grpc_health.aio.HealthServicer = server.health  # type: ignore[attr-defined]
    stub = health_pb2_grpc.HealthStub(channel)
    await health.set("svc", health_pb2.HealthCheckResponse.SERVING)
    assert (await stub.Check(health_pb2.HealthCheckRequest(service="svc"))).status == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Check(health_pb2.HealthCheckRequest(service="other"))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    watch = stub.Watch(health_pb2.HealthCheckRequest(service="svc"))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    await health.set("svc", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()


@contextlib.asynccontextmanager
async def held_call(handlers: Handlers) -> AsyncIterator[tuple[GrpcServer, grpc.aio.Channel, Any]]:
    """A fresh server with one ``Hold`` call in its handler (the test stops the server)."""
    server = GrpcServer(handlers.methods())
    port = await server.start("127.0.0.1", 0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = unary(channel, "Hold")(b"")
        await handlers.started.wait()
        yield server, channel, call


async def test_stop_lets_open_calls_finish_within_the_grace() -> None:
    handlers = Handlers()
    async with held_call(handlers) as (server, channel, call):
        stopping = asyncio.create_task(server.stop(30))
        await asyncio.sleep(0)  # one turn: stop() runs to its first await, GOAWAY queued
        assert server.connections and all(c.going_away for c in server.connections)
        handlers.release.set()
        assert await call == b"released"
        await stopping
        await server.wait_for_termination()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await unary(channel, "Size")(b"", timeout=30)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_stop_cuts_calls_after_the_grace() -> None:
    handlers = Handlers()
    async with held_call(handlers) as (server, _, call):
        await server.stop(0)
        assert handlers.cancelled.is_set()
        with pytest.raises(grpc.aio.AioRpcError):
            await call


Frame = tuple[int, int, int, bytes]  # type, flags, stream, payload
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = bytes((0, 0, 0, 4, 0)) + b"\x00\x00\x00\x00"
PING = bytes((0, 0, 8, 6, 0)) + b"\x00\x00\x00\x00" + b"12345678"


def _parse(data: bytes) -> list[Frame]:
    out = []
    while len(data) >= 9 and len(data) >= 9 + int.from_bytes(data[:3], "big"):
        n = int.from_bytes(data[:3], "big")
        out.append((data[3], data[4], struct.unpack(">I", data[5:9])[0], data[9 : 9 + n]))
        data = data[9 + n :]
    return out


def exchange(port: int, payload: bytes, until: Any = None) -> list[Frame]:
    """Send ``payload`` and read frames until ``until(frames)`` holds or the server closes. The
    socket timeout only bounds a failure: a test never waits for silence."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30.0) as sock:
        sock.sendall(payload)
        while not (until is not None and until(_parse(data))):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return _parse(data)


def request_headers(sid: int, path: str, *, end_stream: bool = False) -> bytes:
    block = Encoder().encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "x"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
    )
    flags = 0x4 | (0x1 if end_stream else 0)  # END_HEADERS (| END_STREAM)
    return bytes((0, 0, len(block), 1, flags)) + struct.pack(">I", sid) + block


async def test_raw_ping_settings_and_garbage() -> None:
    server = GrpcServer({})
    port = await server.start("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    ping_ack = (6, 1, 0, b"12345678")
    try:
        frames = await loop.run_in_executor(
            None, exchange, port, PREFACE + EMPTY_SETTINGS + PING, lambda f: ping_ack in f
        )
        kinds = [(t, f) for t, f, _, _ in frames]
        assert (4, 0) in kinds and (4, 1) in kinds  # our SETTINGS, and the ACK of theirs
        frames = await loop.run_in_executor(None, exchange, port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert frames and frames[-1][0] == 7  # GOAWAY, then closed
        oversized = bytes((0, 0x40, 0x01, 0, 0)) + struct.pack(">I", 1) + b"z" * 16385  # > 16,384
        frames = await loop.run_in_executor(None, exchange, port, PREFACE + oversized)
        assert frames[-1][0] == 7 and frames[-1][3][4:8] == struct.pack(">I", 6)  # FRAME_SIZE_ERROR
        stray = bytes((0, 0, 0, 9, 4)) + struct.pack(">I", 1)  # a CONTINUATION with no HEADERS before it
        frames = await loop.run_in_executor(None, exchange, port, PREFACE + stray + PING)
        assert frames[-1][0] == 7 and ping_ack not in frames  # nothing is read after the error
    finally:
        await server.stop(0)


async def test_a_stream_window_is_credited_only_as_the_handler_reads() -> None:
    """1 MiB of messages to a handler that does not read gets no WINDOW_UPDATE for its stream
    (the peer must stop there); to one that reads, it does."""
    handlers = Handlers()

    async def drain(_: Any, ctx: StreamContext) -> None:
        while await ctx.read() is not grpc.aio.EOF:
            pass

    async def stall(_: Any, ctx: StreamContext) -> None:
        await handlers.release.wait()

    server = GrpcServer(
        {
            "/t.T/Drain": GrpcMethod(drain, _raw, _raw, client_streaming=True),
            "/t.T/Stall": GrpcMethod(stall, _raw, _raw, client_streaming=True),
        }
    )
    port = await server.start("127.0.0.1", 0)
    message = b"\x00" + struct.pack(">I", 16379) + b"m" * 16379  # one 16,384-byte frame each
    body = (bytes((0, 0x40, 0x00, 0, 0)) + struct.pack(">I", 1) + message) * 64  # 1 MiB on stream 1
    loop = asyncio.get_running_loop()

    def credited(frames: list[Frame]) -> bool:
        return any(kind == 8 and sid == 1 for kind, _, sid, _ in frames)

    try:
        stalled = await loop.run_in_executor(
            None,
            exchange,
            port,
            PREFACE + EMPTY_SETTINGS + request_headers(1, "/t.T/Stall") + body + PING,
            lambda f: (6, 1, 0, b"12345678") in f,
        )
        assert not credited(stalled)
        drained = await loop.run_in_executor(
            None, exchange, port, PREFACE + EMPTY_SETTINGS + request_headers(1, "/t.T/Drain") + body, credited
        )
        assert credited(drained)
    finally:
        handlers.release.set()
        await server.stop(0)


def test_trailer_literals_decode_as_hpack() -> None:
    """Status details over 127 bytes need HPACK's multi-byte length; they are percent-encoded."""
    details = "d" * 300 + " ü%"
    headers = {
        str(k): str(v)
        for k, v in Decoder().decode(status_trailers(grpc.StatusCode.UNAVAILABLE, details), raw=False)
    }
    assert headers["grpc-status"] == "14"
    assert headers["grpc-message"] == "d" * 300 + " %C3%BC%25"


async def test_a_smaller_header_table_is_acknowledged_in_the_next_block() -> None:
    """A peer that lowers SETTINGS_HEADER_TABLE_SIZE is owed a dynamic table size update at the
    start of the next header block (RFC 7541 §4.2; nghttp2 refuses the block without it)."""
    server = GrpcServer({})
    port = await server.start("127.0.0.1", 0)
    settings = bytes((0, 0, 6, 4, 0)) + b"\x00\x00\x00\x00" + struct.pack(">HI", 1, 0)  # HEADER_TABLE_SIZE 0
    payload = PREFACE + settings + request_headers(1, "/t.T/Nope", end_stream=True)
    try:
        frames = await asyncio.get_running_loop().run_in_executor(
            None, exchange, port, payload, lambda f: any(k == 1 and sid == 1 for k, _, sid, _ in f)
        )
    finally:
        await server.stop(0)
    (block,) = [payload for kind, _, sid, payload in frames if kind == 1 and sid == 1]
    assert block[0] == 0x20  # size update to 0 first
    decoded = {str(k): str(v) for k, v in Decoder().decode(block, raw=False)}
    assert decoded["grpc-status"] == "12"  # UNIMPLEMENTED


async def test_bad_requests_get_their_errors() -> None:
    """A compressed message (UNIMPLEMENTED), a message its method cannot decode (INTERNAL), and a
    request that is not gRPC (stream reset with PROTOCOL_ERROR), each on its own stream."""

    def strict(data: bytes) -> bytes:
        if data != b"ok":
            raise ValueError("not a request")
        return data

    handlers = Handlers()
    server = GrpcServer({"/t.T/Size": GrpcMethod(handlers.size, strict, _raw)})
    port = await server.start("127.0.0.1", 0)
    compressed = bytes((0, 0, 7, 0, 1)) + struct.pack(">I", 1) + b"\x01" + struct.pack(">I", 2) + b"ok"
    garbled = bytes((0, 0, 7, 0, 1)) + struct.pack(">I", 3) + b"\x00" + struct.pack(">I", 2) + b"no"
    block = Encoder().encode(
        [(":method", "GET"), (":scheme", "http"), (":path", "/t.T/Size"), (":authority", "x")]
    )
    not_grpc = bytes((0, 0, len(block), 1, 0x5)) + struct.pack(">I", 5) + block

    def ended(frames: list[Frame]) -> bool:
        done = {sid for kind, flags, sid, _ in frames if kind == 1 and flags & 0x1}
        return {1, 3} <= done and any(kind == 3 and sid == 5 for kind, _, sid, _ in frames)

    payload = PREFACE + EMPTY_SETTINGS
    payload += (
        request_headers(1, "/t.T/Size") + compressed + request_headers(3, "/t.T/Size") + garbled + not_grpc
    )
    try:
        frames = await asyncio.get_running_loop().run_in_executor(None, exchange, port, payload, ended)
    finally:
        await server.stop(0)
    decoder = Decoder()
    status = {}
    for kind, _, sid, data in frames:
        if kind == 1:  # decoded in order: the blocks share the connection's HPACK state
            status[sid] = {str(k): str(v) for k, v in decoder.decode(data, raw=False)}.get("grpc-status")
    assert status[1] == "12" and status[3] == "13"  # UNIMPLEMENTED, INTERNAL
    assert (3, 0, 5, struct.pack(">I", 1)) in frames  # RST_STREAM PROTOCOL_ERROR
