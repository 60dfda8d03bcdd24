"""``infergate.bench.procs``: a benchmark told to stop (SIGTERM, SIGHUP) unwinds instead of dying,
so what it started stops with it."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from infergate.bench.procs import cancel_on_signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
async def test_a_stop_signal_cancels_the_task_once_and_the_handlers_come_back(sig: signal.Signals) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    cleaned = False
    with cancel_on_signals() as received:
        try:
            os.kill(os.getpid(), sig)
            await asyncio.Event().wait()  # only the signal ends this
        except asyncio.CancelledError:
            await asyncio.sleep(0)  # the clean-up can still await
            cleaned = True
    assert cleaned and received == [int(sig)]
    assert {s: signal.getsignal(s) for s in before} == before


async def test_without_a_signal_nothing_is_cancelled() -> None:
    with cancel_on_signals() as received:
        await asyncio.sleep(0)
    assert received == []
