"""The built-in proxy's own CPU per request, in one process: client, proxy and model server share a loop.

``bench_dataplane.py`` measures the proxy as a separate process beside the load generator and a
simulated replica; on a shared 2-core VM its figures move by tens of per cent from one repetition
to the next, which hides any change below that. Here everything runs on one uvloop loop: a
minimal keep-alive HTTP/1.1 client (``--concurrency`` connections, one request at a time on
each), the proxy as ``infergate serve`` wires it (``build_core`` with the default settings: flow
control, the decision log and metrics included) and a minimal model server that answers every
completion with the same small JSON body (``usage`` included). Real sockets on 127.0.0.1 carry
every byte, so the proxy's reads and writes are counted. CPU is this process's over
``--requests`` requests (user and system, ``os.times``); the least of ``--reps`` is the figure to
compare. ``direct`` is the same client against the model server alone: what the harness costs,
to subtract. After the warm-up the garbage collector is tuned as a serving gateway tunes it
(``tune_gc_for_serving``; ``--gc default`` keeps Python's defaults), and the collections that
the proxy's repetitions trigger are counted and timed.

CPU seconds on a shared VM move by 10-20 % between repetitions, more than most single changes
to the request path are worth. ``--instructions`` counts instructions instead, which do not
depend on what else the machine does: it runs this script under valgrind's callgrind four
times (proxy and direct, each with ``N`` and ``3N`` requests) and reports the difference per
request, so start-up and warm-up cancel out. Callgrind runs code about 50 times slower, while
the gateway judges a server by its completions per second and the age of its metrics: at a
fiftieth of the speed the replica would look slow and its metrics stale, and flow control would
queue requests the gateway at full speed admits at once. Those runs give the gateway a clock
that runs 50 times slower than the wall clock and scrape 50 times less often (``--slowdown``),
so it sees the rates and ages it sees at full speed and takes the same path. Instructions are
not CPU time (system calls and cache misses are not in them), but a change that removes
instructions from the request path removes its CPU. Two runs of the same code agree within
about 1 %.

    .venv/bin/python bench/bench_proxy_hotpath.py [--requests 20000] [--reps 3] [--concurrency 32]
        [--gc serving|default] [--profile out.prof]
    .venv/bin/python bench/bench_proxy_hotpath.py --instructions [--requests 400] [--only proxy]
        [--prompt-chars N]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvloop
from prometheus_client import CollectorRegistry

from infergate.app.core import build_core
from infergate.app.process import tune_gc_for_serving
from infergate.bench.workloads import filler_text
from infergate.config.picker import default_picker_config
from infergate.config.settings import Settings
from infergate.dataplanes.builtin.proxy import ProxyOptions, ProxyServer
from infergate.datastore.store import Datastore
from infergate.telemetry import GatewayMetrics
from infergate.types import EndpointMeta, EndpointMetrics, PoolSpec

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ANSWER = json.dumps(
    {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": MODEL,
        "choices": [{"index": 0, "text": "Hi", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
).encode()
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(ANSWER)).encode()
    + b"\r\n\r\n"
    + ANSWER
)


QUEUE_SERIES = "inference_extension_flow_control_request_queue_duration_seconds"


class Collections:
    """Garbage collections while ``counting``: how many per generation and the seconds they took."""

    def __init__(self) -> None:
        self.counting = False
        self.count = [0, 0, 0]
        self.seconds = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if not self.counting:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.count[info["generation"]] += 1
            self.seconds += time.perf_counter() - self._started


def queued_share(registry: CollectorRegistry) -> float:
    """Per cent of the requests flow control dispatched after more than 0.1 ms in its queue (as
    ``bench_dataplane.queue_counts`` reads it; bench scripts do not import one another)."""
    total = fast = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.labels.get("outcome") != "Dispatched":
                continue
            if sample.name == f"{QUEUE_SERIES}_count":
                total += sample.value
            elif sample.name == f"{QUEUE_SERIES}_bucket" and float(sample.labels["le"]) == 0.0001:
                fast += sample.value
    return 100 * (total - fast) / total if total else 0.0


def _content_length(head: bytes) -> int:
    """``content-length`` of a lower-cased head (0 without one)."""
    at = head.find(b"content-length:")
    if at < 0:
        return 0
    end = head.find(b"\r\n", at)
    return int(head[at + 15 : end if end >= 0 else None])


class SlowClock:
    """Monotonic time running ``slowdown`` times slower than the wall clock (see ``--slowdown``)."""

    def __init__(self, slowdown: float) -> None:
        self.slowdown = slowdown
        self.start = time.monotonic()

    def now(self) -> float:
        return self.start + (time.monotonic() - self.start) / self.slowdown


class ModelServer(asyncio.Protocol):
    """Answers each request (head and ``content-length`` body) with :data:`RESPONSE`."""

    answered = 0
    """Requests answered by every connection: the finished-requests counter its scrapes report."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = _content_length(self.buf[:end].lower())
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            assert self.transport is not None
            self.transport.write(RESPONSE)
            ModelServer.answered += 1


