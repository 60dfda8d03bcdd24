"""Timers that outlive requests (``net/deadline.py``): the upstream client's read limit and the
HTTP/1.1 server's idle limit arm about one loop timer per limit, not one per request, and still
fire on time.

The loop's clock and timers are the test's (:class:`FakeTimers`); futures and tasks come from the
real loop. Coroutines waiting on the upstream connection are driven by hand: ``send(None)`` runs
one to its next ``await``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from infergate.net.deadline import DeadlineTimer
from infergate.net.http1_client import UpstreamAborted, UpstreamTimeout, _Conn
from infergate.servers.http1 import Http1Server, HttpRequest, _Connection
from infergate.servers.http1_response import Response


class FakeHandle:
    def __init__(
        self, owner: FakeTimers, when: float, callback: Callable[..., object], args: tuple[Any, ...]
    ) -> None:
        self.owner, self.when, self.callback, self.args = owner, when, callback, args

    def cancel(self) -> None:
        if self in self.owner.armed:
            self.owner.armed.remove(self)


class FakeTimers:
    """``time``, ``call_at`` and ``call_later`` on a clock moved by :meth:`advance`."""

    def __init__(self, real: asyncio.AbstractEventLoop) -> None:
        self.real = real
        self.now = 0.0
        self.armed: list[FakeHandle] = []
        self.arms = 0  # timers armed so far

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> FakeHandle:
        self.arms += 1
        handle = FakeHandle(self, when, callback, args)
        self.armed.append(handle)
        return handle

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> FakeHandle:
        return self.call_at(self.now + delay, callback, *args)

    def create_future(self) -> asyncio.Future[Any]:
        return self.real.create_future()

    def create_task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return self.real.create_task(coro)

    def pending(self) -> list[float]:
        return sorted(h.when for h in self.armed)

    def advance(self, to: float) -> None:
        """Move the clock to ``to``, running every timer due by then in order."""
        self.now = to
        while due := [h for h in self.armed if h.when <= to]:
            first = min(due, key=lambda h: h.when)
            self.armed.remove(first)
            first.callback(*first.args)


async def test_a_deadline_moved_later_keeps_the_timer_and_one_moved_sooner_rearms_it() -> None:
    timers = FakeTimers(asyncio.get_running_loop())
    fired: list[float] = []
    deadline = DeadlineTimer(timers, lambda: fired.append(timers.now))  # type: ignore[arg-type]
    deadline.set(10.0)
    deadline.set(12.0)
    assert timers.arms == 1 and timers.pending() == [10.0]
    timers.advance(10.0)  # fires early for the deadline set since: re-arms, no callback
    assert fired == [] and timers.pending() == [12.0]
    deadline.set(11.0)  # sooner than the armed timer
    assert timers.pending() == [11.0]
    timers.advance(11.0)
    assert fired == [11.0] and deadline.deadline is None
    deadline.set(20.0)
    deadline.clear()
    timers.advance(20.0)
    assert fired == [11.0] and timers.pending() == []
    deadline.set(30.0)
    deadline.cancel()
    assert timers.pending() == []


def _begin(wait: Coroutine[Any, Any, None]) -> Coroutine[Any, Any, None]:
    wait.send(None)  # to `await waiter`: the wait is pending now
    return wait


def _ends(wait: Coroutine[Any, Any, None]) -> bool:
    try:
        wait.send(None)
    except StopIteration:
        return True
    return False


async def _upstream() -> tuple[_Conn, FakeTimers]:
    conn = _Conn("127.0.0.1:8000")
    timers = FakeTimers(asyncio.get_running_loop())
    conn._loop = conn._timer.loop = timers  # type: ignore[assignment]
    return conn, timers


async def test_upstream_waits_with_one_limit_share_a_timer_and_a_late_answer_still_times_out() -> None:
    conn, timers = await _upstream()
    for t in (0.0, 1.0):  # two exchanges answered in time
        timers.advance(t)
        wait = _begin(conn.wait_data(10.0))
        conn.data_received(b"HTTP/1.1 200 OK\r\n")
        assert _ends(wait)
    timers.advance(2.0)
    late = _begin(conn.wait_data(10.0))
    assert timers.arms == 1 and timers.pending() == [10.0]
    timers.advance(10.0)  # the first wait's deadline: the third one has two seconds left
    assert timers.pending() == [12.0]
    timers.advance(12.0)
    with pytest.raises(UpstreamTimeout):
        late.send(None)


async def test_upstream_a_shorter_limit_or_idle_cap_moves_the_timer_sooner() -> None:
    conn, timers = await _upstream()
    first = _begin(conn.wait_data(10.0))
    conn.data_received(b"x")
    assert _ends(first)
    timers.advance(1.0)
    short = _begin(conn.wait_data(0.5))
    assert timers.pending() == [1.5]
    timers.advance(1.5)
    with pytest.raises(UpstreamTimeout):
        short.send(None)

    capped = _begin(conn.wait_data(10.0))
    withdrawn = UpstreamAborted("withdrawn")
    conn.limit_idle(2.0, withdrawn)
    assert timers.pending() == [3.5]
    timers.advance(3.5)
    with pytest.raises(UpstreamAborted):
        capped.send(None)


async def test_upstream_a_closed_connection_leaves_no_timer() -> None:
    conn, timers = await _upstream()
    wait = _begin(conn.wait_data(10.0))
    conn.data_received(b"x")
    assert _ends(wait)
    assert timers.pending() == [10.0]
    conn.close()
    assert timers.pending() == []


class FakeTransport:
    def __init__(self) -> None:
        self.sent = bytearray()
        self.closed = False

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.sent += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


REQUEST = b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\n\r\n"


async def _server_connection(
    handler: Callable[[HttpRequest], Coroutine[Any, Any, Response]],
) -> tuple[_Connection, FakeTransport, FakeTimers]:
    conn = _Connection(Http1Server(handler, idle_timeout=5.0))
    timers = FakeTimers(asyncio.get_running_loop())
    conn.loop = conn._idle.loop = timers  # type: ignore[assignment]
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport, timers


async def _ok(req: HttpRequest) -> Response:
    return Response(200, b"{}", content_type="application/json")


async def test_server_keep_alive_requests_share_the_idle_timer_and_idleness_still_closes() -> None:
    conn, transport, timers = await _server_connection(_ok)
    assert timers.pending() == [5.0]
    for t in (1.0, 3.0):
        timers.advance(t)
        conn.data_received(REQUEST)
        assert conn._task is not None
        await conn._task  # answered: idle again, for five seconds from now
    assert transport.sent.count(b"HTTP/1.1 200 OK") == 2
    assert timers.arms == 1
    timers.advance(5.0)  # the first deadline: the connection has been idle two seconds only
    assert not transport.closed and timers.pending() == [8.0]
    timers.advance(8.0)
    assert transport.closed


async def test_server_a_request_still_answered_when_the_timer_fires_is_not_cut_off() -> None:
    release = asyncio.Event()

    async def slow(req: HttpRequest) -> Response:
        await release.wait()
        return Response(200, b"{}", content_type="application/json")

    conn, transport, timers = await _server_connection(slow)
    timers.advance(1.0)
    conn.data_received(REQUEST)
    timers.advance(5.0)
    assert not transport.closed and timers.pending() == []
    release.set()
    assert conn._task is not None
    await conn._task
    assert b"HTTP/1.1 200 OK" in transport.sent
    assert timers.pending() == [10.0]  # idle from the answer on
    timers.advance(10.0)
    assert transport.closed
