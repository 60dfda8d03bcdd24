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
    "GC_GEN0_THRESHOLD",
    "configure_logging",
    "raise_fd_limit",
    "run_async",
    "setup_logging",
    "stop_event",
    "tune_gc_for_serving",
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


GC_GEN0_THRESHOLD = 20_000
"""Young-generation threshold once serving: tracked containers allocated, net of those freed,
between two collections.

Python's default, 700, is below what the requests in flight hold at once (about 20 containers
each), so at 32 requests in flight the collector ran every few dozen requests, found nothing to
free, and promoted live request state into the older generations, whose collections then walked
it again. Refcounting frees almost everything a request allocates, so at 20,000 a young
collection comes only with about a thousand requests in flight at once, or once cyclic garbage
has piled up that far; each walks at most that many objects, a few milliseconds."""


def tune_gc_for_serving() -> None:
    """Settle the garbage collector for serving, once the process is: every object alive now
    (modules, settings, plugin tables, compiled configs) leaves the collector's generations
    (``gc.freeze``), so the collections that requests trigger never walk them again, and young
    collections wait for :data:`GC_GEN0_THRESHOLD` allocations instead of 700.

    Measured by ``bench/bench_proxy_hotpath.py --gc default`` against the default ``--gc serving``
    (docs/benchmarks.md): the collector's time per proxied request falls by an order of
    magnitude and full collections, tens of milliseconds each without the freeze, stop."""
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    if 0 < gen0 < GC_GEN0_THRESHOLD:  # 0: collection disabled by whoever embeds us; leave it
        gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


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
