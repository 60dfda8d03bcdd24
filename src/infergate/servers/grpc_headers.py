"""The gRPC header fields the picker's HTTP/2 server writes and reads, as HPACK bytes.

The server (``grpc_http2``) keeps no HPACK encoder state: every field it sends is a literal never
indexed (RFC 7541 §6.2.2), so the response headers and the OK trailers are encoded once, here, at
import, and a status with details costs two literals. The one request field the server reads
beyond the path, ``grpc-timeout``, is parsed here too. Kept apart from the framing, streams and
flow control of ``grpc_http2`` because this is encoding only: bytes in, bytes out, no connection
state, and a test decodes what it writes with ``hpack``'s own decoder.
"""

from __future__ import annotations

import urllib.parse

import grpc

__all__ = [
    "OK_TRAILERS",
    "RESPONSE_HEADERS",
    "go_code_name",
    "grpc_timeout",
    "hpack_integer",
    "hpack_literal",
    "status_trailers",
]


def hpack_integer(value: int, prefix_bits: int, first: int) -> bytes:
    """HPACK integer (RFC 7541 §5.1) with ``first`` holding the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name: bytes, value: bytes) -> bytes:
    """A header field literal without indexing, new name, no Huffman coding (RFC 7541 §6.2.2)."""
    return b"\x00" + hpack_integer(len(name), 7, 0) + name + hpack_integer(len(value), 7, 0) + value


# ":status: 200" is static entry 8; content-type (static 31) as a literal without indexing.
RESPONSE_HEADERS = b"\x88" + hpack_integer(31, 4, 0) + hpack_integer(16, 7, 0) + b"application/grpc"
OK_TRAILERS = hpack_literal(b"grpc-status", b"0")


def status_trailers(code: grpc.StatusCode, details: str | None) -> bytes:
    """The trailers of a call ending with ``code``; ``details`` percent-encoded as gRPC wants."""
    block = hpack_literal(b"grpc-status", str(code.value[0]).encode())
    if details:
        block += hpack_literal(
            b"grpc-message", urllib.parse.quote(details, safe=" !#$&'()*+,/:;=?@[]~").encode()
        )
    return block


def grpc_timeout(value: str) -> float | None:
    """``grpc-timeout`` (e.g. ``100m``) in seconds, None when absent or malformed."""
    units = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
    if len(value) < 2 or value[-1] not in units or not value[:-1].isdigit():
        return None
    return int(value[:-1]) * units[value[-1]]


_GO_SPELLING = {grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled"}


def go_code_name(code: grpc.StatusCode) -> str:
    """``code`` as grpc-go's ``codes.Code`` prints it (``DEADLINE_EXCEEDED`` → ``DeadlineExceeded``):
    the reference's label values for gRPC status codes."""
    return _GO_SPELLING.get(code) or "".join(word.capitalize() for word in code.name.split("_"))
