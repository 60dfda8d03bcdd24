"""A stream's inbox: the messages that arrived for one reader, and that reader's wait.

``asyncio.Queue`` is built for many producers and consumers, a bound and ``join()``: each
instance makes an ``Event`` and two waiter deques, and each message goes through five Python
methods. A gRPC stream has one reader that reads one message at a time, so its inbox is a
deque and at most one waiting future (``bench/bench_extproc_hotpath.py``: the picker's five
messages per request went through ``asyncio.Queue`` at about 30 Python calls a request).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

__all__ = ["Inbox"]

T = TypeVar("T")


class Inbox(Generic[T]):
    """Messages in arrival order for one reader; ``put`` never blocks (the sender's flow-control
    window bounds what can arrive)."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: T) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> T:
        """The oldest message, waiting for one if none is there. One read at a time: a second
        concurrent read is a programming error (``RuntimeError``). A cancelled read loses nothing."""
        items = self._items
        while not items:
            if self._waiter is not None:
                raise RuntimeError("Inbox.get: another read is already waiting")
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return items.popleft()
