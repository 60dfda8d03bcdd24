"""``bench/bench_dataplane.py`` end to end: a replica, the built-in proxy and the load generator.

The judged data-plane command (issue #18) is otherwise tested only through its report; here it
runs a tiny point against real processes, with one-token answers and with streamed ones (eight
events each, relayed by the proxy), and must count every request, charge the router some CPU,
and leave nothing in the temporary directory it ran with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("answers", [[], ["--max-tokens", "8", "--stream"]], ids=["one-token", "streamed"])
def test_a_tiny_run_measures_each_path_and_removes_its_folder(tmp_path: Path, answers: list[str]) -> None:
    out = tmp_path / "points.json"
    runs = tmp_path / "tmp"
    runs.mkdir()
    argv = [sys.executable, str(ROOT / "bench" / "bench_dataplane.py"), "--paths", "direct,infergate"]
    argv += ["--requests", "20", "--concurrency", "2", "--reps", "1", "--idle-seconds", "0"]
    done = subprocess.run(
        [*argv, *answers, "--json", str(out)],
        env={**os.environ, "TMPDIR": str(runs)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    points = {p["path"]: p for p in json.loads(out.read_text())["points"]}
    assert set(points) == {"direct", "infergate"}
    for point in points.values():
        assert point["ok"] == 20 and point["errors"] == 0, point
    assert points["infergate"]["cpu_us_per_req"] > 0
    assert list(runs.iterdir()) == []  # the routers' logs and the pool manifest went with the run
