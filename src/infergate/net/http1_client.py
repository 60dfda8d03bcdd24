"""A small HTTP/1.1 client for talking to model servers: pooled keep-alive connections, raw bytes.

The built-in proxy forwards requests with it and the metrics scraper polls ``/metrics``,
``/health`` and ``/v1/models`` with it. Why not aiohttp's client: per request it costs about three
times the CPU of this one (URL and cookie handling, tracing hooks, timers), and neither user needs
any of that. What it does support is exactly what model servers answer: ``Content-Length``
bodies, ``chunked`` bodies (uvicorn's SSE), bodies delimited by connection close, and no body for
1xx/204/304. Reading is incremental with back-pressure (the socket is paused while more than
``_HIGH_WATER`` bytes wait to be consumed).

A pooled connection that turns out to be closed by the server before any response byte arrived is
retried once on a fresh connection, as every keep-alive client must.

Two waits are bounded separately: the response head (``read_timeout``, the time to first byte) and
each gap between body bytes once the head arrived (``idle_timeout``), so a server that stops in the
middle of a stream is noticed long before a generous first-byte limit. A caller may pass an
:class:`Exchange` handle to withdraw a request from another task (the proxy does when the endpoint
leaves rotation): at once, or once the body has gone quiet for a short while.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import cast

from multidict import CIMultiDict

from infergate.net.deadline import DeadlineTimer
from infergate.net.host_gate import HostGate

__all__ = [
    "Exchange",
    "UpstreamAborted",
    "UpstreamConnectionError",
    "UpstreamPool",
    "UpstreamResponse",
    "UpstreamTimeout",
]

_HIGH_WATER = 1 << 20
_MAX_CHUNK_LINE = 64
"""Bytes searched for a buffered chunk's size line (hex digits and short extensions) before the
relay stops joining chunks and leaves the rest to the usual parser."""
_MAX_HEAD = 64 << 10


def _chunk_size(line: bytes | bytearray) -> int | None:
    """A chunk's size from its size line (extensions after ``;`` ignored); None if malformed."""
    try:
        return int(line.split(b";", 1)[0], 16)
    except ValueError:
        return None


class UpstreamConnectionError(ConnectionError):
    """Connect failure, reset, or a malformed/truncated response."""


class UpstreamTimeout(TimeoutError):
    """Connecting or waiting for bytes took longer than allowed."""


class UpstreamAborted(UpstreamConnectionError):
    """The caller withdrew the exchange through its :class:`Exchange` handle; never retried here."""


class Exchange:
    """A handle on one upstream request that another task may withdraw.

    Created by the caller and passed to :meth:`UpstreamPool.request`; it follows the connection
    the request uses until the response is released or closed. ``relaying`` is the caller's own
    note (the proxy sets it once bytes went to its client); this module does not read it.
    """

    __slots__ = ("_conn", "aborted", "evicted", "key", "relaying")

    def __init__(self, key: str) -> None:
        self.key = key
        self.relaying = False
        self.evicted = False
        """The caller's note that it withdrew the exchange because its endpoint went down."""
        self.aborted: UpstreamAborted | None = None
        self._conn: _Conn | None = None

    @property
    def max_gap(self) -> float:
        """The longest wait between two body reads of the response so far (0 before two arrived):
        the stream's own inter-token latency, for a silence window that fits slow streams."""
        return self._conn.max_gap if self._conn is not None else 0.0

    def abort(self, reason: str) -> None:
        """Withdraw now: the pending or next read raises :class:`UpstreamAborted`."""
        if self.aborted is None:
            self.aborted = UpstreamAborted(reason)
        if self._conn is not None:
            self._conn.abort(self.aborted)

    def limit_idle(self, seconds: float, reason: str) -> None:
        """Withdraw once no byte arrived for ``seconds`` (the current wait included).

        A server that is still producing keeps the exchange; one that went silent loses it soon.
        Before a connection exists this is the same as :meth:`abort`.
        """
        if self._conn is None or seconds <= 0:
            self.abort(reason)
        else:
            self._conn.limit_idle(seconds, UpstreamAborted(f"{reason}; no data for {seconds:g}s"))

    def _attach(self, conn: _Conn) -> None:
        if self.aborted is not None:
            conn.close()
            raise self.aborted
        self._conn = conn

    def _detach(self) -> None:
        self._conn = None


