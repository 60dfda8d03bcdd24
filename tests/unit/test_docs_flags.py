"""Every ``--flag`` the documentation gives an ``infergate`` command is a flag that command takes.

Commands are read from README.md and docs/*.md (code blocks and inline code, continuation lines
joined); flags after a bare ``--`` belong to the replicas (``up ... -- --profile ...``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
import typer.main

from infergate.bench.command import command as bench_command
from infergate.cli import app
from infergate.lora.cli import command as lora_command
from infergate.pdsidecar.cli import command as sidecar_command

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _options(command: Any) -> set[str]:
    names = {"--help"}
    for param in command.params:
        names |= set(getattr(param, "opts", ())) | set(getattr(param, "secondary_opts", ()))
    return names


def _own(function: Callable[..., Any]) -> set[str]:
    """Flags of a command that parses its own arguments (bench, lora-syncer, pd-sidecar)."""
    sub = typer.Typer()
    sub.command()(function)
    return _options(typer.main.get_command(sub))


def _flags_by_command() -> dict[str, set[str]]:
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    flags = {name: _options(cmd) for name, cmd in commands.items() if name in ("up", "serve", "epp")}
    flags["bench"] = _own(bench_command)
    flags["lora-syncer"] = _own(lora_command)
    flags["pd-sidecar"] = _own(sidecar_command)
    return flags


def test_documented_flags_exist() -> None:
    flags = _flags_by_command()
    used: list[tuple[str, str]] = []
    unknown: list[str] = []
    for doc in DOCS:
        text = doc.read_text().replace("\\\n", " ")
        for m in re.finditer(r"infergate (up|serve|epp|bench|lora-syncer|pd-sidecar)\b([^`\n|]*)", text):
            rest = re.split(r"\s--\s", m.group(2))[0]
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest):
                used.append((m.group(1), flag))
                if flag not in flags[m.group(1)]:
                    unknown.append(f"{doc.relative_to(ROOT)}: infergate {m.group(1)} {flag}")
    assert len(used) > 50, "the docs' commands were found"
    assert not unknown, unknown
