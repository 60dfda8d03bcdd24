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
