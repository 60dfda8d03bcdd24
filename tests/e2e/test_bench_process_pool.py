"""``infergate.bench.procs.process_pool``: the workers of a benchmark's process pool do not outlive
it, whether it fails, is told to stop, or is killed outright."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from infergate.bench.procs import process_pool
from tests.support import wait_for


def _block() -> None:
    threading.Event().wait()  # a job that never ends on its own


def test_a_failing_body_terminates_the_pools_workers() -> None:
    others = set(multiprocessing.active_children())  # children of earlier tests in this process
    with pytest.raises(RuntimeError), process_pool(2) as pool:
        pool.submit(_block)
        workers = set(multiprocessing.active_children()) - others
        assert workers
        raise RuntimeError("the script was told to stop")
    assert not any(w.is_alive() for w in workers)


_ORPHAN_SCRIPT = """
import sys, threading
from infergate.bench.procs import process_pool

def block():
    threading.Event().wait()

if __name__ == "__main__":
    import multiprocessing
    with process_pool(1) as pool:
        pool.submit(block)
        print(multiprocessing.active_children()[0].pid, flush=True)
        threading.Event().wait()
"""


def test_workers_stop_when_the_script_is_killed_outright(tmp_path: Path) -> None:
    """SIGKILL leaves a script no chance to clean up: the kernel stops its workers (Linux)."""
    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = 0
    try:
        assert proc.stdout is not None
        worker = int(proc.stdout.readline())
        proc.kill()
        proc.wait()
        wait_for(lambda: not _alive(worker), timeout=10, what="the worker to stop")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if worker and _alive(worker):  # the check failed: do not leave it behind
            os.kill(worker, signal.SIGKILL)
        if proc.stdout is not None:
            proc.stdout.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
