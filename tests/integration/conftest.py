"""The integration level's contract, enforced: servers run in this process, on loopback; no child
processes (those tests belong in tests/e2e)."""

from __future__ import annotations

import subprocess

import pytest


def _refuse(self: object, *args: object, **kwargs: object) -> None:
    raise AssertionError("an integration test started a child process: move it to tests/e2e")


@pytest.fixture(autouse=True)
def _no_child_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse)
