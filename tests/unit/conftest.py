"""The unit level's contract, enforced: no network sockets and no child processes.

A unit test that needs either belongs in tests/integration (loopback, in-process servers) or
tests/e2e (child processes). Local socket pairs (the event loop's self-pipe) stay allowed.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

_NETWORK = (socket.AF_INET, socket.AF_INET6)


def _refuse(what: str) -> Any:
    def refuse(self: object, *args: object, **kwargs: object) -> Any:
        if isinstance(self, socket.socket) and self.family not in _NETWORK:
            return getattr(socket.socket, f"_unit_{what}")(self, *args, **kwargs)
        raise AssertionError(
            f"a unit test used {what}(): move it to tests/integration (sockets) or tests/e2e (processes)"
        )

    return refuse


@pytest.fixture(autouse=True)
def _no_network_no_processes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("bind", "connect", "connect_ex"):
        if not hasattr(socket.socket, f"_unit_{name}"):
            setattr(socket.socket, f"_unit_{name}", getattr(socket.socket, name))
        monkeypatch.setattr(socket.socket, name, _refuse(name))
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("subprocess.Popen"))
    yield
