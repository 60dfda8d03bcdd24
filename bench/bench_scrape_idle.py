"""What idle endpoints cost the gateway: CPU per second spent scraping simulated replicas.

Starts ``--replicas`` simulated replicas (one by default) and, in turn, ``infergate serve`` over
them from this tree (and, with ``--before-src DIR``, from another source tree), with no traffic;
after ``--warmup`` seconds it reads the gateway's CPU time from /proc over ``--seconds`` seconds.
What remains is the metrics scrapes (every ``--interval`` seconds), health probes and model listings. Runs are
interleaved ``--rounds`` times, so a slow phase of the machine hits every tree alike. This is
the idle share that the side-by-side benchmark's "router CPU" includes and its "net of idle"
column leaves out.

    .venv/bin/python bench/bench_scrape_idle.py [--seconds 20] [--rounds 3] [--interval 0.05]
        [--replicas 1] [--before-src DIR]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from infergate.app.fleet import free_port
from infergate.bench.matrix import static_pool_manifests
from infergate.bench.procs import cpu_seconds, exit_on_sigterm, wait_http


def idle_cpu(manifest: Path, src: Path | None, args: argparse.Namespace, log: Path) -> float:
    """Milliseconds of gateway CPU per second while idle."""
    env = {**os.environ, "INFERGATE_SCRAPE__INTERVAL": str(args.interval)}
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))
    admin = free_port()
    argv = [sys.executable, "-m", "infergate", "serve", "-f", str(manifest), "--host", "127.0.0.1"]
    argv += ["--port", str(free_port()), "--admin-port", str(admin), "--log-level", "warning"]
    with open(log, "ab") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{admin}/readyz")
        time.sleep(args.warmup)
        before = cpu_seconds(proc.pid)
        time.sleep(args.seconds)
        return (cpu_seconds(proc.pid) - before) / float(args.seconds) * 1000.0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def whole(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked: a bad value is an error naming its option."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=positive, default=20.0, help="measured idle time per run")
    ap.add_argument("--warmup", type=positive, default=3.0, help="seconds after readiness, not measured")
    ap.add_argument("--rounds", type=whole, default=3, help="interleaved runs per tree")
    ap.add_argument("--interval", type=positive, default=0.05, help="scrape.interval in seconds")
    ap.add_argument("--replicas", type=whole, default=1, help="simulated replicas in the pool")
    ap.add_argument("--before-src", type=Path, help="also run infergate from this source tree")
    args = ap.parse_args(argv)
    if args.before_src is not None and not (args.before_src / "infergate").is_dir():
        ap.error(f"--before-src: {args.before_src} holds no infergate package")
    return args


def main() -> None:
    exit_on_sigterm()  # SIGTERM unwinds the finally blocks that stop what this script starts
    args = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-scrape-idle-"))
    replicas: list[subprocess.Popen[bytes]] = []
    try:
        ports = [free_port() for _ in range(args.replicas)]
        simulate = [sys.executable, "-m", "infergate", "simulate", "--host", "127.0.0.1"]
        with open(tmp / "replica.log", "wb") as err:
            for port in ports:
                argv = [*simulate, "--port", str(port)]
                replicas.append(
                    subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
                )
        for port in ports:
            wait_http(f"http://127.0.0.1:{port}/health")
        manifest = tmp / "pool.yaml"
        endpoints = {f"replica-{i}": f"127.0.0.1:{port}" for i, port in enumerate(ports)}
        manifest.write_text(static_pool_manifests("bench", endpoints))
        trees: list[tuple[str, Path | None]] = [("this tree", None)]
        if args.before_src is not None:
            trees.append((f"{args.before_src}", args.before_src))
        results: dict[str, list[float]] = {name: [] for name, _ in trees}
        for _ in range(args.rounds):
            for name, src in trees:
                results[name].append(idle_cpu(manifest, src, args, tmp / "gateway.log"))
        n = args.replicas
        print(
            f"idle gateway, {n} replica{'s' if n > 1 else ''}, scrape interval {args.interval:g} s, "
            f"{args.seconds:g} s per run:"
        )
        for name, values in results.items():
            per = "" if n == 1 else " (" + ", ".join(f"{v / n:.2f}" for v in values) + " per replica)"
            print(f"  {name}: " + ", ".join(f"{v:.1f}" for v in values) + f" ms CPU per second{per}")
    finally:
        for replica in replicas:
            replica.send_signal(signal.SIGINT)
        for replica in replicas:
            try:
                replica.wait(timeout=15)
            except subprocess.TimeoutExpired:
                replica.kill()
                replica.wait()


if __name__ == "__main__":
    main()
