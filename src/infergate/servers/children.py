"""Child processes that cannot outlive the gateway process that started them.

``infergate up`` runs simulators, LoRA syncers and Envoy as children in their own sessions (so a
terminal's Ctrl-C reaches only the gateway, which stops them after draining). An orderly stop
terminates and reaps them; this module covers the disorderly one: a parent killed with SIGKILL,
or crashing, never runs its cleanup. On Linux every child asks the kernel, between ``fork`` and
``exec``, to be sent SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``), and checks that
its parent is still the one that forked it, so a parent dying in between cannot leave it behind.

The signal follows the *thread* that forked the child: children must be started from the event
loop's thread, never from a worker thread that may exit first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    fn: Callable[..., int] = libc.prctl
    return fn


_PRCTL = _prctl()


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die with this process; None where unsupported.

    Built in the parent (it records the parent's pid); runs in the child after ``fork``.
    """
    prctl = _PRCTL
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec
