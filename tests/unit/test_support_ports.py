"""The test suite's own port allocation: pytest-xdist workers never share a port."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import support


def ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


@pytest.mark.parametrize(("worker", "start"), [("gw0", 10_000), ("gw1", 11_000), ("gw7", 17_000)])
def test_each_worker_has_its_own_block_below_the_ephemeral_range(
    worker: str, start: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    block = support._port_block()
    if ephemeral_low() < start + 1_000:  # no room below the kernel's range: it chooses
        assert block is None
    else:
        assert block == range(start, start + 1_000)


def test_blocks_of_different_workers_do_not_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        blocks.append(support._port_block())
    if None in blocks:
        pytest.skip("the kernel's ephemeral range leaves no room for three blocks below it")
    seen: set[int] = set()
    for block in blocks:
        assert block is not None and not seen & set(block)
        seen |= set(block)
