"""``infergate --version`` prints the installed package's version and exits 0 without a command."""

from __future__ import annotations

import importlib.metadata

from typer.testing import CliRunner

from infergate.cli import app


def test_version_is_the_installed_package_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"infergate {importlib.metadata.version('infergate')}"
