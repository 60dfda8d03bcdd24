"""Helpers for benchmark scripts that start real processes: wait for one to answer, read its CPU.

The scripts under ``bench/`` cannot import one another; what several of them need lives here.
"""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

__all__ = ["cpu_seconds", "wait_http"]

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
