"""Command line of the LoRA syncer sidecar: ``infergate lora-syncer --config FILE ...``.

This module owns argument parsing, logging setup and signal handling; the loop itself is
:class:`infergate.lora.syncer.LoraSyncer`. Flags keep the reference sidecar's spellings as aliases
(``--reconcile-trigger``, ``--health-check-timeout``, ``--health-check-interval``) and its
``DYNAMIC_LORA_ROLLOUT_CONFIG`` environment variable. Exit codes: 0 stopped by SIGTERM/SIGINT (or
``--once`` succeeded), 1 server never healthy or ``--once`` round failed, 2 bad arguments/config.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from infergate.lora.config import load_config
from infergate.lora.syncer import LoraSyncer
from infergate.subcommand import run_command

__all__ = ["command", "main"]

DEFAULT_CONFIG = "/config/configmap.yaml"


def _positive(value: float) -> float:
    if not value > 0:
        raise typer.BadParameter(f"must be > 0 (got {value:g})")
    return value


def command(
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            envvar="DYNAMIC_LORA_ROLLOUT_CONFIG",
            help="vLLMLoRAConfig YAML.",
        ),
    ] = Path(DEFAULT_CONFIG),
    host: Annotated[
        str | None, typer.Option("--host", help="Model server host (overrides vLLMLoRAConfig.host).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", min=1, max=65535, help="Model server port (overrides vLLMLoRAConfig.port)."),
    ] = None,
    interval: Annotated[
        float,
        typer.Option(
            "--interval",
            "--reconcile-trigger",
            callback=_positive,
            help="Seconds between periodic reconciles.",
        ),
    ] = 5.0,
    health_path: Annotated[
        str, typer.Option("--health-path", help="Health path polled before starting.")
    ] = "/health",
    health_timeout: Annotated[
        float,
        typer.Option(
            "--health-timeout",
            "--health-check-timeout",
            callback=_positive,
            help="Give up (exit 1) if the server is not healthy after this many seconds.",
        ),
    ] = 300.0,
    health_interval: Annotated[
        float,
        typer.Option(
            "--health-interval",
            "--health-check-interval",
            callback=_positive,
            help="Seconds between health polls.",
        ),
    ] = 0.5,
    watch_interval: Annotated[
        float,
        typer.Option(
            "--watch-interval",
            callback=_positive,
            help="Seconds between checks of the config file for changes.",
        ),
    ] = 1.0,
    backoff: Annotated[
        float, typer.Option("--backoff", callback=_positive, help="First retry delay after a failure.")
    ] = 0.5,
    backoff_max: Annotated[
        float, typer.Option("--backoff-max", callback=_positive, help="Retry delay cap.")
    ] = 30.0,
    once: Annotated[
        bool, typer.Option("--once", help="Reconcile once and exit (1 if anything failed).")
    ] = False,
    log_level: Annotated[
        str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.", case_sensitive=False)
    ] = "INFO",
) -> int:
    """Keep a model server's LoRA adapters in line with a vLLMLoRAConfig file: load ensureExist,
    unload ensureNotExist, re-check periodically and whenever the file changes."""
    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter(
            f"must be DEBUG, INFO, WARNING or ERROR (got {log_level})", param_hint="--log-level"
        )
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s lora-syncer: %(message)s",
        stream=sys.stderr,
    )
    try:
        loaded = load_config(config)
    except ValueError as exc:
        print(f"lora-syncer: {exc}", file=sys.stderr)
        return 2
    syncer = LoraSyncer(
        config,
        host=host,
        port=port,
        interval=interval,
        health_path=health_path,
        health_timeout=health_timeout,
        health_interval=health_interval,
        watch_interval=watch_interval,
        backoff=backoff,
        backoff_max=backoff_max,
    )
    syncer.config = loaded
    return asyncio.run(_run_once(syncer) if once else _run_forever(syncer))


async def _run_once(syncer: LoraSyncer) -> int:
    try:
        if not await syncer.wait_healthy():
            logging.getLogger("infergate.lora").error("model server %s not healthy", syncer.base_url)
            return 1
        result = await syncer.reconcile()
        return 0 if result.ok else 1
    finally:
        await syncer.close()


async def _run_forever(syncer: LoraSyncer) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await syncer.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def main(argv: list[str]) -> int:
    """Entry point used by ``infergate lora-syncer`` and ``python -m infergate.lora``.

    Exit codes as the module says; a bad flag is one ``error:`` line (exit 2), like every
    ``infergate`` command.
    """
    return run_command(command, argv, "infergate lora-syncer")
