"""What a service gives the gRPC server (``grpc_http2``): its methods, each with its handler and
(de)serialisers, an optional observer of its calls, and the exception a handler raises to end a
call with a status. Kept apart from the protocol machinery so a service reads only this."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import grpc

if TYPE_CHECKING:
    from .grpc_http2 import StreamContext

__all__ = ["CallObserver", "GrpcAbort", "GrpcMethod"]


class GrpcAbort(Exception):
    """Raised by :meth:`~infergate.servers.grpc_http2.StreamContext.abort`: the call ends with this status."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(details)
        self.code = code
        self.details = details


@dataclass(frozen=True, slots=True)
class GrpcMethod:
    """One method: the handler, how requests are read and replies written, and its shape."""

    handler: Callable[[Any, StreamContext], Awaitable[Any]]
    deserialize: Callable[[bytes], Any]
    serialize: Callable[[Any], bytes]
    client_streaming: bool = False
    observer: CallObserver | None = None
    """Told when each call of this method starts and ends (stream metrics)."""


class CallObserver(Protocol):
    """Watches the calls of one method, as a gRPC stream interceptor would."""

    def started(self) -> None: ...

    def finished(self, code: str, seconds: float) -> None:
        """The call ended after ``seconds`` with ``code`` as grpc-go spells it (``OK``; ``Canceled``
        when the peer reset it), what gRPC metrics label calls with."""
