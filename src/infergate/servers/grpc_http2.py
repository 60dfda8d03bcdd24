"""A gRPC server of its own: HTTP/2 framing for the few methods the ext_proc picker serves.

grpc.aio spent about 1.5 ms of the picker's main thread per ext_proc request on a loaded 2-core
machine, around 300 µs of infergate's own code (docs/benchmarks.md, "An HTTP/2 server of its own
for the picker"); a general HTTP/2 state machine in Python (grpclib over ``h2``) costs as much.
This module does only what a gRPC server needs for one peer that is Envoy, the kubelet or a gRPC
client: frames split in place, request headers decoded with ``hpack`` (a recurring block once:
``hpack_cache``), response headers and trailers written as pre-encoded literals (never indexed,
so no encoder state: ``grpc_headers``), flow control both ways (large body mutations wait for the
peer's window), the writes of one loop iteration sent in one ``write``, GOAWAY and a grace period
on stop. TLS is the caller's ``ssl.SSLContext`` (ALPN ``h2``).

A handler is ``async (request, context)``: for a client-streaming method ``request`` is None and
the handler calls ``await context.read()`` until it returns ``grpc.aio.EOF``, as with grpc.aio's
reader API; a unary or server-streaming handler gets its one request. Replies go out through
``await context.write(message)`` or, for a unary method, as the return value. ``await
context.abort(code, details)`` ends the call with that status. Cancellation (the peer reset the
stream, the connection went, the deadline passed) reaches the handler as ``CancelledError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import grpc
from hpack.exceptions import HPACKError

from .grpc_headers import (
    OK_TRAILERS,
    RESPONSE_HEADERS,
    go_code_name,
    grpc_timeout,
    hpack_integer,
    status_trailers,
)
from .grpc_methods import CallObserver, GrpcAbort, GrpcMethod
from .hpack_cache import HeaderBlockDecoder
from .inbox import Inbox

__all__ = ["CallObserver", "GrpcAbort", "GrpcMethod", "GrpcServer", "StreamContext"]

log = logging.getLogger("infergate.grpc")

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")
_DATA, _HEADERS, _RST, _SETTINGS, _PING, _GOAWAY, _WINDOW, _CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_NO_ERROR, _PROTOCOL_ERROR, _FLOW_CONTROL_ERROR, _FRAME_SIZE_ERROR = 0, 1, 3, 6
_REFUSED, _COMPRESSION_ERROR = 7, 9
_MAX_FRAME = 16384
"""SETTINGS_MAX_FRAME_SIZE, left at the protocol's default: larger frames from a peer are an error."""
_WINDOW_MAX = (1 << 31) - 1
_STREAM_WINDOW = 1 << 20
"""What a peer may send ahead on one stream. It is credited back at half once the handler has
read every complete message, so a handler that does not keep up holds at most about this much."""
_CONN_WINDOW = 1 << 24
"""What a peer may send ahead on the connection (credited back at half as frames arrive)."""
_MAX_STREAMS = 1000
_MAX_HEADER_LIST = 64 << 10


def _frame(ftype: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return bytes((n >> 16 & 0xFF, n >> 8 & 0xFF, n & 0xFF, ftype, flags)) + _U32.pack(stream) + payload


class StreamContext:
    """One call's side of its stream (a small part of ``grpc.aio.ServicerContext``)."""

    __slots__ = (
        "_conn",
        "_inbox",
        "_method",
        "_out",
        "_sent_headers",
        "_unacked",
        "_window",
        "_window_open",
        "sid",
    )

    def __init__(self, conn: _Connection, sid: int, method: GrpcMethod, window: int) -> None:
        self._conn = conn
        self.sid = sid
        self._method = method
        self._inbox: Inbox[Any] = Inbox()
        self._sent_headers = False
        self._out = bytearray()  # DATA payload waiting for the peer's flow-control window
        self._window = window
        self._window_open: asyncio.Event | None = None
        self._unacked = 0  # bytes received on the stream and not credited back yet

    async def read(self) -> Any:
        """The next request message, or ``grpc.aio.EOF`` once the peer half-closed."""
        item = await self._inbox.get()
        if self._inbox.empty():
            self._conn.credit(self)
        return item

    async def write(self, message: Any) -> None:
        """Send one reply; waits while the peer's window cannot take it."""
        data = self._method.serialize(message)
        limit = self._conn._server.max_send_bytes
        if limit and len(data) > limit:
            raise GrpcAbort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"trying to send message larger than max ({len(data)} vs. {limit})",
            )
        self._out += b"\x00" + _U32.pack(len(data)) + data
        self._conn.pump(self)
        while self._out:
            self._window_open = asyncio.Event()
            await self._window_open.wait()

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise GrpcAbort(code, details)

    def _headers_once(self) -> bytes:
        if self._sent_headers:
            return b""
        self._sent_headers = True
        return _frame(_HEADERS, _END_HEADERS, self.sid, self._conn.header_block(RESPONSE_HEADERS))


