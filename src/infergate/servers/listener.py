"""A TCP listener with its own connection budget, for the HTTP servers of the gateway.

Without a cap, idle connections held open by one client exhaust the process's file descriptors and
lock out every listener at once, the admin port included. Each listener therefore admits at most
``limit`` connections: beyond that a new connection is closed as soon as it is accepted (a reset,
no bytes), while the connections already open are served as usual. The inference listener and the
admin listener each have their own budget, so a flood on one cannot starve the other.

The server (aiohttp's ``Server`` for the admin port, :class:`~infergate.servers.http1.Http1Server`
for the inference port) still owns every admitted connection (keep-alive, graceful shutdown) and
drains them on its own shutdown; this class only decides who gets in.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import ssl as ssl_module
from collections.abc import Sized
from typing import Protocol

from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["LimitedListener", "client_connection_budget", "quiet_malformed_http"]

log = logging.getLogger("infergate.listener")


def client_connection_budget(wanted: int, *, reserved: int) -> int:
    """``wanted`` client connections, lowered to fit this process's file-descriptor limit.

    Every proxied request holds a client and an upstream socket, so clients get half of what is
    left after ``reserved`` (the admin listener's budget) and a reserve for scrapes, probes and files.
    """
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # pragma: no cover - no such limit on this platform
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    room = max(16, (soft - reserved - 128) // 2)
    if room < wanted:
        log.info(
            "file-descriptor limit %d: the inference listener takes at most %d connections "
            "(raise the limit with ulimit -n for more)",
            soft,
            room,
        )
    return min(wanted, room)


class _MalformedHttpFilter(logging.Filter):
    """aiohttp logs every unparseable request at ERROR with a traceback; a client sending garbage
    is not a gateway error. Such records become one DEBUG line without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        record.msg = f"{record.msg}: malformed HTTP: %s"
        record.args = (*(record.args if isinstance(record.args, tuple) else ()), exc.message)
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_MALFORMED = _MalformedHttpFilter()


def quiet_malformed_http() -> None:
    """Install the filter on aiohttp's server logger (idempotent)."""
    logger = logging.getLogger("aiohttp.server")
    if _MALFORMED not in logger.filters:
        logger.addFilter(_MALFORMED)


class _Refuse(asyncio.Protocol):
    """The protocol of a connection over the budget: closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


class ConnectionServer(Protocol):
    """A protocol factory that knows its open connections (aiohttp's ``web.Server`` is one)."""

    @property
    def connections(self) -> Sized: ...

    def __call__(self) -> asyncio.BaseProtocol: ...


class LimitedListener:
    """Serves ``server`` on ``host:port`` with at most ``limit`` open connections."""

    def __init__(self, server: ConnectionServer, limit: int, *, name: str = "listener") -> None:
        if limit < 1:
            raise ValueError("connection limit must be >= 1")
        self._server_factory = server
        self._limit = limit
        self._name = name
        self._server: asyncio.Server | None = None
        self.rejected = 0
        self.port = 0

    def _protocol(self) -> asyncio.BaseProtocol:
        server = self._server_factory
        if len(server.connections) >= self._limit:
            self.rejected += 1
            if self.rejected == 1 or self.rejected % 1000 == 0:
                log.warning(
                    "%s: %d connection(s) refused: limit %d reached", self._name, self.rejected, self._limit
                )
            return _Refuse()
        return server()

    async def start(
        self,
        host: str,
        port: int,
        *,
        backlog: int = 1024,
        sock: socket.socket | None = None,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        """Bind (``port`` 0 picks a free port, see :attr:`port`) and accept; or accept on ``sock``,
        a listening socket already bound (shared by the worker processes of ``proxy.workers``).
        ``ssl``: connections speak TLS (the admin port's ``auth.metrics_cert_dir``)."""
        quiet_malformed_http()
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(self._protocol, sock=sock, backlog=backlog, ssl=ssl)
        else:
            self._server = await loop.create_server(
                self._protocol, host or None, port, reuse_address=True, backlog=backlog, ssl=ssl
            )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting; admitted connections stay with the server (its shutdown drains them)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
