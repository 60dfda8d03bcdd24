"""The inference listener's HTTP/1.1 server (servers/http1.py) over real loopback sockets.

Each test speaks raw HTTP/1.1 to the server, so what is asserted is the bytes a client sees:
framing, keep-alive, pipelining order, limits and cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from infergate.servers.http1 import BodyTooLarge, Http1Server, HttpRequest, MalformedBody
from infergate.servers.http1_response import Response
from infergate.servers.listener import LimitedListener

Handler = Callable[[HttpRequest], Awaitable[Response | None]]


class Served:
    def __init__(self, server: Http1Server, listener: LimitedListener) -> None:
        self.server = server
        self.listener = listener

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.listener.port)


@contextlib.asynccontextmanager
async def _serve(handler: Handler, **kw: float) -> AsyncIterator[Served]:
    server = Http1Server(handler, **kw)  # type: ignore[arg-type]
    listener = LimitedListener(server, 100, name="test")
    await listener.start("127.0.0.1", 0)
    try:
        yield Served(server, listener)
    finally:
        await listener.stop()
        await server.shutdown(1.0)


async def _echo(req: HttpRequest) -> Response:
    body = await req.read_body(1 << 20, 5.0)
    answer = req.method.encode() + b" " + req.raw_path.encode() + b" " + body
    return Response(200, answer, content_type="text/plain")


class Stuck:
    """A handler that never answers: ``started`` once it runs, ``cancelled`` once it is cancelled."""

    def __init__(self) -> None:
        self.started, self.cancelled = asyncio.Event(), asyncio.Event()

    async def __call__(self, req: HttpRequest) -> Response:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return Response(200)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.read()
    return status, headers, body


async def test_pipelined_requests_are_answered_in_order_on_one_connection() -> None:
    release_first = asyncio.Event()

    async def handler(req: HttpRequest) -> Response:
        if req.path == "/slow":
            await release_first.wait()
        return await _echo(req)

    async with _serve(handler) as srv:
        reader, writer = await srv.connect()
        writer.write(
            b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\na"
            b"POST /fast?q=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nbc\r\n0\r\n\r\n"
        )
        await writer.drain()
        release_first.set()
        assert (await _read_response(reader))[2] == b"POST /slow a"
        status, headers, body = await _read_response(reader)
        assert (status, body) == (200, b"POST /fast?q=1 bc")
        assert "connection" not in headers  # still keep-alive
        writer.close()


async def test_expect_100_continue_is_answered_when_the_body_is_read() -> None:
    async with _serve(_echo) as srv:
        reader, writer = await srv.connect()
        writer.write(b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"abc")
        assert (await _read_response(reader))[2] == b"POST /v1/x abc"
        writer.close()


async def test_http10_closes_after_the_answer_and_streams_without_chunking() -> None:
    async def stream(req: HttpRequest) -> None:
        req.start_stream(200, "", [("Content-Type", "text/event-stream")])
        await req.write(b"data: 1\n\n")
        await req.write(b"data: 2\n\n")
        req.end_stream()

    async with _serve(stream) as srv:
        reader, writer = await srv.connect()
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        status, headers, body = await _read_response(reader)  # read to EOF: close-delimited
        assert (status, body) == (200, b"data: 1\n\ndata: 2\n\n")
        assert "transfer-encoding" not in headers and headers["connection"] == "close"
        writer.close()


async def test_a_head_field_over_the_limit_gets_an_openai_400_and_a_closed_connection() -> None:
    async with _serve(_echo, max_field_size=64) as srv:
        reader, writer = await srv.connect()
        writer.write(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 100 + b"\r\n\r\n")
        status, headers, body = await _read_response(reader)
        assert status == 400 and headers["connection"] == "close"
        assert json.loads(body)["error"]["type"] == "invalid_request_error"
        assert await reader.read() == b""
        writer.close()


async def test_a_chunked_body_over_the_limit_is_refused_without_buffering_it() -> None:
    seen: list[str] = []

    async def handler(req: HttpRequest) -> Response:
        try:
            await req.read_body(10, 5.0)
        except BodyTooLarge as exc:
            seen.append(str(exc))
            return Response(413, b"too large")
        return Response(200)

    async with _serve(handler, max_body_bytes=10) as srv:
        reader, writer = await srv.connect()
        head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        writer.write(head + b"20\r\n" + b"x" * 32 + b"\r\n")
        status, headers, _ = await _read_response(reader)
        assert status == 413 and headers["connection"] == "close"  # the rest is dropped, never buffered
        assert seen
        writer.close()


async def test_a_connection_whose_request_head_never_completes_is_closed_after_the_idle_timeout() -> None:
    async with _serve(_echo, idle_timeout=0.05) as srv:
        reader, writer = await srv.connect()
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # no blank line: the head never ends
        assert await asyncio.wait_for(reader.read(), 5.0) == b""
        writer.close()


async def test_a_client_that_disconnects_cancels_its_handler() -> None:
    handler = Stuck()

    async with _serve(handler) as srv:
        _, writer = await srv.connect()
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await handler.started.wait()
        writer.close()
        await asyncio.wait_for(handler.cancelled.wait(), 5.0)


async def test_shutdown_lets_a_running_request_finish_and_closes_idle_connections() -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(req: HttpRequest) -> Response:
        if req.path == "/slow":
            started.set()
            await release.wait()
        return Response(200, b"done")

    server = Http1Server(handler)
    listener = LimitedListener(server, 10)
    await listener.start("127.0.0.1", 0)
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", listener.port)
    idle_w.write(b"GET /quick HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await _read_response(idle_r))[0] == 200
    busy_r, busy_w = await asyncio.open_connection("127.0.0.1", listener.port)
    busy_w.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await started.wait()
    await listener.stop()
    stopping = asyncio.ensure_future(server.shutdown(5.0))
    assert await idle_r.read() == b""  # the idle keep-alive connection is closed at once
    release.set()
    status, headers, body = await _read_response(busy_r)
    assert (status, body, headers["connection"]) == (200, b"done", "close")
    await stopping
    idle_w.close()
    busy_w.close()


async def test_no_body_and_no_length_for_204_nor_a_body_for_head() -> None:
    async def handler(req: HttpRequest) -> Response:
        return Response(204 if req.path == "/none" else 200, b"" if req.path == "/none" else b"hello")

    async with _serve(handler) as srv:
        reader, writer = await srv.connect()
        writer.write(b"GET /none HTTP/1.1\r\nHost: x\r\n\r\nHEAD /h HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 204 No Content\r\n") and b"Content-Length" not in head
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"Content-Length: 5\r\n" in head
        writer.write(b"GET /none HTTP/1.1\r\nHost: x\r\n\r\n")  # no body bytes came before this answer
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 204")
        writer.close()


@pytest.mark.parametrize("bad", [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost x\r\n\r\n"])
async def test_malformed_requests_get_400_and_the_server_keeps_serving(bad: bytes) -> None:
    async with _serve(_echo) as srv:
        reader, writer = await srv.connect()
        writer.write(bad)
        assert (await _read_response(reader))[0] == 400
        writer.close()
        reader, writer = await srv.connect()
        writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await _read_response(reader))[2] == b"GET /ok "
        writer.close()


async def test_an_early_answer_reads_and_drops_the_rest_of_the_body_before_closing() -> None:
    async def refuse(req: HttpRequest) -> Response:
        return Response(401, b"no key")  # answered from the head alone, body unread

    async with _serve(refuse) as srv:
        reader, writer = await srv.connect()
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n")
        status, headers, body = await _read_response(reader)
        assert (status, body, headers["connection"]) == (401, b"no key", "close")
        writer.write(b"x" * 200000)  # a reset would fail this write or the read below
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5.0) == b""  # closed once the body is in
        writer.close()


async def test_a_broken_chunked_body_fails_the_read_that_waits_for_it() -> None:
    failures: list[str] = []

    async def handler(req: HttpRequest) -> Response:
        try:
            await req.read_body(1 << 20, 5.0)
        except MalformedBody as exc:
            failures.append(str(exc))
            return Response(400, b"bad body")
        return Response(200)

    async with _serve(handler) as srv:
        reader, writer = await srv.connect()
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        writer.write(b"zz\r\nnot hex\r\n")
        status, headers, _ = await _read_response(reader)
        assert (status, headers["connection"]) == (400, "close") and failures
        writer.close()


async def test_head_rules_date_once_host_required_and_http10_keep_alive() -> None:
    async def handler(req: HttpRequest) -> Response:
        if req.path == "/dated":
            return Response(200, b"x", [("date", "Mon, 01 Jan 2024 00:00:00 GMT")])
        return Response(200, b"y")

    async with _serve(handler) as srv:
        reader, writer = await srv.connect()
        writer.write(b"GET /dated HTTP/1.1\r\nHost: x\r\n\r\n")
        head = (await reader.readuntil(b"\r\n\r\n")).lower()
        assert head.count(b"\r\ndate: ") == 1 and b"2024" in head
        await reader.readexactly(1)
        writer.write(b"GET /other HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = await _read_response(reader)
        assert (status, headers["connection"]) == (200, "keep-alive") and "date" in headers
        writer.write(b"GET /nohost HTTP/1.1\r\n\r\n")  # the same connection is still open
        assert (await _read_response(reader))[0] == 400
        writer.close()


async def test_shutdown_cancels_what_outlives_the_grace() -> None:
    stuck = Stuck()

    server = Http1Server(stuck)
    listener = LimitedListener(server, 10)
    await listener.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await stuck.started.wait()
    await listener.stop()
    await server.shutdown(0.01)
    assert stuck.cancelled.is_set()  # awaited by shutdown itself
    assert await reader.read() == b""  # cut without an answer
    writer.close()
