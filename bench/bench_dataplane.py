"""What each data plane costs per request, side by side with the peer routers, in one run.

One ``infergate simulate`` replica sits behind every router at once; the load generator sends the
same tiny non-streaming completion (``max_tokens: 1``; ``--prompt-chars N``: a prompt of N
characters instead of ``Say hello.``) through each path, closed loop, at each concurrency,
``--requests`` per point, repeated ``--reps`` times with the paths interleaved (a slow minute on a
shared machine then hits every path alike):

* ``direct``              client → replica
* ``infergate``           client → ``infergate serve`` (built-in proxy, flow control on)
* ``infergate-nofc``      the same with ``--no-flow-control``
* ``infergate-envoy``     client → ``infergate serve --data-plane envoy`` (Envoy + ext_proc picker)
* ``floor``               client → infergate's HTTP/1.1 server + its upstream pool, nothing else
                          (no Director, scheduling, flow control or metrics): what the Python HTTP
                          layers the built-in proxy stands on cost alone (not in the default set)
* ``floor-aiohttp``       the same with aiohttp's low-level server, which the built-in proxy used
                          before (not in the default set)
* ``sglang-router:cache_aware``, ``vllm-router:cache_aware``  when installed
  (``bash bench/install_peers.sh``; found through ``INFERGATE_PEER_VENVS`` or ``--peer-venv``)

Per point: requests per second, p50/p99 latency, errors, and the router's CPU per request: user +
system time of the router process and all its descendants (Envoy is the picker's child), read
from /proc before and after the point, divided by the requests served; and the same net of the
router's idle CPU rate (scrapes, probes; measured for ``--idle-seconds`` before the point) over
the point's duration, which a slow, loaded run otherwise charges to its few requests. For the
infergate paths also the share of requests flow control held for more than 0.1 ms (its
queue-duration histogram on the admin port's /metrics). For ``direct`` the CPU column is the
replica's own, which every path's requests cost on top of the router's. For the Envoy path the
CPU is also split by process: Envoy's, and the picker's (the gateway's Python processes). CPU per
request is the honest capacity figure on a machine the load generator and the replica share.

``--max-tokens N`` asks for answers of N tokens (with ``ignore_eos``) and ``--stream`` streams them:
one server-sent event per token, each relayed by every router, which a one-token answer never
exercises.

``--rate R`` offers every path R requests a second (still at most ``--concurrency`` in flight)
instead of the closed loop: a router that carries more requests a second spends less CPU on each
(each wakeup handles more of them), so at a rate every path sustains the CPU per request compares
like with like.

Last, each infergate path's repetitions at c=32 (else the highest concurrency) are judged against
issue #18's targets: the built-in proxy's rate at least 0.9x and its CPU per request at most 1.5x
sglang-router's in the same repetition, the Envoy path at least 1,048 req/s (twice the issue's).

    .venv/bin/python bench/bench_dataplane.py [--requests 3000] [--concurrency 8,32] [--reps 3]
        [--paths direct,infergate,...] [--workers 1,2] [--gateway-args "..."] [--json out.json]
        [--before-src DIR] [--replica-args "--time-scale 0.02"] [--rate R] [--prompt-chars N]
        [--max-tokens N] [--stream]

``--workers 1,2`` runs every ``infergate*`` path once per worker count (``proxy.workers``: for
``infergate-envoy`` N picker processes behind the one Envoy), named ``<path> ×N`` for N > 1; the
CPU figures then cover the gateway process and all its workers (and Envoy).

``--before-src DIR`` runs every ``infergate*`` path a second time from another copy of the
package (``DIR`` holds an ``infergate/`` tree, e.g. ``git archive <commit> src | tar -x``), named
``<path>@before`` and interleaved with the rest: a before/after comparison in one run.

``--gateway-python LABEL=PY`` (repeatable) runs every ``infergate*`` path a second time on another
Python interpreter ``PY`` (a virtualenv's ``bin/python`` holding infergate's dependencies; the
package itself is imported from this tree), named ``<path>@LABEL``. Everything else (the replica,
the floors, the load generator) stays on this interpreter, so only the router under test changes:
how the gateway's CPU depends on how its interpreter was built (the image's CPython is built with
``--enable-optimizations --with-lto``; pyenv's default build is not).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

import infergate
from infergate.app.fleet import free_port
from infergate.bench.dataplane_report import summarise, targets
from infergate.bench.matrix import static_pool_manifests
from infergate.bench.peers import available_peers, peer_venvs
from infergate.bench.procs import exit_on_sigterm, tree_cpu_by_command, tree_cpu_seconds, wait_http
from infergate.bench.workloads import filler_text

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
# the source tree this script runs infergate from (an interpreter of --gateway-python imports it)
SRC = Path(infergate.__file__).resolve().parents[1]


def completion_body(prompt_chars: int = 0, max_tokens: int = 1, stream: bool = False) -> bytes:
    """The request every path gets: ``Say hello.``, or ``prompt_chars`` characters of English-like
    text (the same every request, as ``bench_proxy_hotpath.py --prompt-chars`` sends); streamed
    answers carry one server-sent event per token, which every router relays one by one."""
    prompt = filler_text(prompt_chars) if prompt_chars > 0 else "Say hello."
    body: dict[str, Any] = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    if stream or max_tokens > 1:  # every answer this long, wherever the model would stop
        body["ignore_eos"] = True
    return json.dumps(body).encode()


BODY = completion_body()
PEER_PATHS = ("sglang-router:cache_aware", "vllm-router:cache_aware")
ALL_PATHS = ("direct", "infergate", "infergate-nofc", "infergate-envoy", *PEER_PATHS)
FLOOR_PATHS = ("floor", "floor-aiohttp")
KNOWN_PATHS = (*ALL_PATHS, *FLOOR_PATHS)


@dataclass
class Route:
    """One route to the replica: its URL and the process whose CPU it costs (for ``direct``, the
    replica itself)."""

    name: str
    url: str
    pid: int | None
    admin: str | None = None  # infergate's admin URL (its /metrics)
    workers: int = 1


@dataclass
class Rig:
    """The replica and every router in front of it, started once for the whole run."""

    paths: list[str]
    gateway_args: list[str]
    peer_venv: list[str]
    before_src: Path | None = None
    pythons: dict[str, str] = field(default_factory=dict)  # --gateway-python: label -> interpreter
    workers: list[int] = field(default_factory=lambda: [1])
    replica_args: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-dataplane-")))

    def _spawn(self, argv: list[str], log: str, src: Path | None = None) -> subprocess.Popen[bytes]:
        env = None
        if src is not None:  # import infergate from another source tree (``--before-src``, or this
            # one for an interpreter whose environment has only the dependencies)
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])),
            }
        with open(self.tmp / log, "wb") as err:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, env=env
            )
        self.procs.append(proc)
        return proc

    def __enter__(self) -> Rig:
        replica_port = free_port()
        sim = self._spawn(
            [
                sys.executable,
                "-m",
                "infergate",
                "simulate",
                "--host",
                "127.0.0.1",
                "--port",
                str(replica_port),
                *self.replica_args,
            ],
            "replica.log",
        )
        wait_http(f"http://127.0.0.1:{replica_port}/health")
        replica = f"http://127.0.0.1:{replica_port}"
        manifest = self._manifest(replica_port)
        for name in self.paths:
            if name == "direct":  # its CPU column is the replica's own, which every path also costs
                self.routes.append(Route(name, replica, sim.pid))
            elif name in FLOOR_PATHS:
                port = free_port()
                argv = [sys.executable, __file__, f"--{name}", f"{replica_port}:{port}"]
                proc = self._spawn(argv, f"{name}.log")
                wait_http(f"http://127.0.0.1:{port}/health")
                self.routes.append(Route(name, f"http://127.0.0.1:{port}", proc.pid))
            elif name.startswith("infergate"):
                for n in self.workers:
                    self._gateway(name, manifest, None, n)
                    if self.before_src is not None:
                        self._gateway(name, manifest, self.before_src, n)
                    for label, python in self.pythons.items():
                        self._gateway(name, manifest, SRC, n, python=(label, python))
            else:
                found, missing = available_peers(peer_venvs(self.peer_venv), [name])
                if missing:
                    print(f"skipping {name}: not installed (bash bench/install_peers.sh)", file=sys.stderr)
                    continue
                port = free_port()
                argv = found[0].command(
                    host="127.0.0.1", port=port, metrics_port=free_port(), workers=[replica]
                )
                proc = self._spawn(argv, f"{name.replace(':', '-')}.log")
                wait_http(f"http://127.0.0.1:{port}/health")
                self.routes.append(Route(name, f"http://127.0.0.1:{port}", proc.pid))
        return self

    def _gateway(
        self,
        name: str,
        manifest: Path,
        src: Path | None,
        workers: int = 1,
        *,
        python: tuple[str, str] | None = None,
    ) -> None:
        port, admin = free_port(), free_port()
        extra = {"infergate": [], "infergate-nofc": ["--no-flow-control"]}.get(
            name, ["--data-plane", "envoy"]
        )
        interpreter = sys.executable if python is None else python[1]
        argv = [interpreter, "-m", "infergate", "serve", "-f", str(manifest), "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--admin-port", str(admin), "--log-level", "warning"]
        argv += ["--metrics-auth", "disabled", *extra, *self.gateway_args]
        if workers > 1:
            argv += ["--workers", str(workers)]
            name = f"{name} ×{workers}"
        label = name if src is None else f"{name}@{'before' if python is None else python[0]}"
        proc = self._spawn(argv, f"{label}.log", src)
        wait_http(f"http://127.0.0.1:{admin}/readyz")
        admin_url = f"http://127.0.0.1:{admin}"
        self.routes.append(Route(label, f"http://127.0.0.1:{port}", proc.pid, admin_url, workers))

    def _manifest(self, replica_port: int) -> Path:
        path = self.tmp / "pool.yaml"
        path.write_text(static_pool_manifests("bench", {"replica": f"127.0.0.1:{replica_port}"}))
        return path

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if exc_type is None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:  # the routers' stderr is what explains a failed start
            print(f"logs kept in {self.tmp}", file=sys.stderr)


def send_delay(slot: int, rate: float, elapsed: float) -> float:
    """Seconds until request ``slot`` (from 0) is due at ``rate`` requests a second, ``elapsed``
    seconds after the start; 0 when it is due or late (a path behind the schedule is not paced)."""
    return max(0.0, slot / rate - elapsed)


def positive_rate(text: str) -> float:
    """``--rate``: requests a second, a finite number above 0."""
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rate must be requests a second, not {text!r}") from None
    if not (rate > 0 and math.isfinite(rate)):
        raise argparse.ArgumentTypeError(f"--rate must be above 0 requests a second, not {text}")
    return rate


def labelled_python(text: str) -> tuple[str, str]:
    """``--gateway-python``: ``LABEL=PY``, a short label for the paths' names and an interpreter
    that exists."""
    label, sep, python = text.partition("=")
    if not sep or not label or not python or "," in label:
        raise argparse.ArgumentTypeError(f"--gateway-python takes LABEL=PY, not {text!r}")
    if not os.access(python, os.X_OK):
        raise argparse.ArgumentTypeError(f"--gateway-python: {python} is not an executable")
    return label, python


def prompt_length(text: str) -> int:
    """``--prompt-chars``: a whole number of characters, 0 (``Say hello.``) or more."""
    try:
        chars = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--prompt-chars must be a whole number, not {text!r}") from None
    if chars < 0:
        raise argparse.ArgumentTypeError(f"--prompt-chars must be 0 or more, not {chars}")
    return chars


async def closed_loop(
    url: str, concurrency: int, requests: int, rate: float | None = None, body: bytes = BODY
) -> dict[str, float]:
    """``concurrency`` clients posting ``body`` back to back until ``requests`` answers came back.

    With ``rate``, request ``i`` is not sent before ``i / rate`` seconds after the start (the
    clients take the slots in turn): every path is offered the same requests a second, so their CPU
    per request compares at the same rate; a path that cannot keep up falls behind the schedule
    and shows a lower rate.
    """
    lat: list[float] = []
    errors = 0
    left = requests
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def client() -> None:
            nonlocal left, errors
            while left > 0:
                slot = requests - left
                left -= 1
                if rate is not None:
                    delay = send_delay(slot, rate, time.perf_counter() - t_start)
                    if delay > 0:
                        await asyncio.sleep(delay)
                t0 = time.perf_counter()
                try:
                    async with session.post(
                        f"{url}/v1/completions", data=body, headers={"content-type": "application/json"}
                    ) as r:
                        await r.read()
                        ok = r.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    lat.append(time.perf_counter() - t0)
                else:
                    errors += 1

        t_start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - t_start
    lat.sort()
    n = len(lat)
    return {
        "ok": n,
        "errors": errors,
        "wall_s": wall,
        "rps": n / wall if wall else 0.0,
        "p50_ms": 1000 * lat[n // 2] if n else float("nan"),
        "p99_ms": 1000 * lat[min(n - 1, int(n * 0.99))] if n else float("nan"),
    }


QUEUE_SERIES = "inference_extension_flow_control_request_queue_duration_seconds"


def queue_counts(admin: str) -> tuple[float, float]:
    """(requests flow control passed, of which within 0.1 ms) from the gateway's /metrics."""
    with urllib.request.urlopen(f"{admin}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = fast = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("outcome") != "Dispatched":
                continue
            if sample.name == f"{QUEUE_SERIES}_count":
                total += sample.value
            elif sample.name == f"{QUEUE_SERIES}_bucket" and float(sample.labels["le"]) == 0.0001:
                fast += sample.value
    return total, fast


async def measure(
    route: Route,
    concurrency: int,
    requests: int,
    idle_s: float,
    rate: float | None = None,
    body: bytes = BODY,
) -> dict[str, Any]:
    """A warm-up (connections, caches), the router's idle CPU rate over ``idle_s`` seconds without
    requests (metrics scrapes, health probes), then the measured loop with its CPU around it.

    ``cpu_us_per_req`` is all the CPU the router spent during the loop per request;
    ``net_cpu_us_per_req`` subtracts the idle rate times the loop's duration. On a loaded machine
    the loop runs slowly and the fixed background work weighs on the raw figure, not the net one.
    """
    await closed_loop(route.url, concurrency, max(4 * concurrency, 100), body=body)
    idle_rate = 0.0
    if route.pid and idle_s > 0:
        cpu_idle = tree_cpu_seconds(route.pid)
        t_idle = time.perf_counter()
        await asyncio.sleep(idle_s)  # a measurement window, not synchronisation
        idle_rate = (tree_cpu_seconds(route.pid) - cpu_idle) / (time.perf_counter() - t_idle)
    counts0 = queue_counts(route.admin) if route.admin else None
    split0 = tree_cpu_by_command(route.pid) if route.pid else {}
    cpu0 = sum(split0.values())
    point = await closed_loop(route.url, concurrency, requests, rate, body)
    if route.admin and counts0 is not None:
        if route.workers > 1:
            await asyncio.sleep(1.5)  # workers push their counters to /metrics once a second
        total, fast = queue_counts(route.admin)
        passed = total - counts0[0]
        point["queued_pct"] = 100 * (passed - (fast - counts0[1])) / passed if passed else 0.0
    if route.pid:
        served = point["ok"] + point["errors"]
        split1 = tree_cpu_by_command(route.pid)
        spent = sum(split1.values()) - cpu0
        point["cpu_us_per_req"] = 1e6 * spent / served if served else float("nan")
        if "envoy" in split1 and served:  # the Envoy path: Envoy and the picker apart
            envoy = split1["envoy"] - split0.get("envoy", 0.0)
            point["envoy_cpu_us_per_req"] = 1e6 * envoy / served
            point["picker_cpu_us_per_req"] = 1e6 * (spent - envoy) / served
        net = spent - idle_rate * point["wall_s"]
        point["net_cpu_us_per_req"] = 1e6 * net / served if served else float("nan")
        point["idle_cpu_per_s"] = idle_rate
    return {"path": route.name, "concurrency": concurrency, **point}


def floor_proxy(upstream_port: int, port: int, *, server: str) -> None:
    """The ``floor`` paths: an HTTP server forwarding every request to the replica through
    infergate's UpstreamPool, headers passed as they are; until SIGTERM. ``server`` is
    ``http1`` (infergate's own, what the built-in proxy serves with) or ``aiohttp``."""
    import uvloop
    from aiohttp import web

    from infergate.net.http1_client import UpstreamPool
    from infergate.servers.http1 import Http1Server, HttpRequest
    from infergate.servers.http1_response import Response

    key = f"127.0.0.1:{upstream_port}"
    pool: UpstreamPool | None = None

    async def forward(method: str, target: str, content_type: str, body: bytes) -> tuple[int, bytes]:
        assert pool is not None
        headers = [("Content-Type", content_type)]
        resp = await pool.request(key, "127.0.0.1", upstream_port, method, target, headers, body)
        data = await resp.read()
        resp.release()
        return resp.status, data

    async def handle_http1(request: HttpRequest) -> Response:
        if request.path == "/health":
            return Response(200, b"ok")
        body = await request.read_body(1 << 20, 30.0)
        content_type = request.headers.get("Content-Type", "application/json")
        status, data = await forward(request.method, request.raw_path, content_type, body)
        return Response(status, data, content_type="application/json")

    async def handle_aiohttp(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        content_type = request.headers.get("Content-Type", "application/json")
        status, data = await forward(request.method, request.raw_path, content_type, body)
        return web.Response(status=status, body=data, content_type="application/json")

    async def serve() -> None:
        nonlocal pool
        pool = UpstreamPool(connect_timeout=5.0, read_timeout=300.0, max_per_host=256)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        if server == "http1":
            http1 = Http1Server(handle_http1)
            listener = await loop.create_server(http1, "127.0.0.1", port)
            await stop.wait()
            listener.close()
            await http1.shutdown(1.0)
        else:
            runner = web.ServerRunner(web.Server(handle_aiohttp))
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            await stop.wait()
            await runner.cleanup()
        await pool.close()

    uvloop.run(serve())


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1].lstrip("-") in FLOOR_PATHS:  # a ``floor`` path's own process
        upstream, port = sys.argv[2].split(":")
        server = "aiohttp" if sys.argv[1] == "--floor-aiohttp" else "http1"
        floor_proxy(int(upstream), int(port), server=server)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000, help="measured requests per point (default 3000)")
    ap.add_argument("--concurrency", default="8,32", help="closed-loop clients, comma-separated")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    ap.add_argument("--paths", default=",".join(ALL_PATHS), help=f"default: {','.join(ALL_PATHS)}")
    ap.add_argument("--gateway-args", default="", help="extra `infergate serve` flags, e.g. '--workers 2'")
    ap.add_argument("--workers", default="1", help="worker counts of the infergate paths, e.g. 1,2")
    ap.add_argument(
        "--replica-args",
        default="",
        help="extra `infergate simulate` flags: '--time-scale 0.02' makes the replica 50x faster "
        "than the modelled GPU",
    )
    ap.add_argument(
        "--rate",
        type=positive_rate,
        help="offer every path this many requests a second (at most --concurrency in flight) instead "
        "of a closed loop: CPU per request compared at one rate",
    )
    ap.add_argument(
        "--prompt-chars",
        type=prompt_length,
        default=0,
        help="send a prompt of this many characters instead of 'Say hello.' (prefix hashing grows with it)",
    )
    ap.add_argument(
        "--max-tokens",
        type=int,
        default=1,
        help="answer length in tokens (default 1; sent with ignore_eos, so every answer has this many)",
    )
    ap.add_argument(
        "--stream", action="store_true", help="stream the answers (one server-sent event per token)"
    )
    ap.add_argument("--peer-venv", action="append", default=[], help="virtualenv of a peer router")
    ap.add_argument("--json", type=Path, help="write every point as JSON")
    ap.add_argument(
        "--idle-seconds", type=float, default=2.0, help="idle window per point for the net CPU (default 2)"
    )
    ap.add_argument(
        "--before-src", type=Path, help="also run the infergate paths from this source tree (DIR/infergate)"
    )
    ap.add_argument(
        "--gateway-python",
        action="append",
        default=[],
        type=labelled_python,
        metavar="LABEL=PY",
        help="also run the infergate paths on this interpreter (a virtualenv's python with infergate's "
        "dependencies), named <path>@LABEL; repeatable",
    )
    args = ap.parse_args()
    paths = [p for p in args.paths.split(",") if p]
    unknown = [p for p in paths if p not in KNOWN_PATHS]
    if unknown:
        ap.error(f"unknown path(s) {', '.join(unknown)}; known: {', '.join(KNOWN_PATHS)}")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if args.max_tokens < 1:
        ap.error(f"--max-tokens must be at least 1, not {args.max_tokens}")
    body = completion_body(args.prompt_chars, args.max_tokens, args.stream)
    points: list[dict[str, Any]] = []
    workers = [int(n) for n in args.workers.split(",") if n]
    gateway_args, replica_args = shlex.split(args.gateway_args), shlex.split(args.replica_args)
    # The routers run in their own sessions (so one killpg stops a router and its Envoy): a
    # SIGTERM to this script must unwind through Rig.__exit__, or they outlive it.
    exit_on_sigterm()
    pythons = dict(args.gateway_python)
    with Rig(paths, gateway_args, args.peer_venv, args.before_src, pythons, workers, replica_args) as rig:
        for rep in range(args.reps):
            for route in rig.routes:
                for c in concurrencies:
                    point = asyncio.run(measure(route, c, args.requests, args.idle_seconds, args.rate, body))
                    point["rep"] = rep
                    points.append(point)
                    cpu = point.get("cpu_us_per_req")
                    cpu_text = (
                        f" cpu {cpu:,.0f} µs/req (net {point['net_cpu_us_per_req']:,.0f})"
                        if cpu is not None
                        else ""
                    )
                    if "envoy_cpu_us_per_req" in point:
                        cpu_text += (
                            f" [Envoy {point['envoy_cpu_us_per_req']:,.0f},"
                            f" picker {point['picker_cpu_us_per_req']:,.0f}]"
                        )
                    print(
                        f"rep {rep} {route.name:28s} c={c:<3d} {point['rps']:8,.0f} req/s "
                        f"p50 {point['p50_ms']:6.1f} p99 {point['p99_ms']:6.1f} ms "
                        f"err {point['errors']}{cpu_text}"
                        + (f" queued>0.1ms {point['queued_pct']:.0f} %" if "queued_pct" in point else ""),
                        flush=True,
                    )
    print()
    print(summarise(points, concurrencies))
    verdicts = targets(points, 32 if 32 in concurrencies else concurrencies[-1], args.rate)
    if verdicts:
        print()
        print(verdicts)
    if args.json:
        args.json.write_text(json.dumps({"points": points, "argv": sys.argv[1:]}, indent=2))


if __name__ == "__main__":
    main()
