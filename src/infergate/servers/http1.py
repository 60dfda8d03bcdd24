"""A small HTTP/1.1 server for the inference listener: an asyncio protocol over ``httptools``.

Why not aiohttp's server, which the admin listener keeps: the inference listener answers one kind
of client, fast, thousands of times a second, and aiohttp's request machinery (request and
response objects, payload writers, a task loop per connection) cost about 100 µs of CPU per
request on the 2-core benchmark VM, as much as everything sglang-router does per request. This
server parses with ``httptools`` (llhttp, the parser Node.js uses) and writes each response head in
one ``write``; ``bench/bench_dataplane.py``'s ``floor`` path measures the two side by side.

What it does: keep-alive and ``Connection: close`` (HTTP/1.0 too), pipelined requests answered in
order, request bodies by ``Content-Length`` or chunked, ``Expect: 100-continue``, responses whole
(``Content-Length``) or streamed (chunked, or close-delimited for HTTP/1.0 clients) with
back-pressure, HEAD, limits on the request line and each header field (400), on the body (the
handler reads it with a limit: 413) and on the time a request head may take (``idle_timeout``,
which also closes connections idle between requests). The handler runs in its own task from the
moment the head is complete, and is cancelled when the client disconnects. :meth:`Http1Server.shutdown`
stops taking new requests, lets the running ones finish within a grace period, then cuts the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import cast
from urllib.parse import unquote, urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from infergate.errors import BadRequestError, InternalError, RequestError
from infergate.net.deadline import DeadlineTimer
from infergate.servers.http1_response import REASONS, DateHeader, Response

__all__ = ["BodyTooLarge", "Http1Server", "HttpRequest", "MalformedBody"]

log = logging.getLogger("infergate.http")

_HIGH_WATER = 64 << 10  # transport write buffer above which a stream waits for the client
_MAX_PIPELINE = 16  # requests parsed ahead of the one being answered before reading pauses
_MAX_HEADERS = 128
# After an answer sent before the request body was read (401, 413), the rest of the body is read
# and dropped for at most this long before the connection closes: closing a socket with unread
# data resets it, and a reset can destroy the answer before the client has read it.
_DISCARD_SECONDS = 10.0


class BodyTooLarge(Exception):
    """The request body exceeds the limit passed to :meth:`HttpRequest.read_body`."""


class MalformedBody(Exception):
    """The request body's framing is broken (a bad chunk size, say); the connection closes."""


Handler = Callable[["HttpRequest"], Awaitable["Response | None"]]