class _Conn(asyncio.Protocol):
    """One keep-alive connection; bytes are parsed by :class:`UpstreamResponse`."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.received_any = False
        self.aborted: UpstreamAborted | None = None
        self._loop = asyncio.get_running_loop()  # built by create_connection's factory
        self._waiter: asyncio.Future[None] | None = None
        self._timer = DeadlineTimer(self._loop, self._expire)  # the pending wait's limit
        self._limit: float | None = None  # the pending wait's limit, for the error message
        self.limited: tuple[float, UpstreamAborted] | None = None
        self._paused = False
        self.measuring = False  # set once the response head was parsed: body gaps count from then
        self.last_data = -1.0
        self.max_gap = 0.0

    # -- protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check here
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.received_any = True
        if self.measuring:
            now = self._loop.time()
            if self.last_data >= 0.0 and now - self.last_data > self.max_gap:
                self.max_gap = now - self.last_data
            self.last_data = now
        if len(self.buf) > _HIGH_WATER and self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None:
            self.error = exc
        self.transport = None
        self._timer.cancel()  # no wait outlasts the connection
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- used by the response
    async def wait_data(self, limit: float | None) -> None:
        """Wait until more bytes (or EOF) arrive; at most ``limit`` seconds (or the idle cap).

        The limit is the connection's :class:`~infergate.net.deadline.DeadlineTimer`, armed
        once and moved with each wait rather than armed per wait; ``asyncio.timeout`` would cost
        more still (task bookkeeping), and this runs once or twice per proxied request.
        """
        if self.aborted is not None:
            raise self.aborted
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        if self.eof:
            return
        cap = self.limited
        if cap is not None and (limit is None or cap[0] < limit):
            limit = cap[0]
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        self._limit = limit
        if limit is not None:
            self._timer.set(loop.time() + limit)
        try:
            await waiter
        finally:
            self._waiter = None
            self._timer.clear()
        if self.aborted is not None:
            raise self.aborted

    def _expire(self) -> None:
        """The pending wait's limit passed: fail it (withdrawn if the idle cap was set)."""
        w = self._waiter
        if w is None or w.done():
            return
        if self.limited is not None:
            w.set_exception(self.limited[1])
        else:
            w.set_exception(UpstreamTimeout(f"no data from {self.key} for {self._limit}s"))

    def abort(self, exc: UpstreamAborted) -> None:
        """Close the connection and make the pending and every later wait raise ``exc``."""
        self.aborted = exc
        self.close()
        self._wake()

    def limit_idle(self, seconds: float, exc: UpstreamAborted) -> None:
        """From now on no wait lasts longer than ``seconds``; one that does raises ``exc``."""
        self.limited = (seconds, exc)
        if self._waiter is None:
            return
        deadline = self._loop.time() + seconds
        current = self._timer.deadline
        if current is None or deadline < current:
            self._timer.set(deadline)

    def take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        self.drop(n)
        return out

    def drop(self, n: int) -> None:
        """Forget the first ``n`` buffered bytes, read already (:meth:`take` without the copy)."""
        del self.buf[:n]
        if self._paused and len(self.buf) < _HIGH_WATER // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.eof and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        self.eof = True
        self._timer.cancel()  # it holds this connection until it fires


