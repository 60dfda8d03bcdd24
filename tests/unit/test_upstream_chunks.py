"""The upstream client joins the whole chunks it already holds into one piece of the body.

A model server streams one HTTP chunk per event; the relay then costs one director pass and one
client write per piece, so chunks that arrived together go out together. What is not whole, the
body's last chunk and anything malformed are left to the chunk-by-chunk parser.
"""

from __future__ import annotations

from typing import cast

import pytest

from infergate.net.http1_client import UpstreamConnectionError, UpstreamPool, UpstreamResponse, _Conn

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def response_holding(data: bytes) -> tuple[UpstreamResponse, _Conn]:
    """A response whose connection has received ``data`` (head included), its head parsed."""
    conn = _Conn("replica")
    conn.data_received(data)
    resp = UpstreamResponse(cast(UpstreamPool, None), conn, 5.0, False, lambda: None)
    await resp._read_head()
    return resp, conn


async def test_whole_chunks_already_received_come_as_one_piece_and_the_end_after() -> None:
    events = [b'data: {"n": %d}\n\n' % i for i in range(3)]
    resp, _ = await response_holding(HEAD + b"".join(map(chunk, events)) + b"0\r\n\r\n")
    assert await resp.read_chunk() == b"".join(events)
    assert await resp.read_chunk() == b""


async def test_a_partial_chunk_waits_for_its_own_read_and_extensions_are_parsed() -> None:
    first, second, third = b"data: a\n\n", b"data: bb\n\n", b"data: ccc\n\n"
    framed_third = chunk(third)
    held = chunk(first) + b"%x;name=v\r\n%s\r\n" % (len(second), second) + framed_third[:7]
    resp, conn = await response_holding(HEAD + held)
    assert await resp.read_chunk() == first + second
    conn.data_received(framed_third[7:] + b"0\r\n\r\n")
    assert await resp.read_chunk() == third
    assert await resp.read_chunk() == b""


async def test_a_malformed_chunk_after_a_whole_one_is_refused_on_the_next_read() -> None:
    resp, _ = await response_holding(HEAD + chunk(b"data: ok\n\n") + b"zz\r\nboom\r\n")
    assert await resp.read_chunk() == b"data: ok\n\n"
    with pytest.raises(UpstreamConnectionError, match="bad chunk size"):
        await resp.read_chunk()


async def test_a_chunk_without_its_crlf_yet_is_relayed_at_once_and_a_bad_crlf_refused() -> None:
    resp, conn = await response_holding(HEAD + b"9\r\ndata: a\n\n")
    assert await resp.read_chunk() == b"data: a\n\n"
    conn.data_received(b"\r\n" + chunk(b"data: b\n\n") + b"0\r\n\r\n")
    assert await resp.read_chunk() == b"data: b\n\n"
    assert await resp.read_chunk() == b""

    resp, conn = await response_holding(HEAD + b"9\r\ndata: a\n\n")
    assert await resp.read_chunk() == b"data: a\n\n"
    conn.data_received(b"XX" + chunk(b"data: b\n\n"))
    with pytest.raises(UpstreamConnectionError, match="bad chunk framing"):
        await resp.read_chunk()