@dataclass(slots=True)
class _Stream:
    ctx: StreamContext
    task: asyncio.Task[None] | None = None
    buffer: bytearray | None = None
    closed_remote: bool = False
    ended: grpc.StatusCode | None = None  # set when the connection ended the call (bad bytes)


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection: frames in, calls out; see the module docstring."""

    def __init__(self, server: GrpcServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._preface = False
        self._decoder = HeaderBlockDecoder(max_header_list_size=_MAX_HEADER_LIST)
        self.streams: dict[int, _Stream] = {}
        self._last_stream = 0
        self._continuing: tuple[int, int, bytearray] | None = None
        self._send_window = 65535  # the peer's connection window for our DATA
        self._initial_window = 65535  # the peer's SETTINGS_INITIAL_WINDOW_SIZE
        self._max_frame = 16384
        self._received = 0  # connection-level bytes since our last WINDOW_UPDATE
        self._table_update = b""  # a dynamic table size update owed at the next header block
        self._failed = False
        self._out: list[bytes] = []
        self._blocked: list[StreamContext] = []
        self.going_away = False
        self.idle = asyncio.Event()
        self.idle.set()

    # ------------------------------------------------------------------ transport
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        self._server.connections.add(self)
        # MAX_CONCURRENT_STREAMS (3), INITIAL_WINDOW_SIZE (4), MAX_HEADER_LIST_SIZE (6)
        ours = ((3, _MAX_STREAMS), (4, _STREAM_WINDOW), (6, _MAX_HEADER_LIST))
        settings = b"".join(_SETTING.pack(k, v) for k, v in ours)
        self.send(_frame(_SETTINGS, 0, 0, settings) + _frame(_WINDOW, 0, 0, _U32.pack(_CONN_WINDOW - 65535)))

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self.transport = None
        for stream in list(self.streams.values()):
            self._cancel(stream)
        self.streams.clear()
        self.idle.set()

    def header_block(self, block: bytes) -> bytes:
        """``block`` preceded by the table size update owed since the peer's SETTINGS, if any."""
        if not self._table_update:
            return block
        update, self._table_update = self._table_update, b""
        return update + block

    def send(self, data: bytes) -> None:
        """Queue bytes; everything queued in one loop iteration leaves in one write."""
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(data)

    def _flush(self) -> None:
        data = b"".join(self._out)
        self._out.clear()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _fail(self, code: int, why: str) -> None:
        self._failed = True  # no frame after this one is read
        log.info("closing an HTTP/2 connection: %s", why)
        self.send(_frame(_GOAWAY, 0, 0, _U32.pack(self._last_stream) + _U32.pack(code)))
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def go_away(self) -> None:
        """Refuse new streams from now on; the open ones finish (the server's grace)."""
        if not self.going_away and self.transport is not None:
            self.going_away = True
            self.send(_frame(_GOAWAY, 0, 0, _U32.pack(self._last_stream) + _U32.pack(_NO_ERROR)))
            if not self.streams:
                self._loop.call_soon(self._close_if_idle)

    def _close_if_idle(self) -> None:
        if not self.streams and self.transport is not None:
            self._flush()
            self.transport.close()

    # ------------------------------------------------------------------ frames in
    def data_received(self, data: bytes) -> None:
        if self._failed:
            return
        buf = self._buf + data if self._buf else data
        if not self._preface:
            if len(buf) < len(_PREFACE):
                if not _PREFACE.startswith(buf):
                    self._fail(_PROTOCOL_ERROR, "not an HTTP/2 client")
                self._buf = buf
                return
            if not buf.startswith(_PREFACE):
                self._fail(_PROTOCOL_ERROR, "not an HTTP/2 client")
                return
            buf = buf[len(_PREFACE) :]
            self._preface = True
        pos, size = 0, len(buf)
        while size - pos >= 9 and not self._failed:
            length = buf[pos] << 16 | buf[pos + 1] << 8 | buf[pos + 2]
            if length > _MAX_FRAME:
                self._fail(_FRAME_SIZE_ERROR, f"a frame of {length} bytes")
                return
            if size - pos < 9 + length:
                break
            ftype, flags = buf[pos + 3], buf[pos + 4]
            sid = _U32.unpack_from(buf, pos + 5)[0] & _WINDOW_MAX
            payload = buf[pos + 9 : pos + 9 + length]
            pos += 9 + length
            self._on_frame(ftype, flags, sid, payload)
        self._buf = buf[pos:]

    def _on_frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if self._continuing is not None and ftype != _CONTINUATION:
            self._fail(_PROTOCOL_ERROR, "a header block was interrupted")
        elif ftype == _DATA:
            self._on_data(flags, sid, payload)
        elif ftype == _HEADERS:
            if flags & _PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if flags & _PRIORITY:
                payload = payload[5:]
            if flags & _END_HEADERS:
                self._on_headers(sid, flags, payload)
            else:
                self._continuing = (sid, flags, bytearray(payload))
        elif ftype == _CONTINUATION:
            if self._continuing is None or self._continuing[0] != sid:
                self._fail(_PROTOCOL_ERROR, "unexpected CONTINUATION")
                return
            block = self._continuing[2]
            block += payload
            if len(block) > _MAX_HEADER_LIST:
                self._fail(_PROTOCOL_ERROR, "header block too large")
            elif flags & _END_HEADERS:
                first_flags = self._continuing[1]
                self._continuing = None
                self._on_headers(sid, first_flags, bytes(block))
        elif ftype == _SETTINGS:
            if not flags & _ACK:
                self._on_settings(payload)
        elif ftype == _WINDOW:
            self._on_window(sid, _U32.unpack(payload)[0] & _WINDOW_MAX if len(payload) == 4 else 0)
        elif ftype == _PING:
            if not flags & _ACK:
                self.send(_frame(_PING, _ACK, 0, payload))
        elif ftype == _RST:
            stream = self.streams.pop(sid, None)
            if stream is not None:
                self._cancel(stream)
                self._idle_check()
        elif ftype == _GOAWAY:
            self.go_away()
        # PRIORITY, PUSH_PROMISE (never sent to a server) and unknown types are ignored (RFC 9113 §4.1)

    def _on_settings(self, payload: bytes) -> None:
        for off in range(0, len(payload) - len(payload) % 6, 6):
            key, value = _SETTING.unpack_from(payload, off)
            if key == 4:  # INITIAL_WINDOW_SIZE: applies to every open stream's window (§6.9.2)
                if value > _WINDOW_MAX:
                    self._fail(_FLOW_CONTROL_ERROR, "initial window too large")
                    return
                delta, self._initial_window = value - self._initial_window, value
                for stream in self.streams.values():
                    stream.ctx._window += delta
            elif key == 5:
                self._max_frame = value
            elif key == 1:  # HEADER_TABLE_SIZE: say that our (always empty) table is 0 (RFC 7541 §4.2)
                self._table_update = hpack_integer(0, 5, 0x20)
        self.send(_frame(_SETTINGS, _ACK, 0))
        self._pump_blocked()

    def _on_window(self, sid: int, increment: int) -> None:
        if sid == 0:
            self._send_window += increment
            self._pump_blocked()
            return
        stream = self.streams.get(sid)
        if stream is not None:
            stream.ctx._window += increment
            self.pump(stream.ctx)

    def _on_data(self, flags: int, sid: int, payload: bytes) -> None:
        self._received += len(payload)
        if self._received >= _CONN_WINDOW // 2:
            self.send(_frame(_WINDOW, 0, 0, _U32.pack(self._received)))
            self._received = 0
        stream = self.streams.get(sid)
        if stream is None or stream.closed_remote:
            return  # reset or finished by us: the connection window was still counted
        stream.ctx._unacked += len(payload)  # padding included, as the peer counts it
        if flags & _PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        buffer = stream.buffer
        if buffer is None:
            buffer = stream.buffer = bytearray()
        buffer += payload
        method = stream.ctx._method
        while len(buffer) >= 5:
            length = _U32.unpack_from(buffer, 1)[0]
            if buffer[0] != 0:
                self._end_call(stream, grpc.StatusCode.UNIMPLEMENTED, "compressed messages are not supported")
                return
            if length > self._server.max_message_bytes:
                self._end_call(
                    stream,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"message of {length} bytes exceeds {self._server.max_message_bytes}",
                )
                return
            if len(buffer) < 5 + length:
                break
            try:
                message = method.deserialize(bytes(buffer[5 : 5 + length]))
            except Exception:
                self._end_call(stream, grpc.StatusCode.INTERNAL, "malformed request message")
                return
            del buffer[: 5 + length]
            stream.ctx._inbox.put(message)
        if flags & _END_STREAM:
            stream.closed_remote = True
            stream.ctx._inbox.put(grpc.aio.EOF)
        elif stream.ctx._inbox.empty():
            self.credit(stream.ctx)

    def credit(self, ctx: StreamContext) -> None:
        """Give the peer back the stream's window once half is used and no message waits unread."""
        if ctx._unacked >= _STREAM_WINDOW // 2:
            stream = self.streams.get(ctx.sid)
            if stream is not None and not stream.closed_remote:
                self.send(_frame(_WINDOW, 0, ctx.sid, _U32.pack(ctx._unacked)))
                ctx._unacked = 0

    def _on_headers(self, sid: int, flags: int, block: bytes) -> None:
        try:
            headers = self._decoder.decode(block)
        except HPACKError as exc:
            self._fail(_COMPRESSION_ERROR, f"bad header block: {exc}")
            return
        if sid in self.streams:  # the client's trailers: nothing a gRPC server reads
            if flags & _END_STREAM:
                stream = self.streams[sid]
                stream.closed_remote = True
                stream.ctx._inbox.put(grpc.aio.EOF)
            return
        if sid % 2 == 0:
            self._fail(_PROTOCOL_ERROR, f"invalid stream id {sid}")
            return
        if sid <= self._last_stream:
            return  # trailers of a stream this side already ended (a stream error at most)
        self._last_stream = sid
        if self.going_away or len(self.streams) >= _MAX_STREAMS:
            self.send(_frame(_RST, 0, sid, _U32.pack(_REFUSED)))
            return
        method = self._server.methods.get(headers.get(":path", ""))
        content_type = headers.get("content-type", "")
        if headers.get(":method") != "POST" or not content_type.startswith("application/grpc"):
            self.send(_frame(_RST, 0, sid, _U32.pack(_PROTOCOL_ERROR)))
            return
        if method is None:
            trailers = RESPONSE_HEADERS + status_trailers(grpc.StatusCode.UNIMPLEMENTED, "unknown method")
            self.send(_frame(_HEADERS, _END_HEADERS | _END_STREAM, sid, self.header_block(trailers)))
            return
        ctx = StreamContext(self, sid, method, self._initial_window)
        stream = self.streams[sid] = _Stream(ctx, closed_remote=bool(flags & _END_STREAM))
        if stream.closed_remote:
            ctx._inbox.put(grpc.aio.EOF)
        self.idle.clear()
        deadline = grpc_timeout(headers.get("grpc-timeout", ""))
        observed = method.observer is not None
        run = self._observed(stream, deadline) if observed else self._run(stream, deadline)
        stream.task = self._loop.create_task(run)

    # ------------------------------------------------------------------ calls
    async def _observed(self, stream: _Stream, deadline: float | None) -> None:
        """:meth:`_run` with the method's observer told of the call's start and end."""
        observer = stream.ctx._method.observer
        assert observer is not None
        observer.started()
        began = time.monotonic()
        code = grpc.StatusCode.CANCELLED
        try:
            code = await self._run(stream, deadline)
        finally:
            observer.finished(go_code_name(stream.ended or code), time.monotonic() - began)

    async def _run(self, stream: _Stream, deadline: float | None) -> grpc.StatusCode:
        """Run the handler and end the call; the status it ended with (CANCELLED when reset)."""
        ctx = stream.ctx
        method = ctx._method
        code, details = grpc.StatusCode.OK, ""
        try:
            async with asyncio.timeout(deadline):
                if method.client_streaming:
                    await method.handler(None, ctx)
                else:
                    request = await ctx.read()
                    if request is grpc.aio.EOF:
                        raise GrpcAbort(grpc.StatusCode.INTERNAL, "no request message")
                    reply = await method.handler(request, ctx)
                    if reply is not None:
                        await ctx.write(reply)
        except GrpcAbort as exc:
            code, details = exc.code, exc.details
        except TimeoutError:
            code, details = grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
        except asyncio.CancelledError:
            return grpc.StatusCode.CANCELLED  # reset by the peer or the connection went: nothing to send
        except Exception:
            log.exception("gRPC handler failed on stream %d", ctx.sid)
            code, details = grpc.StatusCode.UNKNOWN, "internal error in the handler"
        if self.streams.get(ctx.sid) is stream:  # else reset meanwhile, or ended by _end_call
            self._finish(stream, code, details, reset=not stream.closed_remote)
        return code

    def _finish(self, stream: _Stream, code: grpc.StatusCode, details: str, *, reset: bool = False) -> None:
        """Trailers end the call; ``reset`` also asks the peer to stop sending the request."""
        ctx = stream.ctx
        ctx._out.clear()  # a reply cut short while it waited for the window is not sent
        block = OK_TRAILERS if code is grpc.StatusCode.OK else status_trailers(code, details)
        if not ctx._sent_headers:
            ctx._sent_headers = True
            block = RESPONSE_HEADERS + block  # trailers-only response
        self.send(_frame(_HEADERS, _END_HEADERS | _END_STREAM, ctx.sid, self.header_block(block)))
        if reset:
            self.send(_frame(_RST, 0, ctx.sid, _U32.pack(_NO_ERROR)))  # the rest of the request is not needed
        self.streams.pop(ctx.sid, None)
        self._idle_check()

    def _end_call(self, stream: _Stream, code: grpc.StatusCode, details: str) -> None:
        """End a call from the connection's side (bad request bytes): status out, handler cancelled."""
        still_sending = not stream.closed_remote
        stream.ended = code
        self._cancel(stream)
        self._finish(stream, code, details, reset=still_sending)

    def _cancel(self, stream: _Stream) -> None:
        stream.closed_remote = True
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        waiting = stream.ctx._window_open
        if waiting is not None:
            waiting.set()

    def _idle_check(self) -> None:
        if not self.streams:
            self.idle.set()
            if self.going_away:
                self._loop.call_soon(self._close_if_idle)

    # ------------------------------------------------------------------ flow control out
    def pump(self, ctx: StreamContext) -> None:
        """Send as much of ``ctx``'s queued DATA as both windows and the frame size allow."""
        out = ctx._out
        if not out:
            return
        head = ctx._headers_once()
        if head:
            self.send(head)
        while out:
            room = min(len(out), ctx._window, self._send_window, self._max_frame)
            if room <= 0:
                if ctx not in self._blocked:
                    self._blocked.append(ctx)
                return
            chunk = bytes(out[:room])
            del out[:room]
            ctx._window -= room
            self._send_window -= room
            self.send(_frame(_DATA, 0, ctx.sid, chunk))
        if ctx._window_open is not None:
            ctx._window_open.set()

    def _pump_blocked(self) -> None:
        blocked, self._blocked = self._blocked, []
        for ctx in blocked:
            if ctx.sid in self.streams:
                self.pump(ctx)


