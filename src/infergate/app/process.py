"""What every gateway process owns, whatever it serves: the event loop, the file-descriptor limit
and SIGTERM/SIGINT handling (first signal: graceful drain; a second one later: stop now).

``run``/``up``/``serve`` and ``epp`` share these, so they live here rather than in either.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from .logs import configure_logging, setup_logging

__all__ = [
    "configure_logging",
    "freeze_startup_heap",
    "raise_fd_limit",
    "run_async",
    "setup_logging",
    "stop_event",
]

log = logging.getLogger("infergate.app")


def raise_fd_limit() -> None:
    """Use the hard file-descriptor limit: a gateway holds two sockets per request in flight."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, OSError, ValueError):  # pragma: no cover - platform without the limit
        pass


def freeze_startup_heap() -> None:
    """Move every object alive now (modules, settings, plugin tables, compiled configs) out of the
    garbage collector's generations, once the process is serving: the collections that requests
    trigger then never walk them again. Worth ~2 % of the built-in proxy's CPU per request
    (bench/bench_dataplane.py); the objects were going to live as long as the process anyway."""
    gc.collect()
    gc.freeze()


def run_async(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``main`` on uvloop (where available) with the raised descriptor limit; its exit code."""
    raise_fd_limit()
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - Windows
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def stop_event() -> asyncio.Event:
    """Set on the first SIGINT/SIGTERM; another one more than a second later exits at once.

    (``timeout`` and terminals signal the whole process group, so one request can arrive twice.)
    """
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    first: list[float] = []

    def on_signal(sig: signal.Signals) -> None:
        if event.is_set():
            if loop.time() - first[0] < 1.0:
                return
            log.warning("second %s: exiting now", sig.name)
            sys.exit(130)
        log.info("%s received: shutting down", sig.name)
        first.append(loop.time())
        event.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal, sig)
    return event
