"""Command line of the P/D sidecar: ``infergate pd-sidecar --port 8000 --model-server-port 8200``.

Flags keep llm-d's sidecar spellings (``--port``, ``--model-server-port`` and its older alias
``--vllm-port``, ``--kv-connector``); only the ``nixlv2`` connector's protocol is implemented, any
other connector is an error rather than a silent fallback.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Annotated

import typer
from aiohttp import web

from infergate.pdsidecar.proxy import SidecarOptions, build_app
from infergate.subcommand import run_command

__all__ = ["command", "main"]

_LOG_LEVELS = ("debug", "info", "warning", "error")


def _positive(value: float) -> float:
    if not value > 0:
        raise typer.BadParameter(f"must be > 0 (got {value:g})")
    return value


def command(
    host: Annotated[str, typer.Option("--host", help="Listen address.")] = "0.0.0.0",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Listen port.")] = 8000,
    model_server_port: Annotated[
        int,
        typer.Option(
            "--model-server-port", "--vllm-port", min=1, max=65535, help="The local decode server's port."
        ),
    ] = 8200,
    model_server_host: Annotated[
        str, typer.Option("--model-server-host", help="The decode server's address.")
    ] = "127.0.0.1",
    kv_connector: Annotated[
        str, typer.Option("--kv-connector", "--connector", help="KV connector protocol (only nixlv2).")
    ] = "nixlv2",
    prefill_timeout: Annotated[
        float, typer.Option("--prefill-timeout", callback=_positive, help="Seconds allowed for a prefill.")
    ] = 600.0,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
) -> int:
    """Sidecar in front of a decode model server: runs the prefill on the endpoint named by
    x-prefiller-host-port, then the decode locally with the KV transfer parameters, streaming."""
    if kv_connector != "nixlv2":
        raise typer.BadParameter(f"{kv_connector!r}: only nixlv2 is implemented", param_hint="--kv-connector")
    if log_level.lower() not in _LOG_LEVELS:
        raise typer.BadParameter(
            f"{log_level!r} is not one of {', '.join(_LOG_LEVELS)}", param_hint="--log-level"
        )
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = SidecarOptions(decoder_url=f"http://{model_server_host}:{model_server_port}")
    options.prefill_timeout = prefill_timeout
    asyncio.run(_serve(options, host, port))
    return 0


async def _serve(options: SidecarOptions, host: str, port: int) -> None:
    runner = web.AppRunner(build_app(options), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    logging.getLogger(__name__).info("pd-sidecar on %s:%d in front of %s", host, port, options.decoder_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str]) -> int:
    """``infergate pd-sidecar ARGS`` and ``python -m infergate.pdsidecar``: a bad flag is one
    ``error:`` line (exit 2), like every ``infergate`` command."""
    return run_command(command, argv, "infergate pd-sidecar")
