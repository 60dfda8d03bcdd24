"""A deadline guarded by one loop timer that stays armed while the deadline moves.

Keep-alive connections set a deadline for every request (the server's idle limit, the upstream
client's read limit) and almost always clear it well before it passes. Arming and cancelling a
loop timer each time costs ~1.3 µs on uvloop (``bench/bench_loop_timers.py``); here the timer is
armed once and, when it fires, either runs the callback (the deadline passed) or re-arms itself
for the deadline set since. A deadline earlier than the armed timer moves it sooner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["DeadlineTimer"]


class DeadlineTimer:
    """Runs ``callback`` once the current deadline passes; ``clear`` forgets the deadline."""

    __slots__ = ("_at", "_callback", "_handle", "deadline", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self.loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0  # when ``_handle`` fires: at or before ``deadline``
        self.deadline: float | None = None
        """Loop time at which ``callback`` runs; None: nothing pending."""

    def set(self, deadline: float) -> None:
        """Run the callback at ``deadline`` (loop time) instead of at the previous one."""
        self.deadline = deadline
        handle = self._handle
        if handle is not None:
            if self._at <= deadline:
                return  # fires early and re-arms
            handle.cancel()
        self._at = deadline
        self._handle = self.loop.call_at(deadline, self._fire)

    def clear(self) -> None:
        """No deadline: the armed timer, if any, fires to nothing (cheaper than cancelling it)."""
        self.deadline = None

    def cancel(self) -> None:
        """No deadline and no armed timer (the owner is closing: the timer holds it)."""
        self.deadline = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        deadline = self.deadline
        if deadline is None:
            return
        if deadline > self.loop.time():  # moved since the timer was armed, or uvloop ran it early
            self.set(deadline)
            return
        self.deadline = None
        self._callback()
