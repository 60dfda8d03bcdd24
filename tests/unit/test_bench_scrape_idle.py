"""``bench/bench_scrape_idle.py``: options it cannot honour are errors naming them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import load_bench_script


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--seconds", "0"], "--seconds"),
        (["--warmup", "-1"], "--warmup"),
        (["--rounds", "0"], "--rounds"),
        (["--interval", "0"], "--interval"),
        (["--replicas", "0"], "--replicas"),
        (["--before-src", "/nonexistent"], "--before-src"),
    ],
)
def test_options_it_cannot_honour_are_errors_naming_them(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_bench_script("bench_scrape_idle")
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(argv)
    assert exit_.value.code == 2 and named in capsys.readouterr().err


def test_defaults_and_a_source_tree_parse(tmp_path: Path) -> None:
    bench = load_bench_script("bench_scrape_idle")
    args = bench.parse_args([])
    assert (args.seconds, args.warmup, args.rounds, args.interval, args.replicas, args.before_src) == (
        20.0,
        3.0,
        3,
        0.05,
        1,
        None,
    )
    (tmp_path / "infergate").mkdir()
    assert bench.parse_args(["--before-src", str(tmp_path)]).before_src == tmp_path


def test_cpu_seconds_is_what_the_kernel_says_this_process_spent() -> None:
    bench = load_bench_script("bench_scrape_idle")
    before = os.times()
    spent = bench.cpu_seconds(os.getpid())
    after = os.times()
    assert before.user + before.system - 0.02 <= spent <= after.user + after.system + 0.02
