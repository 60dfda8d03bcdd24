"""How much load one simulator process carries before its own timing drifts, and virtual-time speed.

Each level runs ``--repeat`` times (default 2) and the worst repetition counts, because the machine may be
shared with other work.

Wall clock: one ``infergate simulate`` child process; for a rising number C of concurrent streaming
completions (unique ~128-token prompts, ``max_tokens`` T, ``ignore_eos``) the client records when
each SSE token chunk arrives. The *expected* timing comes from running the very same requests
through the same engine on a virtual clock (``VirtualDriver``); drift = observed mean inter-token
latency / expected − 1 over tokens 20..T of every stream. The ramp stops at the first C whose drift
exceeds 5 %; the last C within 5 % and its token rate are the result.

Virtual time: N requests (Poisson arrivals, ~512-token prompts, 128 output tokens) through the
``VirtualDriver``; simulated requests and tokens per CPU-second of this process.

Run: ``.venv/bin/python bench/bench_simulator.py [--quick]``; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

from infergate.app.fleet import free_port
from infergate.bench.procs import exit_on_sigterm
from infergate.simulator.drivers import VirtualDriver, VirtualLoop, profile_frontend
from infergate.simulator.engine import Engine, EngineConfig, EngineRequest, RequestOutput
from infergate.tokenization.builtin import BOS_ID, Tokenizer

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
MAX_NUM_SEQS = 1024
SKIP = 20  # tokens ignored at the start of each stream (admission/prefill transient)
WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "sigma", "river")


def prompt_text(level: int, i: int, n_words: int = 120) -> str:
    rng = random.Random(level * 100_003 + i)
    return f"stream {level}-{i}: " + " ".join(rng.choice(WORDS) for _ in range(n_words))


def mean_itl(arrivals: list[list[float]]) -> float:
    gaps = [b - a for times in arrivals for a, b in zip(times[SKIP:], times[SKIP + 1 :], strict=False)]
    return statistics.fmean(gaps) if gaps else float("nan")


def expected_arrivals(prompts: list[list[int]], max_tokens: int) -> list[list[float]]:
    """Token times of the same requests on the virtual clock (all submitted at t=0)."""
    engine = Engine(EngineConfig(model=MODEL, max_num_seqs=MAX_NUM_SEQS))
    loop = VirtualLoop()
    driver = VirtualDriver(engine, loop, sparse=False, **profile_frontend(engine))
    times: list[list[float]] = [[] for _ in prompts]
    for i, ids in enumerate(prompts):

        def on_out(out: RequestOutput, i: int = i) -> None:
            if out.new_token_ids:
                times[i].append(loop.now())

        driver.submit(EngineRequest(f"v{i}", ids, max_tokens, ignore_eos=True), on_out)
    loop.run()
    return times


@dataclass
class Level:
    concurrency: int
    observed_itl_ms: float
    expected_itl_ms: float
    tokens_per_s: float
    errors: int
    server_cpu_us_per_token: float = float("nan")

    @property
    def drift(self) -> float:
        return self.observed_itl_ms / self.expected_itl_ms - 1.0


async def stream_tokens(host: str, port: int, body: bytes, out: list[float]) -> None:
    """One streaming request over a raw socket; appends the arrival time of every SSE token event.

    A plain asyncio stream and a byte count keep the client's own CPU cost per token far below the
    simulator's, so the measured drift is the simulator's (an HTTP client library parsing every line
    would saturate this 2-core machine first)."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    marker = b"data: {"
    tail = b""
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            now = loop.time()
            window = tail + data
            out.extend([now] * window.count(marker))
            tail = window[-(len(marker) - 1) :]
    finally:
        writer.close()


async def run_level(url: str, level: int, concurrency: int, max_tokens: int) -> Level:
    tok = Tokenizer()
    host, port = url.removeprefix("http://").rsplit(":", 1)
    texts = [prompt_text(level, i) for i in range(concurrency)]
    arrivals: list[list[float]] = [[] for _ in texts]
    loop = asyncio.get_running_loop()
    bodies = [
        json.dumps(
            {"model": MODEL, "prompt": t, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
        ).encode()
        for t in texts
    ]
    start = loop.time()
    results = await asyncio.gather(
        *(stream_tokens(host, int(port), b, arrivals[i]) for i, b in enumerate(bodies)),
        return_exceptions=True,
    )
    elapsed = loop.time() - start
    errors = sum(1 for r in results if isinstance(r, BaseException)) + sum(
        1 for a in arrivals if len(a) != max_tokens
    )
    total_tokens = sum(len(a) for a in arrivals)
    expected = expected_arrivals([[BOS_ID, *tok.encode(t)] for t in texts], max_tokens)
    return Level(
        concurrency, mean_itl(arrivals) * 1e3, mean_itl(expected) * 1e3, total_tokens / elapsed, errors
    )


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_simulator(port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "infergate", "simulate", "--model", MODEL, "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--max-num-seqs", str(MAX_NUM_SEQS), "--uvicorn-log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("simulator did not become healthy")


async def wall_clock(levels: list[int], max_tokens: int, repeat: int) -> list[Level]:
    port = free_port()
    proc = start_simulator(port)
    results: list[Level] = []
    try:
        for n, c in enumerate(levels):
            runs = []
            for k in range(repeat):
                cpu0 = process_cpu(proc.pid)
                lv = await run_level(f"http://127.0.0.1:{port}", n * repeat + k, c, max_tokens)
                lv.server_cpu_us_per_token = (process_cpu(proc.pid) - cpu0) / max(1, c * max_tokens) * 1e6
                runs.append(lv)
            lv = max(runs, key=lambda r: (r.errors, r.drift))  # the worst repetition counts
            results.append(lv)
            print(
                f"  C={c:5d} observed ITL {lv.observed_itl_ms:7.2f} ms, "
                f"expected {lv.expected_itl_ms:7.2f} ms, "
                f"drift {lv.drift * 100:+6.1f} %, {lv.tokens_per_s:8.0f} tok/s, "
                f"simulator CPU {lv.server_cpu_us_per_token:5.1f} us/token, errors {lv.errors}",
                file=sys.stderr,
            )
            if lv.drift > 0.05 or lv.errors:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    return results


def virtual_time(n_requests: int, rate: float) -> tuple[float, float, float, float]:
    """(requests/CPU-s, tokens/CPU-s, simulated seconds, CPU seconds)."""
    tok = Tokenizer()
    rng = random.Random(1)
    engine = Engine(EngineConfig(model=MODEL, max_num_seqs=MAX_NUM_SEQS))
    loop = VirtualLoop()
    driver = VirtualDriver(engine, loop, sparse=False, **profile_frontend(engine))
    prompts = [tok.encode(prompt_text(9999, i, 400)) for i in range(n_requests)]
    done = 0
    tokens = 0

    def on_out(out: RequestOutput) -> None:
        nonlocal done, tokens
        tokens += len(out.new_token_ids)
        if out.finished:
            done += 1

    cpu0 = time.process_time()
    t = 0.0
    for i, ids in enumerate(prompts):
        t += rng.expovariate(rate)
        req = EngineRequest(f"r{i}", ids, 128, ignore_eos=True)
        loop.call_at(t, functools.partial(driver.submit, req, on_out))
    loop.run()
    cpu = time.process_time() - cpu0
    assert done == n_requests
    return n_requests / cpu, tokens / cpu, loop.now(), cpu


def main() -> int:
    exit_on_sigterm()  # SIGTERM unwinds the finally blocks that stop what this script starts
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer levels and requests")
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=2, help="runs per level; the worst drift counts")
    ns = ap.parse_args()
    levels = [1, 16, 64, 128] if ns.quick else [1, 8, 32, 64, 80, 96, 112, 128, 192, 256, 384, 512]
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    print(f"wall clock (cpu count {os.cpu_count()}):", file=sys.stderr)
    results = asyncio.run(wall_clock(levels, ns.max_tokens, ns.repeat))
    ok = [r for r in results if r.drift <= 0.05 and not r.errors]
    n_virtual = 500 if ns.quick else 3000
    rps, tps, sim_s, cpu_s = virtual_time(n_virtual, rate=20.0)

    print(
        "| concurrent streams | observed ITL (ms) | expected ITL (ms) | drift | tokens/s | sim CPU µs/token |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.concurrency} | {r.observed_itl_ms:.2f} | {r.expected_itl_ms:.2f} | "
            f"{r.drift * 100:+.1f} % | {r.tokens_per_s:.0f} | {r.server_cpu_us_per_token:.1f} |"
        )
    print()
    print("| result | value |")
    print("|---|---:|")
    if ok:
        best = ok[-1]
        print(f"| max concurrent streams within 5 % drift | {best.concurrency} |")
        print(f"| tokens/s at that load | {best.tokens_per_s:.0f} |")
    else:
        print("| max concurrent streams within 5 % drift | none |")
    cpu_costs = [r.server_cpu_us_per_token for r in ok if r.concurrency >= 32]
    if cpu_costs:
        per_token = statistics.fmean(cpu_costs)
        print(f"| simulator CPU per streamed token (C ≥ 32) | {per_token:.1f} µs |")
        print(f"| tokens/s one dedicated core could stream at that cost | {1e6 / per_token:.0f} |")
    print(f"| virtual time: simulated requests per CPU-second | {rps:.0f} |")
    print(f"| virtual time: simulated tokens per CPU-second | {tps:.0f} |")
    print(
        f"| virtual time: {n_virtual} requests, simulated seconds / CPU seconds | {sim_s:.1f} / {cpu_s:.2f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
