"""docs/configuration.md's settings reference is the model's, and ``--print-settings`` tells where
each effective value came from, for every command that runs a gateway."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from infergate.cli import app
from infergate.config.layers import field_paths
from infergate.config.settings_doc import render_reference

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_doc_holds_the_generated_reference() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert render_reference() in doc, "stale: run .venv/bin/python scripts/gen_settings_doc.py"
    for path in field_paths():
        assert f"| `{path}` |" in doc


def _printed(args: list[str], env: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    result = CliRunner().invoke(app, [*args, "--print-settings"], env=env)
    assert result.exit_code == 0, result.output
    rows = {}
    for line in result.output.splitlines():
        left, _, source = line.rpartition("#")
        path, _, value = left.partition("=")
        rows[path.strip()] = (value.strip(), source.strip())
    return rows


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["serve", "-f", "pool.yaml", "--max-messages", "64"], {"limits.max_messages": ("64", "flag")}),
        (
            ["up", "--port", "8088"],
            {"listeners.port": ("8088", "flag"), "listeners.host": ("127.0.0.1", "default")},
        ),
        (
            ["epp", "--pool-name", "p", "--refresh-metrics-interval", "10ms"],
            {"scrape.interval": ("0.01", "flag"), "auth.metrics_auth": ("kubernetes", "default")},
        ),
        (["epp", "-f", "pool.yaml", "--no-secure-serving"], {"listeners.secure_serving": ("False", "flag")}),
    ],
)
def test_print_settings_shows_values_and_sources(
    args: list[str], expected: dict[str, tuple[str, str]]
) -> None:
    rows = _printed(args, env={"INFERGATE_SCRAPE__TIMEOUT": "2"})
    assert set(rows) == set(field_paths())
    assert rows["scrape.timeout"] == ("2.0", "env")
    for path, want in expected.items():
        assert rows[path] == want


def test_settings_file_layer(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("proxy:\n  retries: 3\nlimits:\n  max_messages: 9\n")
    rows = _printed(["serve", "-f", "x.yaml", "--settings", str(path), "--max-messages", "10"])
    assert rows["proxy.retries"] == ("3", "file")
    assert rows["limits.max_messages"] == ("10", "flag")


def test_a_bad_setting_stops_the_command(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "-f", "x.yaml", "--grace", "-1"])
    assert result.exit_code == 2
    assert "proxy.shutdown_grace (flag)" in result.output
