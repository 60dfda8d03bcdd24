"""Fixtures of the e2e level: pools of real simulator processes, always stopped."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.support import Simulator, start_simulator

StartSims = Callable[..., list[Simulator]]


@pytest.fixture
def start_sims(tmp_path: Path) -> Iterator[StartSims]:
    """``start_sims(args0, args1, ...)`` starts one ``infergate simulate`` per argument list and
    returns them in order; every simulator it started is stopped when the test ends, also when a
    later one failed to start or the test failed half-way."""
    started: list[Simulator] = []

    def start(*per_replica: Sequence[str]) -> list[Simulator]:
        sims = []
        for args in per_replica:
            sim = start_simulator(tmp_path, *args)
            started.append(sim)
            sims.append(sim)
        return sims

    yield start
    for sim in started:
        sim.child.stop()
