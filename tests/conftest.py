from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SEED_DIR = REPO / "src" / "infergate" / "manifests" / "tutorial"


@pytest.fixture
def repo_root() -> Path:
    return REPO
