"""``infergate simulate``: parse vLLM-style flags, run one :class:`SimServer` until SIGTERM/SIGINT.

Shutdown is graceful like vLLM's: stop accepting, close connections (aborting in-flight engine
requests), stop the engine driver, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from infergate.simulator.args import SimulatorArgs, parse_args

log = logging.getLogger("infergate.simulator")


async def serve(args: SimulatorArgs) -> None:
    """Run the server until a termination signal arrives."""
    from infergate.simulator.server import SimServer

    server = SimServer(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    cfg = server.config
    stats = server.engine.stats()
    log.info(
        "infergate simulator serving %s (profile %s, %d KV blocks of %d tokens, max_num_seqs %d, "
        "max_num_batched_tokens %d, LoRA %s) on http://%s:%d",
        ", ".join(args.served_model_names),
        cfg.profile,
        stats.num_gpu_blocks,
        stats.block_size,
        cfg.max_num_seqs,
        cfg.max_num_batched_tokens,
        f"on (max_loras {cfg.max_loras})" if cfg.enable_lora else "off",
        args.host,
        server.port,
    )
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.stop()


def _run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point used by ``infergate simulate``; returns the process exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    level = getattr(logging, args.log_level.upper(), logging.INFO)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        _run(serve(args))
    except ValueError as exc:  # bad engine configuration (unknown profile, impossible sizes)
        print(f"infergate simulate: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # port in use, bad address
        print(f"infergate simulate: error: {exc}", file=sys.stderr)
        return 1
    return 0
