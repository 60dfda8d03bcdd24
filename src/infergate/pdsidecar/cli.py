"""Command line of the P/D sidecar: ``infergate pd-sidecar --port 8000 --model-server-port 8200``.

Flags keep llm-d's sidecar spellings (``--port``, ``--model-server-port`` and its older alias
``--vllm-port``, ``--kv-connector``); only the ``nixlv2`` connector's protocol is implemented, any
other connector is an error rather than a silent fallback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from aiohttp import web

from infergate.pdsidecar.proxy import SidecarOptions, build_app

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infergate pd-sidecar",
        description="Sidecar in front of a decode model server: runs the prefill on the endpoint named "
        "by x-prefiller-host-port, then the decode locally with the KV transfer parameters, streaming.",
    )
    p.add_argument("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8000, help="listen port (default 8000)")
    p.add_argument(
        "--model-server-port",
        "--vllm-port",
        dest="model_server_port",
        type=int,
        default=8200,
        help="the local decode server's port (default 8200)",
    )
    p.add_argument("--model-server-host", default="127.0.0.1", help="the decode server's address")
    p.add_argument(
        "--kv-connector", "--connector", default="nixlv2", help="KV connector protocol (only nixlv2)"
    )
    p.add_argument("--prefill-timeout", type=float, default=600.0, help="seconds for a prefill (default 600)")
    p.add_argument("--log-level", default="info")
    return p


async def _serve(args: argparse.Namespace) -> None:
    options = SidecarOptions(decoder_url=f"http://{args.model_server_host}:{args.model_server_port}")
    options.prefill_timeout = args.prefill_timeout
    runner = web.AppRunner(build_app(options), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    logging.getLogger(__name__).info(
        "pd-sidecar on %s:%d in front of %s", args.host, args.port, options.decoder_url
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.kv_connector != "nixlv2":
        parser.error(f"--kv-connector {args.kv_connector!r}: only nixlv2 is implemented")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_serve(args))
    return 0
