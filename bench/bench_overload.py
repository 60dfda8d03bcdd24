"""Overload benchmark: the simulated tutorial pool at 5x its capacity, with and without flow control.

Starts three ``infergate simulate`` replicas with the tutorial's vLLM flags (``--enable-lora
--max-loras 2 --max-cpu-loras 12`` plus the tutorial adapters as ``--lora-modules``) and
``--time-scale`` (the simulated GPU is slowed so that a 2-core machine can drive it past capacity
honestly; every latency the pool produces is multiplied by the same factor, so SLO bounds are
scaled by it too). In front of them runs ``infergate serve`` (its own process) with the tutorial's
objectives ``llama3-base-model`` (priority 20), ``food-review`` (10) and a generated sheddable
``cad-fabricator`` (-1).

1. Capacity: a closed loop of ``--capacity-concurrency`` streams straight to the replicas
   (round-robin) for ``--capacity-seconds``; capacity = completed requests per second.
2. Overload: an open loop (Poisson) at ``--factor`` x capacity for ``--duration`` seconds, split by
   ``--mix`` over the three priorities, once with flow control and once with ``--no-flow-control``
   (fresh replicas and gateway each time). Every request must end within ``--deadline`` seconds,
   otherwise it is counted as hung.

Per priority it reports p50/p90 TTFT of completed requests, completion rate, 429 count and p90
latency of the 429s, 503s, other errors, hung requests; and the gateway's RSS (``/proc``) at start
and end. Prints a Markdown table (and ``--json`` writes the raw figures).

    .venv/bin/python bench/bench_overload.py [--duration 60] [--time-scale 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from infergate.app.fleet import free_port
from infergate.bench.procs import exit_on_sigterm
from infergate.config.settings import Settings

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
ADAPTERS = {"food-review": "Kawon/llama3.1-food-finetune_v14_r8", "cad-fabricator": "redcathode/fabricator"}
# class name -> (objective, model, priority)
CLASSES: dict[str, tuple[str, str, int]] = {
    "p20": ("llama3-base-model", MODEL, 20),
    "p10": ("food-review", "food-review", 10),
    "shed": ("cad-fabricator", "cad-fabricator", -1),
}
TUTORIAL_FLAGS = ["--model", MODEL, "--tensor-parallel-size", "1", "--enable-lora", "--max-loras", "2"]
TUTORIAL_FLAGS += ["--max-cpu-loras", "12", "--lora-modules", *[f"{k}={v}" for k, v in ADAPTERS.items()]]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return 200 <= int(r.status) < 300
    except OSError:
        return False


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not http_ok(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} never became ready (exit {proc.poll()})")
        time.sleep(0.1)


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pool_manifest(ports: list[int]) -> str:
    eps = "\n".join(
        f"  - {{name: vllm-{i}, address: '127.0.0.1:{p}', labels: {{app: vllm}}}}"
        for i, p in enumerate(ports)
    )
    objectives = "".join(
        f"---\napiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceObjective\n"
        f"metadata: {{name: {obj}}}\nspec: {{priority: {prio}, poolRef: {{name: pool}}}}\n"
        for obj, _, prio in CLASSES.values()
    )
    return (
        "apiVersion: inference.networking.k8s.io/v1\nkind: InferencePool\nmetadata: {name: pool}\n"
        "spec:\n  selector: {matchLabels: {app: vllm}}\n  targetPorts: [{number: 8000}]\n"
        "  endpointPickerRef: {name: epp, port: {number: 9002}}\n---\n"
        "apiVersion: infergate.dev/v1alpha1\nkind: EndpointList\nmetadata: {name: sims}\n"
        f"spec:\n  poolName: pool\n  endpoints:\n{eps}\n{objectives}"
    )


class Pool:
    """Three simulator replicas (and optionally the gateway) as child processes."""

    def __init__(self, workdir: Path, time_scale: float, replicas: int) -> None:
        self.workdir, self.time_scale, self.replicas = workdir, time_scale, replicas
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        self.gateway: subprocess.Popen[bytes] | None = None
        self.gw_port = 0
        self.admin_port = 0

    def _spawn(self, args: list[str], log: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with (self.workdir / log).open("wb") as out:
            cmd = [sys.executable, "-m", "infergate", *args]
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        return proc

    def start_replicas(self) -> None:
        for i in range(self.replicas):
            port = free_port()
            args = ["simulate", *TUTORIAL_FLAGS, "--host", "127.0.0.1", "--port", str(port), "--seed", str(i)]
            args += ["--time-scale", str(self.time_scale), "--uvicorn-log-level", "warning"]
            self.ports.append(port)
            proc = self._spawn(args, f"sim-{i}-{port}.log")
            wait_http(f"http://127.0.0.1:{port}/health", proc)

    def start_gateway(self, flow_control: bool) -> None:
        (self.workdir / "pool.yaml").write_text(pool_manifest(self.ports))
        self.gw_port, self.admin_port = free_port(), free_port()
        args = [
            "serve",
            "-f",
            str(self.workdir / "pool.yaml"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.gw_port),
        ]
        args += ["--admin-port", str(self.admin_port), "--log-level", "warning"]
        args.append("--flow-control" if flow_control else "--no-flow-control")
        # flow_control.frontend_wait is a time the pool's latencies are measured against: scaled
        # with them, like the SLO bound (the other time settings are about the gateway's own
        # freshness and stay as they are)
        wait = Settings().flow_control.frontend_wait
        env = dict(os.environ)
        if wait is not None:
            env["INFERGATE_FLOW_CONTROL__FRONTEND_WAIT"] = str(wait * self.time_scale)
        self.gateway = self._spawn(args, f"gateway-{'fc' if flow_control else 'nofc'}.log", env)
        wait_http(f"http://127.0.0.1:{self.admin_port}/readyz", self.gateway)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs.clear()


def body(model: str, max_tokens: int, rng: random.Random) -> dict[str, Any]:
    words = " ".join(rng.choice(("food", "review", "city", "design", "chair", "wine")) for _ in range(60))
    return {
        "model": model,
        "prompt": f"{rng.random():.6f} {words}",
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }


@dataclass
class ClassResult:
    sent: int = 0
    ttft: list[float] = field(default_factory=list)  # completed requests
    completed: int = 0
    r429: list[float] = field(default_factory=list)
    r503: int = 0
    other: dict[str, int] = field(default_factory=dict)
    hung: int = 0


async def one(
    session: aiohttp.ClientSession,
    url: str,
    cls: str,
    res: ClassResult,
    payload: dict[str, Any],
    deadline: float,
) -> None:
    objective = CLASSES[cls][0]
    res.sent += 1
    start = time.monotonic()
    try:
        async with asyncio.timeout(deadline):
            async with session.post(
                url, json=payload, headers={"x-gateway-inference-objective": objective}
            ) as r:
                if r.status != 200:
                    await r.read()
                    if r.status == 429:
                        res.r429.append(time.monotonic() - start)
                    elif r.status == 503:
                        res.r503 += 1
                    else:
                        res.other[str(r.status)] = res.other.get(str(r.status), 0) + 1
                    return
                first: float | None = None
                text = b""
                async for chunk in r.content.iter_any():
                    if first is None:
                        first = time.monotonic() - start
                    text = (text + chunk)[-64:]
                if first is not None and b"[DONE]" in text:
                    res.ttft.append(first)
                    res.completed += 1
                else:
                    res.other["broken"] = res.other.get("broken", 0) + 1
    except TimeoutError:
        res.hung += 1
    except aiohttp.ClientError as e:
        name = f"{type(e).__name__}: {e}"[:60]
        res.other[name] = res.other.get(name, 0) + 1


async def measure_capacity(ports: list[int], concurrency: int, seconds: float, max_tokens: int) -> float:
    """Closed loop straight to the replicas: completed requests per second in the second half
    (the first half fills every batch and queue; it must be longer than one request takes)."""
    rng = random.Random(0)
    done: list[float] = []
    stop_at = time.monotonic() + seconds
    warm = time.monotonic() + seconds / 2
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None)) as s:

        async def worker(i: int) -> None:
            url = f"http://127.0.0.1:{ports[i % len(ports)]}/v1/completions"
            while time.monotonic() < stop_at:
                async with s.post(url, json=body(MODEL, max_tokens, rng)) as r:
                    await r.read()
                done.append(time.monotonic())

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    counted = [t for t in done if warm <= t <= stop_at]
    return len(counted) / (stop_at - warm)


async def drive(
    gw_url: str,
    rates: dict[str, float],
    duration: float,
    max_tokens: int,
    deadline: float,
    seed: int,
    observer: Any = None,
) -> dict[str, ClassResult]:
    results = {c: ClassResult() for c in CLASSES}
    stop = asyncio.Event()
    watcher = asyncio.create_task(observer(stop)) if observer is not None else None
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None)) as s:
        tasks: list[asyncio.Task[None]] = []

        async def arrivals(cls: str, rate: float, rng: random.Random) -> None:
            t0 = time.monotonic()
            t = 0.0
            while True:
                t += rng.expovariate(rate)
                if t >= duration:
                    return
                await asyncio.sleep(max(0.0, t0 + t - time.monotonic()))
                payload = body(CLASSES[cls][1], max_tokens, rng)
                tasks.append(asyncio.create_task(one(s, gw_url, cls, results[cls], payload, deadline)))

        await asyncio.gather(
            *(arrivals(c, r, random.Random(seed + i)) for i, (c, r) in enumerate(rates.items()))
        )
        await asyncio.gather(*tasks)
    stop.set()
    if watcher is not None:
        await watcher
    return results


def _gauges(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """Sum of each named gauge over its label sets, from Prometheus text (no parser: cheap)."""
    out = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            value = float(line.rsplit(" ", 1)[1])
            out[name] += value
            if 'priority="' in line:  # also per priority: name:PRIORITY
                prio = line.split('priority="', 1)[1].split('"', 1)[0]
                out[f"{name}:{prio}"] = out.get(f"{name}:{prio}", 0.0) + value
    return out


async def observe(
    sim_ports: list[int], admin_port: int, period: float, stop: asyncio.Event, samples: list[dict[str, Any]]
) -> None:
    """Sample every replica's queue/batch/KV and the gateway's flow-control gauges until ``stop``."""
    sim_names = ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc")
    gw_names = (
        "inference_extension_flow_control_queue_size",
        "inference_extension_flow_control_pool_saturation",
    )
    t0 = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
        while not stop.is_set():
            row: dict[str, Any] = {"t": round(time.monotonic() - t0, 1)}
            for i, port in enumerate(sim_ports):
                try:
                    async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                        g = _gauges(await r.text(), sim_names)
                    row[f"r{i}"] = (
                        int(g["vllm:num_requests_waiting"]),
                        int(g["vllm:num_requests_running"]),
                        round(g["vllm:kv_cache_usage_perc"], 2),
                    )
                except (aiohttp.ClientError, TimeoutError):
                    row[f"r{i}"] = None
            try:
                async with s.get(f"http://127.0.0.1:{admin_port}/metrics") as r:
                    g = _gauges(await r.text(), gw_names)
                row["queued"] = {
                    k.rsplit(":", 1)[1]: int(v)
                    for k, v in g.items()
                    if k.startswith("inference_extension_flow_control_queue_size:")
                }
                row["sat"] = round(g["inference_extension_flow_control_pool_saturation"], 2)
            except (aiohttp.ClientError, TimeoutError):
                pass
            samples.append(row)
            print(f"observe {json.dumps(row)}", file=sys.stderr)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def run_mode(args: argparse.Namespace, flow_control: bool, capacity: float | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ig-overload-") as tmp:
        pool = Pool(Path(tmp), args.time_scale, args.replicas)
        try:
            pool.start_replicas()
            if capacity is None:
                capacity = asyncio.run(
                    measure_capacity(
                        pool.ports, args.capacity_concurrency, args.capacity_seconds, args.max_tokens
                    )
                )
                print(f"capacity: {capacity:.1f} req/s", file=sys.stderr)
            pool.start_gateway(flow_control)
            assert pool.gateway is not None
            time.sleep(1.0)  # let the scraper see every replica once
            rss_start = rss_mb(pool.gateway.pid)
            shares = dict(zip(CLASSES, (float(x) for x in args.mix.split(",")), strict=True))
            total = args.factor * capacity
            rates = {c: total * sh / sum(shares.values()) for c, sh in shares.items()}
            url = f"http://127.0.0.1:{pool.gw_port}/v1/completions"
            t0 = time.monotonic()
            samples: list[dict[str, Any]] = []
            observer = None
            if args.observe > 0:
                ports, admin, period = pool.ports, pool.admin_port, args.observe

                def observer(stop: asyncio.Event) -> Any:
                    return observe(ports, admin, period, stop, samples)

            res = asyncio.run(
                drive(url, rates, args.duration, args.max_tokens, args.deadline, args.seed, observer)
            )
            wall = time.monotonic() - t0
            rss_end = rss_mb(pool.gateway.pid)
        finally:
            pool.stop()
    return {
        "flow_control": flow_control,
        "capacity": capacity,
        "rates": rates,
        "wall": wall,
        "rss_start_mb": rss_start,
        "rss_end_mb": rss_end,
        "classes": {c: vars(r) for c, r in res.items()},
        "samples": samples,
    }


def table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| flow control | class (priority) | offered req/s | sent | p50 TTFT s | p90 TTFT s | completed | "
        "429 | p90 429 latency s | 503 | other | hung |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for cls, r in run["classes"].items():
            rate = run["rates"][cls]
            sent = r["sent"] or 1
            other = sum(r["other"].values())
            mode = "on" if run["flow_control"] else "off"
            lines.append(
                f"| {mode} | {CLASSES[cls][0]} ({CLASSES[cls][2]}) | {rate:.1f} | "
                f"{r['sent']} | {pct(r['ttft'], 0.5):.2f} | {pct(r['ttft'], 0.9):.2f} | "
                f"{r['completed']} ({100 * r['completed'] / sent:.0f} %) | {len(r['r429'])} | "
                f"{pct(r['r429'], 0.9):.3f} | {r['r503']} | {other} | {r['hung']} |"
            )
    lines.append("")
    for run in runs:
        mode = "on" if run["flow_control"] else "off"
        lines.append(
            f"- flow control {mode}: gateway RSS {run['rss_start_mb']:.0f} MiB at start, "
            f"{run['rss_end_mb']:.0f} MiB at end; run took {run['wall']:.0f} s"
        )
    return "\n".join(lines)


def main() -> None:
    exit_on_sigterm()  # SIGTERM unwinds the finally blocks that stop what this script starts
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of overload per mode")
    ap.add_argument("--factor", type=float, default=5.0, help="offered load / measured capacity")
    ap.add_argument("--mix", default="0.12,0.18,0.70", help="shares of p20,p10,sheddable in the offered load")
    ap.add_argument("--time-scale", type=float, default=40.0, help="simulator --time-scale (slower GPU)")
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--capacity", type=float, help="skip the measurement, use this req/s")
    ap.add_argument("--capacity-concurrency", type=int, default=900)
    ap.add_argument("--capacity-seconds", type=float, default=80.0)
    ap.add_argument("--deadline", type=float, default=120.0, help="a request still open after this is hung")
    ap.add_argument("--modes", default="on,off", help="flow control on, off or both")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--observe",
        type=float,
        default=0.0,
        help="every this many seconds, print the replicas' waiting/running/KV and the gateway's "
        "queued count and saturation to stderr (0: off)",
    )
    ap.add_argument("--capacity-only", action="store_true", help="measure the capacity and stop")
    args = ap.parse_args()
    if args.capacity_only:
        with tempfile.TemporaryDirectory(prefix="ig-overload-") as tmp:
            pool = Pool(Path(tmp), args.time_scale, args.replicas)
            try:
                pool.start_replicas()
                cap = asyncio.run(
                    measure_capacity(
                        pool.ports, args.capacity_concurrency, args.capacity_seconds, args.max_tokens
                    )
                )
            finally:
                pool.stop()
        print(f"capacity {cap:.1f} req/s (time-scale {args.time_scale}, max_tokens {args.max_tokens})")
        return
    capacity: float | None = args.capacity
    runs = []
    for mode in args.modes.split(","):
        run = run_mode(args, mode == "on", capacity)
        capacity = run["capacity"]
        runs.append(run)
        print(f"mode {mode} done", file=sys.stderr)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(
        f"capacity {capacity:.1f} req/s; offered {args.factor}x for {args.duration:.0f} s; "
        f"time-scale {args.time_scale}"
    )
    print(table(runs))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
