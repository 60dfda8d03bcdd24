"""A per-host limit on concurrent requests, first come, first served, for the upstream pool.

``UpstreamPool`` (``http1_client``) lets at most ``max_per_host`` requests at once go to one model
server and queues the rest in arrival order; a queued request whose caller is cancelled must never
take a slot with it. That is a small queueing structure with rules of its own (and tests of its
own, ``tests/unit/test_upstream_gate.py``) that knows nothing of HTTP or connections, so it lives
apart from the client.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["HostGate"]


class HostGate:
    """At most ``limit`` requests at once to one host, the others served first come, first served.

    ``asyncio.Semaphore`` does this, but its ``acquire`` is a coroutine that scans its waiters
    even when a slot is free; here the caller takes a free slot with two attribute reads
    (``if gate.free and not gate.waiters``) and awaits :meth:`wait` only when it must queue.
    """

    __slots__ = ("free", "waiters")

    def __init__(self, limit: int) -> None:
        self.free = limit
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def wait(self) -> None:
        """Queue for a slot; on return the caller holds one (release it with :meth:`release`)."""
        if self.free and not self.waiters:
            self.free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a slot as it was cancelled: pass it on
            elif fut in self.waiters:  # (release may have dropped it already)
                self.waiters.remove(fut)
            raise

    def release(self) -> None:
        """Give a slot back: to the first waiter still waiting, else to the free count."""
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1