class HttpRequest:
    """One request: its head at once, its body by :meth:`read_body`, its answer by
    :meth:`respond` (whole) or :meth:`start_stream` / :meth:`write` / :meth:`end_stream`."""

    __slots__ = (
        "_chunks",
        "_complete",
        "_conn",
        "_continue_sent",
        "_expect_continue",
        "_finished",
        "_malformed",
        "_size",
        "_started",
        "_stream_framing",
        "_too_large",
        "_waiter",
        "headers",
        "keep_alive",
        "method",
        "path",
        "raw_path",
        "remote",
        "version",
    )

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.method = ""
        self.raw_path = ""
        """The request target as sent (path and query), what goes upstream."""
        self.path = ""
        """The percent-decoded path, what routing reads."""
        self.headers: CIMultiDictProxy[str] = _EMPTY
        self.version = "1.1"
        self.keep_alive = True
        self.remote = conn.remote
        self._chunks: list[bytes] = []
        self._size = 0
        self._complete = False
        self._too_large = False
        self._waiter: asyncio.Future[None] | None = None
        self._expect_continue = False
        self._continue_sent = False
        self._started = False  # a status line went out
        self._finished = False  # the whole response went out
        self._malformed: MalformedBody | None = None
        self._stream_framing = ""  # "chunked" or "close" while streaming

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        if value is None or not value.isdigit():
            return None
        return int(value)

    # ------------------------------------------------------------------ body
    async def read_body(self, limit: int, within: float) -> bytes:
        """The whole body; :class:`BodyTooLarge` over ``limit`` bytes, ``TimeoutError`` if it
        does not arrive ``within`` seconds, ``ConnectionResetError`` if the client left."""
        if self._malformed is not None:
            raise self._malformed
        if not self._complete and self._conn.transport is None:
            raise ConnectionResetError("the client disconnected")
        if self._expect_continue and not self._continue_sent and not self._complete:
            self._continue_sent = True
            self._conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not self._complete and not self._too_large:
            loop = self._conn.loop
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(within, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        if self._too_large:
            raise BodyTooLarge(f"request body exceeds {limit} bytes")
        if self._size > limit:
            raise BodyTooLarge(f"request body exceeds {limit} bytes")
        chunks = self._chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _feed(self, data: bytes) -> None:
        if self._too_large or self._finished:  # over the limit, or answered without it
            return
        self._size += len(data)
        if self._size > self._conn.server.max_body_bytes:
            self._too_large = True
            self._chunks = []
            self._wake()
            return
        self._chunks.append(data)

    def _parsing_failed(self, exc: MalformedBody) -> None:
        self._malformed = exc
        self._wake(exc)

    def _wake(self, exc: BaseException | None = None) -> None:
        w = self._waiter
        if w is not None and not w.done():
            if exc is None:
                w.set_result(None)
            else:
                w.set_exception(exc)

    # ------------------------------------------------------------------ answers
    def _head(self, status: int, reason: str, headers: Iterable[tuple[str, str]], framing: str) -> bytes:
        close = not self.keep_alive or self._conn.closing or not self._complete
        if close:
            self.keep_alive = False
        lines = [f"HTTP/1.1 {status} {reason or REASONS.get(status, 'Unknown')}\r\n"]
        dated = False
        for k, v in headers:
            if "\n" in v or "\r" in v:
                raise ValueError(f"newline in the value of response header {k!r}")
            if len(k) == 4 and k.lower() == "date":  # a relayed answer keeps its server's
                dated = True
            lines.append(f"{k}: {v}\r\n")
        if not dated:
            lines.append(f"Date: {DateHeader.now()}\r\n")
        lines.append(framing)
        if close:
            lines.append("Connection: close\r\n")
        elif self.version == "1.0":
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        self._started = True
        return "".join(lines).encode("latin-1")

    def respond(self, response: Response) -> None:
        """Send ``response`` whole and finish the exchange."""
        if self._started:
            raise RuntimeError("a response was already started")
        body, status = response.body, response.status
        if status < 200 or status in (204, 304):  # never a body, nor a length
            head, body = self._head(status, response.reason, response.headers, ""), b""
        else:
            head = self._head(status, response.reason, response.headers, f"Content-Length: {len(body)}\r\n")
        if self.method == "HEAD" or not body:
            self._conn.write(head)
        else:
            self._conn.write(head + body)
        self._finished = True

    def start_stream(self, status: int, reason: str, headers: Iterable[tuple[str, str]]) -> None:
        """Send the head of a streamed response: chunked, or ended by closing for HTTP/1.0."""
        if self._started:
            raise RuntimeError("a response was already started")
        if self.version == "1.0":
            self.keep_alive = False
            self._stream_framing = "close"
            self._conn.write(self._head(status, reason, headers, ""))
        else:
            self._stream_framing = "chunked"
            self._conn.write(self._head(status, reason, headers, "Transfer-Encoding: chunked\r\n"))

    async def write(self, data: bytes) -> None:
        """One piece of the streamed body; waits while the client is slower than the upstream.
        ``ConnectionResetError`` once the client is gone."""
        if not data or self.method == "HEAD":
            return
        conn = self._conn
        if self._stream_framing == "chunked":
            conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            conn.write(data)
        if conn.paused:
            await conn.drain()

    def end_stream(self) -> None:
        """The streamed body is complete."""
        if self._stream_framing == "chunked" and self.method != "HEAD":
            self._conn.write(b"0\r\n\r\n")
        self._finished = True

    def abort(self) -> None:
        """Cut the connection: a client must not take a truncated body for a complete one."""
        self.keep_alive = False
        self._conn.abort()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


_EMPTY: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, runs the handler for each in turn."""

    def __init__(self, server: Http1Server) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.remote = ""
        self.parser = httptools.HttpRequestParser(self)
        self.paused = False  # the transport's write buffer is over the high-water mark
        self._drain: asyncio.Future[None] | None = None
        self._reading_paused = False
        # the request being parsed, its raw target and header fields so far
        self._parsing: HttpRequest | None = None
        self._url = b""
        self._fields: list[tuple[str, str]] = []
        # the request being answered (its handler task) and those parsed after it
        self._active: HttpRequest | None = None
        self._task: asyncio.Task[None] | None = None
        self._pipeline: deque[HttpRequest] = deque()
        self._idle = DeadlineTimer(self.loop, self._idle_expired)  # see ``_arm_idle``
        self.closing = False

    # ------------------------------------------------------------------ transport callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.remote = str(peer[0])
        self.server.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        self.closing = True
        self._idle.cancel()
        gone = ConnectionResetError("the client disconnected")
        for req in (self._active, *self._pipeline, self._parsing):
            if req is not None:
                req._wake(gone)
        self._pipeline.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        d = self._drain
        if d is not None and not d.done():
            d.set_exception(gone)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        d = self._drain
        if d is not None and not d.done():
            d.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # no protocol switch here: the request is answered as plain HTTP, then the connection closes
            if self._parsing is not None:
                self._parsing.keep_alive = False
            self._stop_reading()
        except (httptools.HttpParserError, _HeadTooLarge) as exc:
            self._bad_request(exc)

    def eof_received(self) -> bool:
        # A client that stops sending has gone (as aiohttp's server treats it): the transport
        # closes and connection_lost cancels the request being answered, which withdraws it
        # from its model server instead of generating tokens nobody reads.
        return False

    # ------------------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        self._parsing = HttpRequest(self)
        self._url = b""
        self._fields = []

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.server.max_field_size:
            raise _HeadTooLarge("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        limit = self.server.max_field_size
        if len(name) + len(value) > limit:
            raise _HeadTooLarge("header field too long")
        if len(self._fields) >= _MAX_HEADERS:
            raise _HeadTooLarge("too many header fields")
        self._fields.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        req = self._parsing
        assert req is not None
        p = self.parser
        req.method = p.get_method().decode("ascii")
        req.version = p.get_http_version()
        req.keep_alive = p.should_keep_alive()
        target = self._url.decode("latin-1")
        if not target.startswith("/"):  # absolute form (or "*")
            parts = urlsplit(target)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        req.raw_path = target
        path = target.partition("?")[0]
        req.path = unquote(path) if "%" in path else path
        req.headers = CIMultiDictProxy(CIMultiDict(self._fields))
        if req.version == "1.1" and "Host" not in req.headers:
            raise _HeadTooLarge("an HTTP/1.1 request without Host")
        req._expect_continue = req.headers.get("Expect", "").lower() == "100-continue"
        self._idle.clear()
        if self._active is None:
            self._dispatch(req)
        else:
            self._pipeline.append(req)
            if len(self._pipeline) >= _MAX_PIPELINE:
                self._stop_reading()

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing._feed(body)

    def on_message_complete(self) -> None:
        req = self._parsing
        if req is not None:
            req._complete = True
            req._wake()
            self._parsing = None
            if req._finished and self._active is None and self.transport is not None:
                self.transport.close()  # the body of a request answered early is now drained

    # ------------------------------------------------------------------ requests
    def _dispatch(self, req: HttpRequest) -> None:
        if self.server.closing:
            self.closing = True
        self._active = req
        self.server._busy += 1
        self._task = self.loop.create_task(self._run(req))

    async def _run(self, req: HttpRequest) -> None:
        try:
            try:
                response = await self.server.handler(req)
            except asyncio.CancelledError:
                self.abort()
                raise
            except Exception:
                log.exception("unhandled error answering %s %s", req.method, req.path)
                response = None if req._started else _error(InternalError("internal error in the gateway"))
            with contextlib.suppress(ConnectionResetError):  # the client left meanwhile
                self._answer(req, response)
        finally:
            self.server._request_done()
        self._done(req)

    @staticmethod
    def _answer(req: HttpRequest, response: Response | None) -> None:
        if response is not None:
            if req._started:
                log.error("handler returned a response after starting another for %s", req.path)
                req.abort()
            else:
                req.respond(response)
        elif not req._finished:
            if req._started:
                req.abort()  # a stream the handler did not end: the client must not take it as whole
            else:
                req.respond(_error(InternalError("internal error in the gateway")))

    def _done(self, req: HttpRequest) -> None:
        self._active = None
        self._task = None
        if self.transport is None:
            return
        if not req._complete and not self.closing:
            # answered before its body was read: drop the rest of it, then close
            self._resume_reading()
            self._arm_idle(_DISCARD_SECONDS)
            return
        if not req.keep_alive or self.closing:
            self.transport.close()
            return
        if self._pipeline:
            self._dispatch(self._pipeline.popleft())
            if len(self._pipeline) < _MAX_PIPELINE // 2:
                self._resume_reading()
        else:
            self._arm_idle()

    def _bad_request(self, exc: Exception) -> None:
        log.debug("malformed HTTP from %s: %s", self.remote or "-", exc)
        self._stop_reading()
        if self._active is not None or self._pipeline:
            self.closing = True  # answer what came before, then close
            broken = self._parsing
            if broken is not None and not broken._complete:  # its handler may be reading it
                broken._parsing_failed(MalformedBody(f"malformed request body: {exc}"))
            return
        if self.transport is not None:
            body = json.dumps(BadRequestError(f"malformed HTTP request: {exc}").to_openai()).encode()
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body)
            )
            self.transport.close()

    # ------------------------------------------------------------------ plumbing
    def _resume_reading(self) -> None:
        if self.transport is not None and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    def _stop_reading(self) -> None:
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def _arm_idle(self, seconds: float | None = None) -> None:
        """Close the connection ``seconds`` (the server's idle timeout) from now unless a request
        head arrives first (one timer per connection, re-armed only when it fires: see
        :class:`~infergate.net.deadline.DeadlineTimer`)."""
        self._idle.set(self.loop.time() + (self.server.idle_timeout if seconds is None else seconds))

    def _idle_expired(self) -> None:
        if self._active is None and self.transport is not None:
            self.transport.close()

    def write(self, data: bytes) -> None:
        t = self.transport
        if t is None or t.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        t.write(data)

    async def drain(self) -> None:
        if self.transport is None:
            raise ConnectionResetError("Cannot write to closing transport")
        self._drain = self.loop.create_future()
        try:
            await self._drain
        finally:
            self._drain = None

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def close_if_idle(self) -> None:
        """Shutdown: a connection between requests closes now, a busy one after its answer."""
        self.closing = True
        if self._active is None and self.transport is not None:
            self.transport.close()


class _HeadTooLarge(Exception):
    """A request head refused before its handler runs: a line or field over the limit, too many
    fields, no Host (answered 400)."""


def _error(exc: RequestError) -> Response:
    return Response(exc.status, json.dumps(exc.to_openai()).encode(), content_type="application/json")


class Http1Server:
    """The protocol factory of one listener; ``connections`` are the open ones (for limits)."""

    def __init__(
        self,
        handler: Handler,
        *,
        idle_timeout: float = 75.0,
        max_field_size: int = 8190,
        max_body_bytes: int = 8 << 20,
    ) -> None:
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.max_field_size = max_field_size
        self.max_body_bytes = max_body_bytes
        self.connections: set[_Connection] = set()
        self.closing = False
        self._busy = 0  # requests being answered
        self._quiet: asyncio.Event | None = None  # set once none are, while shutting down

    def _request_done(self) -> None:
        self._busy -= 1
        if self._busy == 0 and self._quiet is not None:
            self._quiet.set()

    def __call__(self) -> asyncio.Protocol:
        return _Connection(self)

    async def shutdown(self, grace: float) -> None:
        """Close idle connections, let requests being answered finish for up to ``grace``
        seconds, then cut what is left."""
        self.closing = True
        self._quiet = asyncio.Event()
        if self._busy == 0:
            self._quiet.set()
        for conn in list(self.connections):
            conn.close_if_idle()
        try:
            await asyncio.wait_for(self._quiet.wait(), grace)
        except TimeoutError:
            log.warning("%d request(s) still running after the %gs shutdown grace: cut", self._busy, grace)
        running = [c._task for c in self.connections if c._task is not None and not c._task.done()]
        for task in running:
            task.cancel()
        for conn in list(self.connections):
            conn.abort()
        await asyncio.gather(*running, return_exceptions=True)
