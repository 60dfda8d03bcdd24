"""One typer command run as an ``infergate`` subcommand, with the error style of every command.

``infergate bench``, ``lora-syncer`` and ``pd-sidecar`` parse their own flags (they also run as
``python -m`` modules in containers). Whatever runs them, a bad flag must read the same: one
``error: <prog>: <message>`` line on stderr and exit code 2, not typer's boxed panel. This module
is a leaf (typer only), so the black-box packages may use it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import typer
import typer.main

__all__ = ["run_command"]


def run_command(
    command: Callable[..., Any],
    argv: Sequence[str],
    prog_name: str,
    *,
    epilog: str | None = None,
    markdown_help: bool = False,
) -> int:
    """Parse ``argv`` for ``command`` and run it; the exit code (0 after ``--help``, 2 for a bad
    flag, 130 on Ctrl-C, else what the command returned)."""
    app = (
        typer.Typer(add_completion=False, rich_markup_mode="markdown")
        if markdown_help
        else typer.Typer(add_completion=False)
    )
    app.command(epilog=epilog)(command)
    click_command = typer.main.get_command(app)
    try:
        code = click_command.main(args=list(argv), prog_name=prog_name, standalone_mode=False)
    except typer.TyperException as exc:  # typer's own parser errors (it vendors click)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"error: {prog_name}: {message}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except typer.Abort:
        return 130
    return code if isinstance(code, int) else 0
