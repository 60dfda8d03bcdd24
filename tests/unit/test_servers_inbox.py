"""A gRPC stream's inbox: arrival order, one read waiting, cancellation losing nothing.

The reads are driven by hand (``coroutine.send``) so each test knows whether a read is waiting
without yielding to the event loop."""

from __future__ import annotations

import asyncio

import pytest

from infergate.servers.inbox import Inbox


async def test_messages_come_out_in_arrival_order() -> None:
    inbox: Inbox[int] = Inbox()
    assert inbox.empty()
    for n in range(3):
        inbox.put(n)
    assert not inbox.empty()
    assert [await inbox.get() for _ in range(3)] == [0, 1, 2]
    assert inbox.empty()


async def test_a_waiting_read_gets_the_next_message() -> None:
    inbox: Inbox[str] = Inbox()
    read = inbox.get()
    waiter = read.send(None)  # nothing there: the read waits on a future
    assert isinstance(waiter, asyncio.Future) and not waiter.done()
    inbox.put("hello")
    assert waiter.done()
    with pytest.raises(StopIteration) as stop:
        read.send(None)
    assert stop.value.value == "hello"


async def test_a_cancelled_read_loses_nothing_and_leaves_no_waiter() -> None:
    inbox: Inbox[str] = Inbox()
    read = inbox.get()
    read.send(None)
    with pytest.raises(asyncio.CancelledError):
        read.throw(asyncio.CancelledError())
    inbox.put("kept")
    assert await inbox.get() == "kept"
    second = inbox.get()
    second.send(None)  # a new read may wait again
    second.close()


async def test_two_reads_at_once_are_refused() -> None:
    inbox: Inbox[str] = Inbox()
    first = inbox.get()
    first.send(None)
    second = inbox.get()
    with pytest.raises(RuntimeError, match="another read"):
        second.send(None)
    inbox.put("for the first")
    with pytest.raises(StopIteration) as stop:
        first.send(None)
    assert stop.value.value == "for the first"
