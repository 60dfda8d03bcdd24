"""The ``infergate`` command line: a thin translation from flags to the programmatic entry points.

Commands that must accept a foreign tool's flags verbatim (``simulate`` takes vLLM's) hand their
arguments to the owning package's own parser, which also answers ``--help``.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="infergate",
    help="An inference gateway for fleets of OpenAI-compatible LLM servers.",
    no_args_is_help=True,
    add_completion=False,
)

_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(
    "simulate",
    context_settings=_PASSTHROUGH,
    add_help_option=False,
    help="Run a vLLM-compatible simulated model server (accepts vLLM's flags; see --help).",
)
def simulate(ctx: typer.Context) -> None:
    from infergate.simulator.cli import main as simulate_main

    raise typer.Exit(simulate_main(list(ctx.args)))


@app.command(
    "lora-syncer",
    context_settings=_PASSTHROUGH,
    add_help_option=False,
    help="Keep LoRA adapters loaded on a model server from a vLLMLoRAConfig file (see --help).",
)
def lora_syncer(ctx: typer.Context) -> None:
    from infergate.lora.cli import main as lora_main

    raise typer.Exit(lora_main(list(ctx.args)))


def main() -> None:
    """Console-script entry point."""
    app(prog_name="infergate")


if __name__ == "__main__":  # pragma: no cover
    main()
