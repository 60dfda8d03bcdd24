"""Child processes that cannot outlive the gateway process that started them.

``infergate up`` runs simulators, LoRA syncers and Envoy as children in their own sessions (so a
terminal's Ctrl-C reaches only the gateway, which stops them after draining). An orderly stop
terminates and reaps them; this module covers the disorderly one: a parent killed with SIGKILL,
or crashing, never runs its cleanup. On Linux every child is started through a few lines of
Python that ask the kernel to send it SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``,
which survives ``exec``), check that the parent is still alive, then ``exec`` the real command in
the same process. A ``preexec_fn`` would do the same without the extra interpreter, but runs
Python in the forked child of a process whose gRPC threads are live, which can abort the child.

The signal follows the *thread* that forked the child: children must be started from the event
loop's thread, never from a worker thread that may exit first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["with_parent_death"]

# argv after "-c": [parent pid, command...]; PR_SET_PDEATHSIG is 1, SIGKILL 9.
_LAUNCHER = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)  # the parent died before the request took effect\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def with_parent_death(argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped so the child dies with this process (Linux); unchanged elsewhere."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()), *argv]
