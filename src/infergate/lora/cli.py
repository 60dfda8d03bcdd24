"""Command line of the LoRA syncer sidecar: ``infergate lora-syncer --config FILE ...``.

This module owns argument parsing, logging setup and signal handling; the loop itself is
:class:`infergate.lora.syncer.LoraSyncer`. Flags keep the reference sidecar's spellings as aliases
(``--reconcile-trigger``, ``--health-check-timeout``, ``--health-check-interval``) and its
``DYNAMIC_LORA_ROLLOUT_CONFIG`` environment variable. Exit codes: 0 stopped by SIGTERM/SIGINT (or
``--once`` succeeded), 1 server never healthy or ``--once`` round failed, 2 bad arguments/config.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from infergate.lora.config import load_config
from infergate.lora.syncer import LoraSyncer

__all__ = ["build_parser", "main"]

DEFAULT_CONFIG = "/config/configmap.yaml"


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {text})")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infergate lora-syncer",
        description="Keep a model server's LoRA adapters in line with a vLLMLoRAConfig file: load "
        "ensureExist, unload ensureNotExist, re-check periodically and whenever the file changes.",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("DYNAMIC_LORA_ROLLOUT_CONFIG", DEFAULT_CONFIG)),
        help="vLLMLoRAConfig YAML (default: $DYNAMIC_LORA_ROLLOUT_CONFIG or %(default)s)",
    )
    p.add_argument("--host", help="model server host (overrides vLLMLoRAConfig.host)")
    p.add_argument("--port", type=int, help="model server port (overrides vLLMLoRAConfig.port)")
    p.add_argument(
        "--interval",
        "--reconcile-trigger",
        dest="interval",
        type=_positive,
        default=5.0,
        help="seconds between periodic reconciles (default %(default)s)",
    )
    p.add_argument(
        "--health-path", default="/health", help="health path polled before starting (default %(default)s)"
    )
    p.add_argument(
        "--health-timeout",
        "--health-check-timeout",
        dest="health_timeout",
        type=_positive,
        default=300.0,
        help="give up (exit 1) if the server is not healthy after this many seconds (default %(default)s)",
    )
    p.add_argument(
        "--health-interval",
        "--health-check-interval",
        dest="health_interval",
        type=_positive,
        default=0.5,
        help="seconds between health polls (default %(default)s)",
    )
    p.add_argument(
        "--watch-interval",
        type=_positive,
        default=1.0,
        help="seconds between checks of the config file for changes (default %(default)s)",
    )
    p.add_argument(
        "--backoff",
        type=_positive,
        default=0.5,
        help="first retry delay after a failure (default %(default)s)",
    )
    p.add_argument(
        "--backoff-max", type=_positive, default=30.0, help="retry delay cap (default %(default)s)"
    )
    p.add_argument("--once", action="store_true", help="reconcile once and exit (1 if anything failed)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


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
    """Entry point used by ``infergate lora-syncer`` and ``python -m infergate.lora``."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on errors (2)
        return int(exc.code) if isinstance(exc.code, int) else 2
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s lora-syncer: %(message)s",
        stream=sys.stderr,
    )
    if args.port is not None and not 1 <= args.port <= 65535:
        print(f"lora-syncer: --port: must be 1..65535 (got {args.port})", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
    except ValueError as exc:
        print(f"lora-syncer: {exc}", file=sys.stderr)
        return 2
    syncer = LoraSyncer(
        args.config,
        host=args.host,
        port=args.port,
        interval=args.interval,
        health_path=args.health_path,
        health_timeout=args.health_timeout,
        health_interval=args.health_interval,
        watch_interval=args.watch_interval,
        backoff=args.backoff,
        backoff_max=args.backoff_max,
    )
    syncer.config = config
    return asyncio.run(_run_once(syncer) if args.once else _run_forever(syncer))