class GrpcServer:
    """Serves ``methods`` (``/package.Service/Method`` → :class:`GrpcMethod`) on one port."""

    def __init__(
        self,
        methods: Mapping[str, GrpcMethod],
        *,
        max_message_bytes: int = 16 << 20,
        max_send_bytes: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.methods = dict(methods)
        self.max_message_bytes = max_message_bytes
        self.max_send_bytes = max_send_bytes
        """Replies larger than this end their call with RESOURCE_EXHAUSTED (0: no limit)."""
        self._ssl = ssl_context
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._stopped = asyncio.Event()

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Bind and serve; returns the bound port (``port=0`` picks a free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.protocol, host, port, ssl=self._ssl, reuse_port=reuse_port or None
        )
        return int(self._server.sockets[0].getsockname()[1])

    def protocol(self) -> asyncio.Protocol:
        """The protocol for one connection (``start`` makes one per accepted socket); a benchmark
        feeds it bytes through a transport of its own."""
        return _Connection(self)

    async def stop(self, grace: float | None = 5.0) -> None:
        """Stop listening, send GOAWAY, let open calls finish for ``grace`` seconds, then cut them."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        conns = list(self.connections)
        for conn in conns:
            conn.go_away()
        if grace and conns:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await asyncio.gather(*(c.idle.wait() for c in conns))
        tasks = [s.task for c in conns for s in c.streams.values() if s.task is not None]
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        self._stopped.set()

    async def wait_for_termination(self) -> None:
        """Return once :meth:`stop` has finished."""
        await self._stopped.wait()
