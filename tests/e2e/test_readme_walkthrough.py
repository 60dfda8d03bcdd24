"""The README's quick start, followed literally, as a new user would from a fresh clone.

`make up` runs `infergate up` (the Makefile's recipe is checked, then run with the same executable);
the README's curl and SDK snippets run as written, with only the printed URL substituted when it is
not the default (the test chooses free ports so that it can run beside anything else); /metrics is
scraped with the printed curl line; Ctrl-C must leave no process and no copy of the token on disk.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import free_port, start_infergate, wait_for

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DEFAULT_URL = "http://127.0.0.1:8080"

pytestmark = pytest.mark.slow


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _quickstart() -> str:
    return README[README.index("## Quick start") : README.index("## Install")]


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc; the replicas run in their own sessions)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_makefile_up_runs_infergate_up() -> None:
    recipe = re.search(r"^up:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), flags=re.M)
    assert recipe is not None and recipe.group(1).split()[1:3] == ["up", "$(ARGS)"], recipe


@pytest.mark.timeout(400)
def test_readme_quick_start(tmp_path: Path) -> None:
    quick = _quickstart()
    assert "make up" in README.split("\n## ")[0], "the README starts with make up"
    curls = [b for b in _blocks("sh") if b in quick and "curl" in b]
    sdk = [b for b in _blocks("python") if b in quick]
    assert len(curls) == 1 and len(sdk) == 1, "one curl and one SDK snippet in the quick start"
    assert DEFAULT_URL in curls[0] and DEFAULT_URL in sdk[0]

    port, admin = free_port(), free_port()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    child = start_infergate(
        ["up", "--port", str(port), "--admin-port", str(admin)],
        tmp_path,
        health_url=f"http://127.0.0.1:{admin}/readyz",
        timeout=90,
        env={"TMPDIR": str(tmp)},
    )
    token = ""
    try:
        wait_for(lambda: "  try:" in child.output(), timeout=30, what="the ready banner")
        out = child.output()
        url = re.search(r"URL:\s+(http://\S+)", out)
        assert url is not None, out
        printed = url.group(1)
        assert printed == f"http://127.0.0.1:{port}"

        curl = curls[0].replace(DEFAULT_URL, printed).replace("\\\n", " ")
        done = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0 and "HTTP/1.1 200" in done.stdout, done.stdout + done.stderr
        assert '"model":"food-review"' in done.stdout.replace(" ", ""), done.stdout

        script = sdk[0].replace(DEFAULT_URL, printed)
        ran = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
        )
        assert ran.returncode == 0, ran.stderr
        usage = re.search(r"\[(\d+) prompt \+ (\d+) completion tokens\]", ran.stdout)
        assert usage is not None and int(usage.group(2)) > 0, ran.stdout

        metrics_line = re.search(r"metrics:\s+(curl .+)$", out, flags=re.M)
        found_token = re.search(r"metrics token: (\S+)", out)
        assert metrics_line is not None and found_token is not None, out
        token = found_token.group(1)
        scraped = subprocess.run(
            [*shlex.split(metrics_line.group(1)), "-sf"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert scraped.returncode == 0, scraped.stderr
        assert 'inference_objective_request_total{model_name="food-review"' in scraped.stdout
        assert "_created" not in scraped.stdout

        children = _descendants(child.proc.pid)
        assert len(children) >= 6, "three replicas and three LoRA syncers"
    finally:
        code = child.stop(signal.SIGINT, timeout=60)
    assert code == 0, child.output()
    assert "Traceback" not in child.output() and "WARNING" not in child.output(), child.output()
    leftover = [pid for pid in children if _running(pid)]
    assert not leftover, f"processes left running: {leftover}"
    assert token
    on_disk = [p for p in tmp.rglob("*") if p.is_file() and token in p.read_text(errors="replace")]
    assert not on_disk and not list(tmp.glob("infergate-up-*")), os.listdir(tmp)
