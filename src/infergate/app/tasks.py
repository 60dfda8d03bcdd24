"""Supervised background tasks: a crashing task is logged and restarted with back-off.

A small TaskGroup-like owner for the long-running loops of the app (metrics scraper, live summary,
child-process watchers). Unlike ``asyncio.TaskGroup`` one failing task does not tear the others
down: the gateway keeps serving while, say, the scraper restarts. ``stop`` cancels everything and
waits for it, so shutdown leaves no orphan tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

__all__ = ["Supervisor"]

log = logging.getLogger("infergate.tasks")


class Supervisor:
    """Runs named coroutine factories until :meth:`stop`; restarts them when they fail."""

    def __init__(self, *, initial_backoff: float = 0.1, max_backoff: float = 5.0) -> None:
        self._initial = initial_backoff
        self._max = max_backoff
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.restarts: dict[str, int] = {}

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]], *, restart: bool = True) -> None:
        """Start ``factory()`` as task ``name``; if it raises (or returns, with restart) run it again."""
        if name in self._tasks:
            raise ValueError(f"task {name!r} already running")
        self.restarts[name] = 0
        self._tasks[name] = asyncio.create_task(self._run(name, factory, restart), name=name)

    async def _run(self, name: str, factory: Callable[[], Awaitable[None]], restart: bool) -> None:
        backoff = self._initial
        while True:
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                await factory()
                if not restart:
                    return
                log.warning("task %s returned; restarting in %.1fs", name, backoff)
            except asyncio.CancelledError:
                raise
            except Exception:
                if not restart:
                    log.exception("task %s failed", name)
                    return
                log.exception("task %s failed; restarting in %.1fs", name, backoff)
            if loop.time() - started > 30.0:
                backoff = self._initial  # it ran a good while: start the back-off over
            self.restarts[name] += 1
            await asyncio.sleep(backoff)
            backoff = min(self._max, backoff * 2)

    def running(self) -> list[str]:
        return [n for n, t in self._tasks.items() if not t.done()]

    async def stop(self) -> None:
        """Cancel every task and wait until all have finished."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
