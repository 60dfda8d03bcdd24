"""The integration level's contract, enforced: servers run in this process, on loopback; no child
processes (those tests belong in tests/e2e).

Tools the product itself runs as a helper (``openssl`` makes the ext_proc picker's self-signed pair
when the ``cryptography`` package is absent) are part of the code under test and stay allowed.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest

PRODUCT_HELPERS = frozenset({"openssl"})
_popen_init = subprocess.Popen.__init__


def _guarded(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
    argv0 = args if isinstance(args, str | bytes | os.PathLike) else next(iter(args), "")
    if os.path.basename(os.fsdecode(argv0)).split()[0] not in PRODUCT_HELPERS:
        raise AssertionError(f"an integration test started a child process ({argv0!r}): move it to tests/e2e")
    _popen_init(self, args, *rest, **kwargs)


@pytest.fixture(autouse=True)
def _no_child_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess.Popen, "__init__", _guarded)
