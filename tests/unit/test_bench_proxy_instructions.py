"""``bench/bench_proxy_hotpath.py --instructions``: how it runs callgrind, reads its totals and
turns two runs into instructions per request; and the slowed clock it gives the gateway.

valgrind itself is replaced by a stand-in that writes a callgrind output file, so the tests see
the command line the script builds and the file format it parses, not a 70-second run.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support import load_bench_script


@pytest.fixture(scope="module")
def hotpath() -> ModuleType:
    return load_bench_script("bench_proxy_hotpath")


class FakeValgrind:
    """Writes ``totals: <base + 1000 × requests>`` where callgrind would write its profile."""

    def __init__(self, per_request: int, *, base: int = 5_000_000, totals: bool = True) -> None:
        self.per_request, self.base, self.totals = per_request, base, totals
        self.commands: list[list[str]] = []

    def __call__(self, cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        self.commands.append(cmd)
        out = Path(next(a for a in cmd if a.startswith("--callgrind-out-file=")).partition("=")[2])
        requests = int(cmd[cmd.index("--requests") + 1])
        text = "events: Ir\nsummary: 1\n"
        if self.totals:
            text += f"totals: {self.base + self.per_request * requests}\n"
        out.write_text(text)
        return subprocess.CompletedProcess(cmd, 0)


def _args(**kw: Any) -> argparse.Namespace:
    defaults: dict[str, Any] = {
        "requests": 300,
        "concurrency": 32,
        "gc": "serving",
        "slowdown": None,
        "only": None,
        "prompt_chars": 0,
    }
    return argparse.Namespace(**{**defaults, **kw})


def test_instructions_per_request_are_the_difference_of_n_and_3n_over_2n(
    hotpath: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeValgrind(per_request=1234)
    monkeypatch.setattr(hotpath.subprocess, "run", fake)
    hotpath.count_instructions(_args(only="proxy"))
    out = capsys.readouterr().out
    assert "proxy: 1,234 instructions per request" in out
    assert sorted(int(c[c.index("--requests") + 1]) for c in fake.commands) == [300, 900]
    for cmd in fake.commands:
        assert cmd[:2] == ["valgrind", "--tool=callgrind"]
        assert cmd[cmd.index("--only") + 1] == "proxy"
        assert cmd[cmd.index("--slowdown") + 1] == "50.0"  # the gateway's clock slowed as the code is
        assert cmd[cmd.index("--reps") + 1] == "1"


def test_the_proxys_own_count_subtracts_the_direct_path(
    hotpath: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes = {"proxy": FakeValgrind(per_request=800_000), "direct": FakeValgrind(per_request=30_000)}

    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        return fakes[cmd[cmd.index("--only") + 1]](cmd, **kwargs)

    monkeypatch.setattr(hotpath.subprocess, "run", run)
    hotpath.count_instructions(_args())
    assert "the proxy's own: 770,000 instructions per request" in capsys.readouterr().out


def test_a_run_without_a_totals_line_is_an_error_naming_the_run(
    hotpath: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hotpath.subprocess, "run", FakeValgrind(per_request=1, totals=False))
    with pytest.raises(SystemExit, match="no totals line"):
        hotpath.callgrind_total(["--requests", "10"])


def test_the_slow_clock_runs_slowdown_times_slower(
    hotpath: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    wall = [1000.0]
    monkeypatch.setattr(hotpath.time, "monotonic", lambda: wall[0])
    clock = hotpath.SlowClock(50.0)
    assert clock.now() == 1000.0
    wall[0] += 5.0  # five wall seconds are a tenth of a second to the gateway
    assert clock.now() == pytest.approx(1000.1)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--requests", "0"], "--requests"),
        (["--requests", "many"], "--requests"),
        (["--reps", "0"], "--reps"),
        (["--warmup", "-1"], "--warmup"),
        (["--concurrency", "0"], "--concurrency"),
        (["--prompt-chars", "-5"], "--prompt-chars"),
        (["--slowdown", "0.5"], "--slowdown"),
        (["--slowdown", "nan"], "--slowdown"),
        (["--instructions", "--reps", "2"], "--reps"),
        (["--instructions", "--warmup", "10", "--profile", "x.prof"], "--warmup, --profile"),
    ],
)
def test_bad_options_are_errors_that_name_them(
    hotpath: ModuleType, argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        hotpath.parse_args(argv)
    assert exit_.value.code == 2
    assert named in capsys.readouterr().err


def test_defaults_differ_between_the_two_modes(hotpath: ModuleType) -> None:
    timed = hotpath.parse_args([])
    assert (timed.requests, timed.reps, timed.warmup, timed.slowdown) == (20000, 3, 1000, 1.0)
    counted = hotpath.parse_args(["--instructions"])
    assert counted.requests == 400 and counted.slowdown is None  # count_instructions slows it 50 times


def test_the_prompt_is_as_long_as_asked(hotpath: ModuleType) -> None:
    assert hotpath.prompt_text(0) == "Say hello."
    assert len(hotpath.prompt_text(4000)) == 4000
    assert hotpath.prompt_text(4000) == hotpath.prompt_text(4000)  # the same every request