class UpstreamResponse:
    """Status, headers and a body readable whole or chunk by chunk, then released or closed."""

    def __init__(
        self,
        pool: UpstreamPool,
        conn: _Conn,
        read_timeout: float | None,
        head_only: bool,
        on_finish: Callable[[], None],
        idle_timeout: float | None = None,
    ) -> None:
        self._pool = pool
        self._conn = conn
        self._on_finish = on_finish
        self._timeout = read_timeout  # until the head arrived, then the body's idle limit
        self._idle_timeout = read_timeout if idle_timeout is None else idle_timeout
        self._head_only = head_only
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.content_length: int | None = None
        self._chunked = False
        self._remaining = 0  # bytes left in the body (length mode) or the current chunk
        self._done = False
        self._keep_alive = True
        self._released = False

    async def _read_head(self) -> None:
        c = self._conn
        while True:
            end = c.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(c.buf) > _MAX_HEAD:
                raise UpstreamConnectionError(f"response head from {c.key} too large")
            if c.eof:
                raise UpstreamConnectionError(f"{c.key} closed the connection before answering")
            await c.wait_data(self._timeout)
        self._timeout = self._idle_timeout
        c.measuring = True
        if len(c.buf) > end + 4:
            # the first body bytes came with the head: the gap to the next read counts
            c.last_data = c._loop.time()
        head = c.take(end + 4).decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise UpstreamConnectionError(f"malformed status line from {c.key}: {lines[0][:80]!r}")
        self.status = int(parts[1])
        self.reason = parts[2] if len(parts) > 2 else ""
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise UpstreamConnectionError(f"malformed header line from {c.key}")
            self.headers.add(name.strip(), value.strip())
        conn_hdr = self.headers.get("Connection", "").lower()
        self._keep_alive = parts[0] == "HTTP/1.1" and "close" not in conn_hdr
        if self._head_only or self.status in (204, 304) or 100 <= self.status < 200:
            self.content_length = 0
            self._done = True
            return
        te = self.headers.get("Transfer-Encoding", "").lower()
        if "chunked" in te:
            self._chunked = True
        elif "Content-Length" in self.headers:
            try:
                self.content_length = int(self.headers["Content-Length"])
            except ValueError:
                raise UpstreamConnectionError(f"bad Content-Length from {c.key}") from None
            self._remaining = self.content_length
            self._done = self._remaining == 0
        else:
            self._keep_alive = False  # body ends when the server closes

    async def read_chunk(self) -> bytes:
        """The next piece of the body as it arrives, never empty; ``b""`` only at its end.

        Raises :class:`UpstreamAborted` (even with bytes still buffered) once the exchange was
        withdrawn, :class:`UpstreamTimeout` after ``idle_timeout`` without a byte.
        """
        if self._done:
            return b""
        aborted = self._conn.aborted
        if aborted is not None:
            raise aborted
        try:
            return await self._read_chunk()
        except UpstreamConnectionError:
            if self._conn.aborted is not None:
                raise self._conn.aborted from None
            raise

    async def _read_chunk(self) -> bytes:
        c = self._conn
        if self._chunked:
            return await self._read_chunked()
        if self.content_length is not None:
            while not c.buf:
                if c.eof:
                    raise UpstreamConnectionError(f"{c.key} closed the connection mid-body")
                await c.wait_data(self._timeout)
            data = c.take(min(self._remaining, len(c.buf)))
            self._remaining -= len(data)
            self._done = self._remaining == 0
            return data
        while not c.buf:  # until close
            if c.eof:
                if c.error is not None:
                    raise UpstreamConnectionError(f"{c.key} failed mid-body: {c.error}")
                self._done = True
                return b""
            await c.wait_data(self._timeout)
        return c.take(len(c.buf))

    async def _read_chunked(self) -> bytes:
        c = self._conn
        while True:
            if self._remaining > 0:
                while not c.buf:
                    if c.eof:
                        raise UpstreamConnectionError(f"{c.key} closed the connection mid-chunk")
                    await c.wait_data(self._timeout)
                data = c.take(min(self._remaining, len(c.buf)))
                self._remaining -= len(data)
                if self._remaining == 0:
                    self._remaining = -2  # the chunk's trailing CRLF is due
                    if c.buf:
                        data += self._whole_chunks_buffered()
                return data
            if self._remaining == -2:
                await self._need(2)
                if c.take(2) != b"\r\n":
                    raise UpstreamConnectionError(f"bad chunk framing from {c.key}")
                self._remaining = 0
            line = await self._line()
            size = _chunk_size(line)
            if size is None:
                size_text = line.split(b";", 1)[0].strip()
                raise UpstreamConnectionError(f"bad chunk size from {c.key}: {size_text[:20]!r}")
            if size == 0:
                while await self._line():  # trailers, until the empty line
                    pass
                self._done = True
                return b""
            self._remaining = size

    def _whole_chunks_buffered(self) -> bytes:
        """The data of every whole chunk already buffered after the one just read, joined.

        A model server streams one chunk per event (a token, for vLLM), and a gateway busy
        enough to read a connection only now and then finds several waiting: relayed as one
        piece they cost one pass through the director and one write to the client instead of
        one each, so the relay gets cheaper per token exactly when it is loaded, and no byte
        waits for one that has not arrived. Stops before a partial chunk, the last chunk
        (the body's end is read as before) and anything malformed (read, and refused, as
        before). Entered with the previous chunk's trailing CRLF due, and leaves it so.
        """
        c = self._conn
        buf = c.buf
        pos, end = 0, len(buf)
        pieces: list[bytearray] = []
        while pos + 2 < end and buf[pos : pos + 2] == b"\r\n":
            line_end = buf.find(b"\r\n", pos + 2, pos + 2 + _MAX_CHUNK_LINE)
            if line_end < 0:
                break
            size = _chunk_size(buf[pos + 2 : line_end])
            start = line_end + 2
            if size is None or size <= 0 or start + size > end:
                break
            pieces.append(buf[start : start + size])
            pos = start + size
        if not pos:
            return b""
        joined = b"".join(pieces)
        c.drop(pos)
        return joined

    async def _need(self, n: int) -> None:
        c = self._conn
        while len(c.buf) < n:
            if c.eof:
                raise UpstreamConnectionError(f"{c.key} closed the connection mid-body")
            await c.wait_data(self._timeout)

    async def _line(self) -> bytes:
        c = self._conn
        while True:
            i = c.buf.find(b"\r\n")
            if i >= 0:
                line = c.take(i + 2)
                return line[:-2]
            if len(c.buf) > _MAX_HEAD:
                raise UpstreamConnectionError(f"chunk header from {c.key} too long")
            if c.eof:
                raise UpstreamConnectionError(f"{c.key} closed the connection mid-body")
            await c.wait_data(self._timeout)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body's pieces as they arrive (for callers outside the request path)."""
        while data := await self.read_chunk():
            yield data

    async def read(self) -> bytes:
        """The rest of the body. A loop over :meth:`read_chunk`, not ``async for`` over
        :meth:`iter_chunks`: the event loop keeps every async generator in a weak set until it is
        finalised, a cost paid on every request; a body that arrived whole is returned as is."""
        data = await self.read_chunk()
        if self._done:
            return data
        out = bytearray(data)
        while chunk := await self.read_chunk():
            out += chunk
        return bytes(out)

    def release(self) -> None:
        """Give the connection back to the pool if the body was read whole; else close it."""
        if self._released:
            return
        self._released = True
        c = self._conn
        # a connection whose exchange was withdrawn (idle-limited) is not worth keeping
        if self._done and self._keep_alive and not c.buf and c.usable and c.limited is None:
            self._pool._put_idle(c)
        else:
            self._conn.close()
        self._on_finish()

    def close(self) -> None:
        """Abort the connection (the model server sees the client go away)."""
        if not self._released:
            self._released = True
            self._conn.close()
            self._on_finish()


