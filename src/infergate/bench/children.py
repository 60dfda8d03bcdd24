"""Processes a benchmark run starts (replicas, routers): started so that they cannot outlive it,
logged to a file in the run's folder, stopped as a process group, waited for while they come up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO

from infergate.servers.children import with_parent_death

__all__ = ["ChildProcess", "MatrixError", "poll_until"]


class MatrixError(RuntimeError):
    """A strategy could not be brought up (process died or never became ready)."""


class ChildProcess:
    """A child process whose output goes to a log file in the work folder."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = log_path.open("wb")
        # The launcher (with_parent_death) would only fail in the child, after the fork: a command
        # that cannot run is refused here, as Popen refuses it without the launcher.
        exe = self.argv[0]
        runnable = (
            os.path.isfile(exe) and os.access(exe, os.X_OK)
            if os.sep in exe
            else shutil.which(exe, path=env.get("PATH")) is not None
        )
        if not runnable:
            self._log.close()
            raise MatrixError(f"{name}: cannot start {exe}: not an executable file")
        # Own session: the router may start helpers of its own, and a stop must reach all of them;
        # with_parent_death: a matrix killed outright (no clean-up) takes them down too.
        try:
            self.proc = subprocess.Popen(
                with_parent_death(self.argv),
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            self._log.close()
            raise MatrixError(f"{name}: cannot start {self.argv[0]}: {exc}") from exc

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the child's process group, SIGKILL after ``grace`` seconds."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await asyncio.to_thread(self.proc.wait, 5)
        self._log.close()


async def poll_until(
    child: ChildProcess, check: Callable[[], Awaitable[bool]], *, within: float, what: str
) -> None:
    """Poll ``check`` until true; fail early if ``child`` exits, and after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if not child.alive():
            raise MatrixError(f"{child.name} exited ({child.proc.returncode}) before {what}:\n{child.tail()}")
        if time.monotonic() > deadline:
            raise MatrixError(f"{child.name}: no {what} after {within:g} s:\n{child.tail()}")
        await asyncio.sleep(0.05)
