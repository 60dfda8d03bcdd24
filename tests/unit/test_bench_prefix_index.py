"""``bench/bench_prefix_index.py``: each piece does the work its column is named after."""

from __future__ import annotations

import pytest

from infergate.requestcontrol.parsing import ParsedBody
from tests.support import load_bench_script


@pytest.mark.parametrize("holders", [1, 4])
def test_each_piece_works_on_the_whole_prompt_held_by_the_given_servers(holders: int) -> None:
    bench = load_bench_script("bench_prefix_index")
    run = bench.pieces(4_000, holders)
    blocks = 4_000 // bench.BLOCK_CHARS
    assert len(run["hash"]()) == blocks
    assert run["match"]() == {f"s{i}": blocks for i in range(holders)}  # every block on every holder
    parsed = run["parse"]()
    assert isinstance(parsed, ParsedBody) and len(parsed.prompt) == 4_000
    run["credit-held"]()
    assert run["match"]() == {f"s{i}": blocks for i in range(holders)}  # crediting again changes nothing
    assert run["credit-new"]() is None


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--chars", "0"], "--chars"),
        (["--holders", "1,0"], "--holders"),
        (["--holders", "two"], "--holders"),
        (["--only", "matc"], "--only"),
        (["--only", "match", "--calls", "0"], "--calls"),
        (["--calls", "5"], "--calls"),  # without --only it would change nothing
        (["--memory", "--chars", "4000"], "--memory"),  # --memory fills a whole index
        (["--memory", "--only", "match"], "--only"),
    ],
)
def test_options_it_cannot_honour_are_errors_naming_them(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_bench_script("bench_prefix_index")
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(argv)
    assert exit_.value.code == 2 and named in capsys.readouterr().err


def test_defaults_and_a_valid_choice_parse() -> None:
    bench = load_bench_script("bench_prefix_index")
    args = bench.parse_args([])
    assert (args.chars, args.holders, args.calls, args.only, args.memory) == (
        16_000,
        [1, 4, 16],
        200,
        None,
        False,
    )
    args = bench.parse_args(["--only", "credit-new", "--calls", "3", "--holders", "4"])
    assert (args.only, args.calls, args.holders) == ("credit-new", 3, [4])
