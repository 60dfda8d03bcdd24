"""`infergate up` killed outright (SIGKILL, no cleanup runs) leaves no child behind.

Simulators, LoRA syncers and Envoy all ask the kernel to kill them when their parent dies; the
test finds them through /proc as the parent's children and waits for every one to be gone.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.support import free_port, start_infergate, wait_for


def children_of(pid: int) -> dict[int, str]:
    """pid -> command line of every process whose parent is ``pid``."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # the command name (field 2) may hold spaces and parentheses: ppid follows the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found[int(entry)] = cmd
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; init reaps it


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc (Linux)")
def test_sigkill_of_up_leaves_no_orphans(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    args = ["up", "--quiet", "--replicas", "1", "--data-plane", "envoy", "--port", str(port)]
    up = start_infergate(
        [*args, "--admin-port", str(admin)],
        tmp_path,
        health_url=f"http://127.0.0.1:{admin}/readyz",
        timeout=60,
        # killed outright, `up` cannot remove its run folder nor Envoy's: keep them in tmp_path
        env={"TMPDIR": str(tmp_path)},
    )
    kids: dict[int, str] = {}
    try:
        kids = children_of(up.proc.pid)
        kinds = {k for cmd in kids.values() for k in ("simulate", "lora-syncer", "envoy") if k in cmd}
        assert kinds == {"simulate", "lora-syncer", "envoy"}, kids
        up.proc.send_signal(signal.SIGKILL)
        up.proc.wait(10)
        wait_for(lambda: not any(alive(p) for p in kids), timeout=10, what=f"children {kids} to die")
    finally:
        up.stop(signal.SIGKILL)
        for pid in kids:  # whatever survived a failed assertion
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
