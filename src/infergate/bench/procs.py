"""Helpers for benchmark scripts that start real processes: wait for one to answer, read its CPU,
stop them when the script itself is told to stop.

The scripts under ``bench/`` cannot import one another; what several of them need lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

__all__ = [
    "cancel_on_signals",
    "cpu_seconds",
    "exit_on_sigterm",
    "process_pool",
    "tree_cpu_by_command",
    "tree_cpu_seconds",
    "wait_http",
]

_PR_SET_PDEATHSIG = 1

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
"""What ends a benchmark from outside (``kill``, ``timeout``, a closed terminal). Their default
action ends the process at once, and children started in sessions of their own (so that a stop
reaches their helpers too) would outlive it."""

CLK_TCK = os.sysconf("SC_CLK_TCK")


def wait_http(url: str, deadline: float = 60.0) -> None:
    """Poll ``url`` until it answers 2xx (start-up only: measured runs never poll); RuntimeError
    after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if 200 <= r.status < 300:
                    return
        except OSError:
            pass
        if time.monotonic() > end:
            raise RuntimeError(f"{url} did not become ready in {deadline:.0f} s")
        time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of ``pid`` so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_by_command(pid: int) -> dict[str, float]:
    """User + system CPU seconds of ``pid`` and every live descendant (children's reaped time too),
    by command name (``envoy`` apart from the gateway's own Python processes)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p and child not in tree:
                tree.add(child)
                frontier.append(child)
    totals: dict[str, float] = {}
    for p in tree:
        try:
            head, tail = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        command = head.split("(", 1)[1]
        fields = tail.split()
        # utime, stime, cutime, cstime are fields 14-17 of stat (11-14 after the command name)
        totals[command] = totals.get(command, 0.0) + sum(int(x) for x in fields[11:15]) / CLK_TCK
    return totals


def tree_cpu_seconds(pid: int) -> float:
    """All the CPU of ``pid`` and its descendants (see :func:`tree_cpu_by_command`)."""
    return sum(tree_cpu_by_command(pid).values())


def exit_on_sigterm() -> None:
    """From now on SIGTERM and SIGHUP raise ``SystemExit(128 + signal)`` in the main thread, so the
    ``finally`` blocks and context managers of a synchronous script stop what it started."""

    def _exit(signum: int, _frame: object) -> None:
        sys.exit(128 + signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, _exit)


@contextlib.contextmanager
def cancel_on_signals() -> Iterator[list[int]]:
    """Inside, SIGTERM or SIGHUP cancels the current task once (a second signal during the clean-up
    is ignored, so it cannot cut the clean-up short); the list names the signal received. The
    caller's ``finally`` blocks and ``async with`` exits then stop the processes it started. The
    previous handlers come back on exit. Call it from the main thread with the loop running."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("cancel_on_signals needs a running task")
    received: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def on_signal(sig: signal.Signals) -> None:
        if not received:
            received.append(int(sig))
            task.cancel()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, handler)


def _die_with_parent() -> None:
    """Pool-worker initializer: the default SIGTERM action (not the parent's handler, which a
    worker would catch as a failed job and go on), and on Linux a SIGTERM from the kernel when the
    parent dies, even by SIGKILL."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


@contextlib.contextmanager
def process_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A process pool whose workers do not outlive the script. When the body raises (SIGTERM
    after :func:`exit_on_sigterm`, Ctrl-C, an error) the queued work is cancelled and the workers
    are killed and reaped instead of finishing what they run (a twin search takes minutes);
    if the script dies outright, the kernel stops them (Linux)."""
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_die_with_parent)
    try:
        yield pool
    except BaseException:
        for child in set(multiprocessing.active_children()) - before:
            # SIGKILL, not SIGTERM: a worker forked a moment ago has not yet reached its
            # initializer, so it still runs the script's own SIGTERM handler, and an exception
            # raised there unwinds a copy of the script's stack in the child (in CI, coverage's
            # handler failed there and the forked copy went on running the test session)
            child.kill()
        # the pool's own thread sees its workers die, fails what they ran and reaps them (joining
        # them from here too would race it for their exit status)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
