"""Plugin contracts mypy checks: registering a plugin whose method does not match its extension
point is a type error, and a matching one is not (one mypy run over two small modules)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from mypy import api

GOOD = """
from collections.abc import Mapping, Sequence

from infergate.scheduling.sdk.framework import CycleState, NoParams, PluginRegistry
from infergate.types import Endpoint, InferenceRequest


class GoodScorer:
    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Mapping[str, float]:
        return {e.key: 1.0 for e in candidates}


def register(r: PluginRegistry) -> None:
    r.register_scorer("good", NoParams, lambda p, c: GoodScorer())
"""

BAD = """
from collections.abc import Sequence

from infergate.scheduling.sdk.framework import NoParams, PluginRegistry
from infergate.types import Endpoint, InferenceRequest


class WrongScorer:
    # returns one float instead of a score per endpoint, and forgets the cycle state
    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> float:
        return 1.0


class NotAPicker:
    def choose(self, candidates: Sequence[Endpoint]) -> Endpoint:
        return candidates[0]


def register(r: PluginRegistry) -> None:
    r.register_scorer("wrong", NoParams, lambda p, c: WrongScorer())
    r.register_picker("not-a-picker", NoParams, lambda p, c: NotAPicker())
"""


def test_mypy_rejects_a_plugin_that_does_not_match_its_extension_point(tmp_path: Path) -> None:
    (tmp_path / "good_plugin.py").write_text(textwrap.dedent(GOOD))
    (tmp_path / "bad_plugin.py").write_text(textwrap.dedent(BAD))
    out, err, status = api.run(
        [
            "--strict",
            "--follow-imports=silent",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            str(tmp_path / "good_plugin.py"),
            str(tmp_path / "bad_plugin.py"),
        ]
    )
    assert status == 1, out + err
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert errors and all("bad_plugin.py" in line for line in errors), out
    assert any('"register_scorer"' in line and "WrongScorer" in line for line in errors), out
    assert any('"register_picker"' in line and "NotAPicker" in line for line in errors), out
