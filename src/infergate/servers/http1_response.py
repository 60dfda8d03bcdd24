"""The parts of an HTTP/1.1 answer that need no connection: the handler's whole :class:`Response`,
the standard reason phrases and the ``Date`` header's value.

The inference listener's server (``http1``) writes each response head in one ``write``; besides
the handler's own fields that head carries the status's reason phrase and a ``Date`` (RFC 9110
§6.6.1: an origin server with a clock sends one), formatted once a second rather than per
request. None of this depends on the parser or a connection, so it lives apart from ``http1``,
which is about those; handlers (the built-in proxy, tests, benchmarks) build their
:class:`Response` from here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from email.utils import formatdate
from http import HTTPStatus

__all__ = ["REASONS", "DateHeader", "Response"]

REASONS = {s.value: s.phrase for s in HTTPStatus}
"""The standard reason phrase of each status code, for a response that names none."""


class Response:
    """A whole response: status, headers (``Content-Length`` is added) and body."""

    __slots__ = ("body", "headers", "reason", "status")

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        *,
        content_type: str | None = None,
        reason: str = "",
    ) -> None:
        self.status = status
        self.body = body
        self.headers = list(headers)
        if content_type is not None:
            self.headers.append(("Content-Type", content_type))
        self.reason = reason


class DateHeader:
    """The ``Date`` header's value, formatted once a second."""

    second = -1
    value = ""

    @classmethod
    def now(cls) -> str:
        t = int(time.time())
        if t != cls.second:
            cls.second, cls.value = t, formatdate(t, usegmt=True)
        return cls.value
