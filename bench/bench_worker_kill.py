"""How many requests fail when a picker worker is killed (``--data-plane envoy --workers 2``).

One simulated replica, ``infergate serve --data-plane envoy --workers 2``, one client sending
completions back to back for ``--seconds``; after ``--kill-after`` seconds the first worker (from
``/debug/endpoints``) gets SIGKILL. Prints every failure with its time since the kill, the totals,
and the workers afterwards (the restarted one has a new pid and the same port).

    nice -n 10 .venv/bin/python bench/bench_worker_kill.py [--seconds 15] [--kill-after 3]
        [--src DIR]   # run infergate from another source tree (DIR/infergate), e.g. a before state
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from infergate.app.fleet import free_port
from infergate.bench.matrix import static_pool_manifests
from infergate.bench.procs import exit_on_sigterm

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
BODY = json.dumps({"model": MODEL, "prompt": "Say hello.", "max_tokens": 1}).encode()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as r:
        return int(r.status) == 200


def wait_until(probe: Any, what: str, limit: float = 120.0) -> None:
    """Poll ``probe()`` until true (startup only; the measured loop never polls)."""
    end = time.monotonic() + limit
    while True:
        try:
            if probe():
                return
        except OSError:
            pass
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


async def traffic(url: str, admin: str, seconds: float, kill_after: float) -> None:
    ok = failed = 0
    killed_at: float | None = None
    start = time.monotonic()
    async with aiohttp.ClientSession(headers={"content-type": "application/json"}) as session:
        while time.monotonic() - start < seconds:
            if killed_at is None and time.monotonic() - start > kill_after:
                victim = get_json(f"{admin}/debug/endpoints")["workers"][0]
                os.kill(victim["pid"], signal.SIGKILL)
                killed_at = time.monotonic()
                print(f"killed worker {victim['index']} (pid {victim['pid']}, port {victim['port']})")
            async with session.post(f"{url}/v1/completions", data=BODY) as r:
                await r.read()
                if r.status == 200:
                    ok += 1
                    continue
            failed += 1
            since = time.monotonic() - killed_at if killed_at is not None else float("nan")
            print(f"  {r.status} at {since:.2f} s after the kill")
    print(f"ok {ok}, failed {failed}")
    print("workers now:", get_json(f"{admin}/debug/endpoints")["workers"])


def main() -> None:
    exit_on_sigterm()  # SIGTERM unwinds the finally blocks that stop what this script starts
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--kill-after", type=float, default=3.0)
    ap.add_argument("--src", type=Path, help="import infergate from this source tree (DIR/infergate)")
    a = ap.parse_args()
    env = dict(os.environ)
    if a.src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(a.src), env.get("PYTHONPATH")]))
    tmp = Path(tempfile.mkdtemp(prefix="bench-worker-kill-"))
    replica, port, admin = free_port(), free_port(), free_port()
    pool = tmp / "pool.yaml"
    pool.write_text(static_pool_manifests("bench", {"replica": f"127.0.0.1:{replica}"}))
    py = [sys.executable, "-m", "infergate"]
    procs = [
        subprocess.Popen(
            [*py, "simulate", "--host", "127.0.0.1", "--port", str(replica)], env=env, start_new_session=True
        )
    ]
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{replica}/health"), "the replica")
        argv = [*py, "serve", "-f", str(pool), "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--admin-port", str(admin), "--data-plane", "envoy", "--workers", "2"]
        argv += ["--metrics-auth", "disabled", "--log-level", "warning"]
        procs.append(subprocess.Popen(argv, env=env, start_new_session=True))
        admin_url = f"http://127.0.0.1:{admin}"
        wait_until(lambda: len(get_json(f"{admin_url}/debug/endpoints")["workers"]) == 2, "two workers")
        time.sleep(5)  # let Envoy's first health checks pass (a settling window, not synchronisation)
        asyncio.run(traffic(f"http://127.0.0.1:{port}", admin_url, a.seconds, a.kill_after))
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)


if __name__ == "__main__":
    main()
