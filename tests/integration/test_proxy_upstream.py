"""The proxy's HTTP/1.1 upstream client against a raw TCP server that frames responses oddly."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import uvloop

from infergate.net.http1_client import UpstreamConnectionError, UpstreamPool, UpstreamTimeout

Start = Callable[[Callable[[asyncio.StreamWriter], Awaitable[bool]]], Awaitable[int]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Start]:
    servers: list[asyncio.Server] = []

    async def start(script: Callable[[asyncio.StreamWriter], Awaitable[bool]]) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    await reader.readexactly(length)
                    keep = await script(writer)
                    if not keep:
                        break
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(srv)
        return int(srv.sockets[0].getsockname()[1])

    yield start
    for s in servers:
        s.close()
        await s.wait_closed()


async def fetch(pool: UpstreamPool, port: int) -> tuple[int, bytes, list[bytes]]:
    resp = await pool.request(f"127.0.0.1:{port}", "127.0.0.1", port, "POST", "/v1/x", [("A", "b")], b"{}")
    chunks = [c async for c in resp.iter_chunks()]
    resp.release()
    return resp.status, b"".join(chunks), chunks


async def test_chunked_body_delivered_in_tiny_fragments_and_connection_reused(raw_server: Start) -> None:
    connections = 0

    async def script(w: asyncio.StreamWriter) -> bool:
        payload = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"6\r\ndata: \r\nA;ext=1\r\nhello\n\n!!!\r\n0\r\nX-Trailer: 1\r\n\r\n"
        )
        for i in range(len(payload)):
            w.write(payload[i : i + 1])
            await w.drain()
        return True

    port = await raw_server(script)
    pool = UpstreamPool(read_timeout=5)
    orig = pool._connect

    async def counting(*a: object) -> object:
        nonlocal connections
        connections += 1
        return await orig(*a)  # type: ignore[arg-type]

    pool._connect = counting  # type: ignore[assignment,method-assign]
    for _ in range(3):
        status, body, _ = await fetch(pool, port)
        assert (status, body) == (200, b"data: hello\n\n!!!")
    assert connections == 1
    await pool.close()


async def test_length_close_delimited_and_no_body(raw_server: Start) -> None:
    answers = iter(
        [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\nuntil close",
        ]
    )
    first_part_read = asyncio.Event()

    async def script(w: asyncio.StreamWriter) -> bool:
        data = next(answers)
        w.write(data)
        await w.drain()
        if data.endswith(b"ab"):
            await first_part_read.wait()  # the rest of the body only once the client has read "ab"
            w.write(b"cde")
            await w.drain()
            return True
        return not data.startswith(b"HTTP/1.0")

    port = await raw_server(script)
    pool = UpstreamPool(read_timeout=30)
    resp = await pool.request(f"127.0.0.1:{port}", "127.0.0.1", port, "POST", "/v1/x", [], b"{}")
    assert resp.status == 200
    assert await resp.read_chunk() == b"ab"
    first_part_read.set()
    assert b"".join([c async for c in resp.iter_chunks()]) == b"cde"
    resp.release()
    assert (await fetch(pool, port))[:2] == (204, b"")
    assert (await fetch(pool, port))[:2] == (200, b"until close")
    await pool.close()


async def test_truncated_body_refused_connection_and_silence(raw_server: Start) -> None:
    async def truncated(w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await w.drain()
        return False

    quiet_until_the_end = asyncio.Event()

    async def silent(w: asyncio.StreamWriter) -> bool:
        await quiet_until_the_end.wait()
        return False

    pool = UpstreamPool(read_timeout=0.3, connect_timeout=1)
    with pytest.raises(UpstreamConnectionError):
        await fetch(pool, await raw_server(truncated))
    with pytest.raises(UpstreamTimeout):
        await fetch(pool, await raw_server(silent))
    quiet_until_the_end.set()
    with pytest.raises(UpstreamConnectionError):
        await fetch(pool, 1)  # nothing listens on port 1
    await pool.close()


@pytest.mark.parametrize(
    "loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)
def test_request_bodies_of_any_size_arrive_whole_behind_their_head(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """Head and body are handed to the transport as two buffers (uvloop sends them with one
    ``writev`` and keeps what the socket does not take); bodies larger than the socket's buffer
    must still arrive whole, in order, on one kept-alive connection."""
    bodies = [b"", b"{}", b"y" * 65_535, b"x" * 65_536, bytes(range(256)) * 16_384]  # up to 4 MiB
    received: list[tuple[bytes, str, int]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                found = re.search(rb"(?i)\r\ncontent-length: (\d+)\r\n", head)
                assert found is not None
                body = await reader.readexactly(int(found.group(1)))
                received.append((head.split(b"\r\n", 1)[0], hashlib.sha256(body).hexdigest(), len(body)))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = int(srv.sockets[0].getsockname()[1])
        pool = UpstreamPool(read_timeout=30)
        for body in bodies:
            resp = await pool.request(f"127.0.0.1:{port}", "127.0.0.1", port, "POST", "/v1/x", [], body)
            assert b"".join([c async for c in resp.iter_chunks()]) == b"ok"
            resp.release()
        await pool.close()
        srv.close()
        await srv.wait_closed()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    want = [(b"POST /v1/x HTTP/1.1", hashlib.sha256(b).hexdigest(), len(b)) for b in bodies]
    assert received == want