class Client(asyncio.Protocol):
    """One keep-alive connection sending ``request`` each time the previous answer is complete."""

    def __init__(self, request: bytes, count: int, done: asyncio.Future[None]) -> None:
        self.request, self.left, self.done = request, count, done
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].lower()
        assert head.startswith(b"http/1.1 200"), head
        length = _content_length(head)
        if len(self.buf) < end + 4 + length:
            return
        self.buf = self.buf[end + 4 + length :]
        self.left -= 1
        if self.left > 0:
            self.send()
        elif not self.done.done():
            self.done.set_result(None)


def prompt_text(chars: int) -> str:
    """``Say hello.`` by default; with ``--prompt-chars N``, N characters of English-like text
    (the same every request, so every prefix block after the first request is a hit)."""
    return filler_text(chars) if chars > 0 else "Say hello."


def completion(port: int, prompt: str = "Say hello.") -> bytes:
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 1}).encode()
    return (
        f"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


async def closed_loop(
    port: int, concurrency: int, requests: int, prompt: str = "Say hello."
) -> tuple[float, float]:
    """User and system CPU seconds of this process while ``concurrency`` connections send
    ``requests`` in all."""
    loop = asyncio.get_running_loop()
    request = completion(port, prompt)
    clients = []
    for i in range(concurrency):
        done: asyncio.Future[None] = loop.create_future()
        count = requests // concurrency + (1 if i < requests % concurrency else 0)
        factory = functools.partial(Client, request, count, done)
        _, client = await loop.create_connection(factory, "127.0.0.1", port)
        clients.append(client)
    t0 = os.times()
    for c in clients:
        c.send()
    await asyncio.gather(*(c.done for c in clients))
    t1 = os.times()
    spent = (t1.user - t0.user, t1.system - t0.system)
    for c in clients:
        assert c.transport is not None
        c.transport.close()
    return spent


async def measure(args: argparse.Namespace, collections: Collections) -> dict[str, list[tuple[float, float]]]:
    loop = asyncio.get_running_loop()
    upstream = await loop.create_server(ModelServer, "127.0.0.1", 0)
    up_port = int(upstream.sockets[0].getsockname()[1])
    ds = Datastore(SlowClock(args.slowdown))
    ds.upsert_endpoint(EndpointMeta(name="e", address="127.0.0.1", port=up_port))
    ds.set_models(f"127.0.0.1:{up_port}", frozenset({MODEL}))
    settings = Settings()
    metrics = GatewayMetrics(CollectorRegistry())
    core = build_core(
        ds,
        PoolSpec(name="bench"),
        picker=default_picker_config(lora=False),
        settings=settings,
        metrics=metrics,
        clock=ds.clock,
        rng=random.Random(0),
        honor_subset_hint=False,
        connection_limit=settings.proxy.max_connections_per_endpoint,
    )
    proxy = ProxyServer(core.director, ds, ProxyOptions.from_settings(settings), metrics=metrics)
    await proxy.start("127.0.0.1", 0)

    async def scrapes() -> None:  # fresh metrics every 50 ms, as the scraper would bring them
        while True:
            ds.update_metrics(
                f"127.0.0.1:{up_port}",
                EndpointMetrics(updated_at=ds.clock.now(), finished_requests=float(ModelServer.answered)),
            )
            await asyncio.sleep(0.05 * args.slowdown)

    scraper = asyncio.create_task(scrapes())
    results: dict[str, list[tuple[float, float]]] = {"proxy": [], "direct": []}
    try:
        await closed_loop(proxy.port, args.concurrency, args.warmup, prompt_text(args.prompt_chars))
        if args.gc == "serving":
            tune_gc_for_serving()
        targets = (("proxy", proxy.port), ("direct", up_port))
        for _ in range(args.reps):
            for name, port in targets if args.only is None else [t for t in targets if t[0] == args.only]:
                collections.counting = name == "proxy"
                user, system = await closed_loop(
                    port, args.concurrency, args.requests, prompt_text(args.prompt_chars)
                )
                collections.counting = False
                results[name].append((1e6 * user / args.requests, 1e6 * system / args.requests))
        if args.profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
            await closed_loop(proxy.port, args.concurrency, args.requests, prompt_text(args.prompt_chars))
            prof.disable()
            prof.dump_stats(args.profile)
        print(f"flow control held {queued_share(metrics.registry):.1f} % of requests over 0.1 ms")
    finally:
        scraper.cancel()
        await proxy.stop()
        upstream.close()
    return results


TOTALS = re.compile(rb"^totals:\s+(\d+)", re.MULTILINE)


def callgrind_total(args: list[str]) -> int:
    """Instructions callgrind counted over this script run with ``args``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__, *args]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        found = TOTALS.search(out.read_bytes())
    if found is None:
        raise SystemExit(f"no totals line in callgrind's output for {args}")
    return int(found.group(1))


def count_instructions(args: argparse.Namespace) -> None:
    """Instructions per request through the proxy and directly, and the proxy's own (see the
    module docstring)."""
    n = args.requests
    common = ["--reps", "1", "--warmup", "400", "--concurrency", str(args.concurrency), "--gc", args.gc]
    common += ["--prompt-chars", str(args.prompt_chars)]
    common += ["--slowdown", str(args.slowdown if args.slowdown is not None else 50.0)]
    per: dict[str, float] = {}
    for name in ("proxy", "direct") if args.only is None else (args.only,):
        with ThreadPoolExecutor(2) as pool:  # callgrind runs on one core: both at once
            low, high = pool.map(
                callgrind_total, ([*common, "--only", name, "--requests", str(k)] for k in (n, 3 * n))
            )
        per[name] = (high - low) / (2 * n)
        print(f"{name}: {per[name]:,.0f} instructions per request ({low:,} with {n}, {high:,} with {3 * n})")
    if len(per) == 2:
        print(f"the proxy's own: {per['proxy'] - per['direct']:,.0f} instructions per request")


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number no smaller than ``minimum`` (argparse names the option)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


def slowdown_factor(text: str) -> float:
    """``--slowdown``: a finite number, 1 or more (the gateway's clock never runs faster)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
    if not (math.isfinite(value) and value >= 1.0):
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked: bad values and options ``--instructions`` would not honour are errors."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--requests",
        type=whole_number(1),
        default=None,
        help="per repetition (default 20000; 400 with --instructions)",
    )
    ap.add_argument(
        "--warmup",
        type=whole_number(0),
        default=None,
        help="requests through the proxy before measuring (1000)",
    )
    ap.add_argument("--reps", type=whole_number(1), default=None, help="repetitions (3)")
    ap.add_argument("--concurrency", type=whole_number(1), default=32)
    ap.add_argument(
        "--gc",
        choices=("serving", "default"),
        default="serving",
        help="the garbage collector as `infergate serve` tunes it once serving, or Python's defaults",
    )
    ap.add_argument("--profile", type=Path)
    ap.add_argument("--only", choices=("proxy", "direct"), help="measure one target only")
    ap.add_argument(
        "--prompt-chars", type=whole_number(0), default=0, help="prompt length (default: 'Say hello.')"
    )
    ap.add_argument(
        "--slowdown",
        type=slowdown_factor,
        default=None,
        help="the gateway's clock and scrapes this many times slower (1; 50 with --instructions)",
    )
    ap.add_argument("--instructions", action="store_true", help="count instructions under callgrind instead")
    args = ap.parse_args(argv)
    if args.instructions:
        # each callgrind run sets its own repetitions and warm-up, and profiles nothing
        given = [f"--{n}" for n in ("reps", "warmup", "profile") if getattr(args, n) is not None]
        if given:
            ap.error(f"--instructions sets the runs itself; {', '.join(given)} would be ignored")
        args.requests = args.requests if args.requests is not None else 400
        return args
    args.requests = args.requests if args.requests is not None else 20000
    args.reps = args.reps if args.reps is not None else 3
    args.warmup = args.warmup if args.warmup is not None else 1000
    args.slowdown = args.slowdown if args.slowdown is not None else 1.0
    return args


def main() -> None:
    args = parse_args()
    if args.instructions:
        count_instructions(args)
        return
    collections = Collections()
    gc.callbacks.append(collections)
    results = uvloop.run(measure(args, collections))

    def show(name: str, runs: list[tuple[float, float]]) -> float:
        figures = ", ".join(f"{u + k:.1f} ({u:.0f} user)" for u, k in runs)
        print(f"{name}: {figures} µs per request")
        return min(u + k for u, k in runs)

    if args.only is not None:
        show(args.only, results[args.only])
        return
    proxy = show("client + proxy + server", results["proxy"])
    direct = show("client + server (direct)", results["direct"])
    print(f"the proxy's own, least of each: {proxy - direct:.1f} µs per request")
    proxied = args.reps * args.requests
    young, middle, full = collections.count
    print(
        f"garbage collector ({args.gc}) during the proxy's repetitions: {young} young, {middle} middle "
        f"and {full} full collections, {1e6 * collections.seconds / proxied:.1f} µs per request"
    )


if __name__ == "__main__":
    main()
