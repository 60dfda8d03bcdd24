"""What the built-in proxy costs: added latency over direct, and its maximum request rate.

Two backends, each behind ``infergate serve`` (its own process, flow control on, default picker):

* ``echo``  tiny aiohttp servers that answer at once (vLLM-shaped ``/metrics``, ``/health``,
  ``/v1/models``), so only the gateway's cost shows;
* ``sim``   ``infergate simulate`` replicas (``max_tokens: 1``; model step time included both ways).

For each backend and concurrency (closed loop, ``--duration`` seconds each) it measures the same
short non-streaming completion sent directly (round-robin over the replicas) and through the
gateway, and prints p50/p99 latency, the difference ("added") and requests per second. The load
generator, gateway and backends share this machine's cores, so req/s is a floor, not a ceiling.

    .venv/bin/python bench/bench_proxy.py [--duration 5] [--backend echo sim] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from infergate.app.fleet import free_port
from infergate.bench.procs import exit_on_sigterm

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
BODY = json.dumps({"model": MODEL, "prompt": "Say hello.", "max_tokens": 1}).encode()
ANSWER = json.dumps(
    {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "text": " hi", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
).encode()
METRICS = (
    f'vllm:num_requests_waiting{{model_name="{MODEL}"}} 0\n'
    f'vllm:num_requests_running{{model_name="{MODEL}"}} 0\n'
    f'vllm:kv_cache_usage_perc{{model_name="{MODEL}"}} 0.0\n'
).encode()
MODELS = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()


def _echo_server(port: int) -> None:
    import uvloop

    async def completions(_: web.Request) -> web.Response:
        return web.Response(body=ANSWER, content_type="application/json")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=METRICS, content_type="text/plain")

    async def models(_: web.Request) -> web.Response:
        return web.Response(body=MODELS, content_type="application/json")

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout}s")


class Backends:
    """Upstream replicas plus one ``infergate serve`` in front of them."""

    def __init__(self, kind: str, replicas: int) -> None:
        self.kind = kind
        self.ports = [free_port() for _ in range(replicas)]
        self.gw_port, self.admin_port = free_port(), free_port()
        self._procs: list[Any] = []
        self._tmp = Path(tempfile.mkdtemp(prefix="bench-proxy-"))

    def __enter__(self) -> Backends:
        for p in self.ports:
            proc: Any
            if self.kind == "echo":
                proc = mp.get_context("spawn").Process(target=_echo_server, args=(p,), daemon=True)
                proc.start()
            else:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "infergate", "simulate", "--host", "127.0.0.1", "--port", str(p)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            self._procs.append(proc)
        for p in self.ports:
            _wait_http(f"http://127.0.0.1:{p}/health")
        manifest = self._tmp / "pool.yaml"
        manifest.write_text(
            yaml.safe_dump_all(
                [
                    {
                        "apiVersion": "inference.networking.k8s.io/v1",
                        "kind": "InferencePool",
                        "metadata": {"name": "bench"},
                        "spec": {
                            "selector": {"matchLabels": {"app": "bench"}},
                            "targetPorts": [{"number": 8000}],
                            "endpointPickerRef": {"name": "epp", "port": {"number": 9002}},
                        },
                    },
                    {
                        "apiVersion": "infergate.dev/v1alpha1",
                        "kind": "EndpointList",
                        "metadata": {"name": "bench"},
                        "spec": {
                            "poolName": "bench",
                            "endpoints": [
                                {"address": f"127.0.0.1:{p}", "labels": {"app": "bench"}} for p in self.ports
                            ],
                        },
                    },
                ]
            )
        )
        gw = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "infergate",
                "serve",
                "-f",
                str(manifest),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.gw_port),
                "--admin-port",
                str(self.admin_port),
                "--log-level",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self._tmp / "gateway.log", "wb"),
        )
        self._procs.append(gw)
        _wait_http(f"http://127.0.0.1:{self.admin_port}/readyz")
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self._procs):
            if isinstance(proc, subprocess.Popen):
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            else:
                proc.terminate()
                proc.join(5)


async def closed_loop(urls: list[str], concurrency: int, duration: float) -> dict[str, float]:
    """``concurrency`` clients posting BODY back to back for ``duration`` s (after a short warm-up)."""
    lat: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        stop_at = 0.0
        record = False

        async def client(i: int) -> None:
            nonlocal errors
            n = i
            while time.perf_counter() < stop_at:
                url = urls[n % len(urls)]
                n += 1
                t0 = time.perf_counter()
                async with session.post(url, data=BODY, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    ok = r.status == 200
                if record:
                    if ok:
                        lat.append(time.perf_counter() - t0)
                    else:
                        errors += 1

        stop_at = time.perf_counter() + 0.5  # warm-up: connections, caches
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        record = True
        start = time.perf_counter()
        stop_at = start + duration
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
    lat.sort()
    if not lat:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "rps": 0.0, "errors": float(errors)}
    return {
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "rps": len(lat) / elapsed,
        "errors": float(errors),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for kind in args.backend:
        with Backends(kind, args.replicas) as b:
            direct = [f"http://127.0.0.1:{p}/v1/completions" for p in b.ports]
            via = [f"http://127.0.0.1:{b.gw_port}/v1/completions"]
            for c in args.concurrency:
                d = await closed_loop(direct, c, args.duration)
                g = await closed_loop(via, c, args.duration)
                row = {
                    "direct": d,
                    "gateway": g,
                    "added_p50_ms": g["p50_ms"] - d["p50_ms"],
                    "added_p99_ms": g["p99_ms"] - d["p99_ms"],
                }
                results[f"{kind}/c{c}"] = row
                print(
                    f"{kind:4s} c={c:<3d} direct p50 {d['p50_ms']:7.2f} ms p99 {d['p99_ms']:7.2f} ms "
                    f"{d['rps']:7.0f} req/s | gateway p50 {g['p50_ms']:7.2f} ms p99 {g['p99_ms']:7.2f} ms "
                    f"{g['rps']:7.0f} req/s | added p50 {row['added_p50_ms']:+.2f} ms "
                    f"p99 {row['added_p99_ms']:+.2f} ms | errors {int(g['errors'])}",
                    flush=True,
                )
            m = await closed_loop(via, args.max_concurrency, args.duration)
            results[f"{kind}/max"] = m
            print(
                f"{kind:4s} max req/s through the gateway at c={args.max_concurrency}: {m['rps']:.0f} "
                f"(p50 {m['p50_ms']:.2f} ms, p99 {m['p99_ms']:.2f} ms, errors {int(m['errors'])})",
                flush=True,
            )
    return results


def main() -> None:
    exit_on_sigterm()  # SIGTERM unwinds the finally blocks that stop what this script starts
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    p.add_argument("--max-concurrency", type=int, default=64)
    p.add_argument("--backend", nargs="+", choices=["echo", "sim"], default=["echo", "sim"])
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    import uvloop

    print(
        f"bench_proxy on {os.cpu_count()} CPU(s), {args.replicas} replicas, {args.duration}s per point",
        flush=True,
    )
    results = uvloop.run(run(args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