class UpstreamPool:
    """Keep-alive connections per ``host:port``; at most ``max_per_host`` at once per host."""

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float | None = 300.0,
        idle_timeout: float | None = None,
        max_per_host: int = 256,
        max_idle_per_host: int = 64,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        """``read_timeout`` bounds the wait for the response head, ``idle_timeout`` (default: the
        same) each wait for more body bytes after it; with ``ssl`` every connection speaks TLS."""
        self._ssl = ssl
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle_timeout = read_timeout if idle_timeout is None else idle_timeout
        self._idle: dict[str, deque[_Conn]] = {}
        self._max_idle = max_idle_per_host
        self._limits: dict[str, HostGate] = {}
        self._max_per_host = max_per_host
        self._closed = False

    def _put_idle(self, conn: _Conn) -> None:
        q = self._idle.setdefault(conn.key, deque())
        if self._closed or len(q) >= self._max_idle:
            conn.close()
        else:
            conn.measuring, conn.last_data, conn.max_gap = False, -1.0, 0.0
            q.append(conn)

    async def _connect(self, key: str, host: str, port: int) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, proto = await loop.create_connection(
                    lambda: _Conn(key), host, port, ssl=self._ssl, server_hostname=host if self._ssl else None
                )
        except TimeoutError:
            raise UpstreamTimeout(f"connecting to {key} timed out") from None
        except OSError as exc:
            raise UpstreamConnectionError(f"cannot connect to {key}: {exc.strerror or exc}") from None
        return proto

    async def request(
        self,
        key: str,
        host: str,
        port: int,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        exchange: Exchange | None = None,
    ) -> UpstreamResponse:
        """Send one request and return once the response head has arrived.

        ``key`` (``host:port``, IPv6 bracketed) names the pool and is sent as ``Host``. The caller
        must ``release()`` (body read whole) or ``close()`` the response. With ``exchange``, the
        request can be withdrawn from elsewhere (:class:`UpstreamAborted` is raised here or by the
        body reads); a withdrawn request is never retried on a fresh connection.
        """
        head = [f"{method} {target} HTTP/1.1\r\nHost: {key}\r\nContent-Length: {len(body)}\r\n"]
        head += [f"{k}: {v}\r\n" for k, v in headers]  # a list, not a generator: no frame per header
        head.append("\r\n")
        payload = "".join(head).encode("latin-1", errors="replace")
        gate = self._limits.get(key)
        if gate is None:
            gate = self._limits[key] = HostGate(self._max_per_host)
        if gate.free and not gate.waiters:
            gate.free -= 1
        else:
            await gate.wait()
        released = False

        def finish() -> None:
            nonlocal released
            if exchange is not None:
                exchange._detach()
            if not released:
                released = True
                gate.release()

        try:
            if exchange is not None and exchange.aborted is not None:
                raise exchange.aborted
            for attempt in range(2):
                idle = self._idle.get(key)
                conn: _Conn | None = None
                while idle:
                    candidate = idle.pop()
                    if candidate.usable:
                        conn = candidate
                        break
                    candidate.close()
                reused = conn is not None
                if conn is None:
                    conn = await self._connect(key, host, port)
                if exchange is not None:
                    exchange._attach(conn)  # raises (and closes conn) if withdrawn meanwhile
                assert conn.transport is not None
                # one system call for head and body, without copying the body next to the head
                # (uvloop sends the two buffers with writev; asyncio's loops join them)
                conn.transport.writelines((payload, body))
                resp = UpstreamResponse(
                    self, conn, self._read_timeout, method == "HEAD", finish, self._idle_timeout
                )
                try:
                    await resp._read_head()
                except UpstreamConnectionError:
                    conn.close()
                    if conn.aborted is not None:
                        raise conn.aborted from None
                    if reused and not conn.received_any and attempt == 0:
                        continue  # the server had closed the idle connection: once more, fresh
                    raise
                except BaseException:
                    conn.close()  # a timeout or cancellation: never leave the socket open
                    raise
                return resp
            raise UpstreamConnectionError(f"{key} keeps closing connections")  # pragma: no cover
        except BaseException:
            finish()
            raise

    async def close(self) -> None:
        self._closed = True
        for q in self._idle.values():
            while q:
                q.pop().close()
        await asyncio.sleep(0)
