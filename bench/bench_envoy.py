"""What the Envoy data plane costs: throughput and added latency of Envoy + picker on this machine.

Three paths to the same tiny OpenAI-shaped upstream (answers at once, so only gateway cost shows):

* ``direct``          client → upstream
* ``envoy-static``    client → Envoy (STATIC cluster) → upstream
* ``envoy-picker``    client → Envoy → ext_proc picker (real Director + scheduler) → upstream

Each runs closed-loop with ``--concurrency`` clients for ``--duration`` seconds. The picker (its own
process) also reports its decision time: ``Director.handle_request`` from full body to target. Last,
the per-request Director cost with 10 / 100 / 1,000 synthetic endpoints, in process.

    .venv/bin/python bench/bench_envoy.py [--duration 5] [--concurrency 32] [--json out.json]
        [--paths direct,envoy-static,envoy-picker] [--sizes 10,100,1000]

The picker's CPU per request (user + system time of its process from /proc, over the measured
run, divided by the requests served) is the honest capacity figure on a shared machine: one
picker core carries about 1e6 / µs requests per second. ``INFERGATE_BENCH_PROFILE=out.prof``
runs the picker under cProfile and writes the profile when the bench stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 8}
).encode()
ANSWER = json.dumps(
    {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9},
    }
).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _uvloop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass


# ----------------------------------------------------------------------------- child processes
def upstream_main(port: int) -> None:
    """A model server that answers instantly."""
    _uvloop()

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def picker_main(port: int, stats_port: int, upstream: str) -> None:
    """The ext_proc picker with the real Director over a one-endpoint pool with synthetic metrics."""
    _uvloop()
    from infergate.config.picker import default_picker_config
    from infergate.dataplanes.extproc.server import serve_extproc
    from infergate.datastore.store import Datastore
    from infergate.requestcontrol.director import Director, RequestContext
    from infergate.scheduling.engine.scheduler import build_scheduler
    from infergate.types import EndpointMeta, EndpointMetrics

    profile_to = os.environ.get("INFERGATE_BENCH_PROFILE")
    if profile_to:
        import cProfile
        import signal

        prof = cProfile.Profile()

        def dump(*_: Any) -> None:
            prof.disable()
            prof.dump_stats(profile_to)
            os._exit(0)

        signal.signal(signal.SIGTERM, dump)
        prof.enable()

    async def main() -> None:
        ds = Datastore()
        host, p = upstream.rsplit(":", 1)
        ds.upsert_endpoint(EndpointMeta(name="up", address=host, port=int(p)))
        ds.set_models(upstream, frozenset({MODEL}))
        director = Director(
            datastore=ds, scheduler=build_scheduler(default_picker_config(lora=False)), flow=None
        )
        decisions: list[float] = []
        inner = director.handle_request

        async def timed(*, path: str, headers: Any, body: bytes) -> RequestContext:
            t0 = time.perf_counter()
            ctx = await inner(path=path, headers=headers, body=body)
            decisions.append(time.perf_counter() - t0)
            return ctx

        director.handle_request = timed  # type: ignore[method-assign]
        server = serve_extproc(director, "127.0.0.1", port, endpoints=ds)
        await server.start()

        async def stats(request: web.Request) -> web.Response:
            data = list(decisions)
            if request.query.get("reset"):
                decisions.clear()
            return web.json_response(data)

        app = web.Application()
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", stats_port).start()
        while True:  # keep metrics fresh
            ds.update_metrics(upstream, EndpointMetrics(updated_at=ds.clock.now()))
            await asyncio.sleep(0.2)

    asyncio.run(main())


# ----------------------------------------------------------------------------- load generation
def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def load(url: str, concurrency: int, duration: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    conn = aiohttp.TCPConnector(limit=concurrency)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=conn) as http:
        deadline = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    async with http.post(url, data=BODY, headers=headers) as r:
                        await r.read()
                        if r.status != 200:
                            errors += 1
                            continue
                except aiohttp.ClientError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        t_start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        elapsed = time.perf_counter() - t_start
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": pct(latencies, 0.5) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
    }


async def wait_http(url: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.post(url, data=BODY, headers={"content-type": "application/json"}) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not answering")
            await asyncio.sleep(0.1)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process from /proc/PID/stat; (0, 0) where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def static_bootstrap(listen: int, upstream: str) -> dict[str, Any]:
    """The same listener as render_bootstrap, minus ext_proc, with a STATIC cluster."""
    from infergate.dataplanes.extproc.bootstrap import render_bootstrap

    boot = render_bootstrap(listen_host="127.0.0.1", listen_port=listen, picker_health_check=False)
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][-1]["typed_config"]
    hcm["http_filters"] = hcm["http_filters"][1:]
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    route["cluster"] = "static"
    host, port = upstream.rsplit(":", 1)
    address = {"socket_address": {"address": host, "port_value": int(port)}}
    boot["static_resources"]["clusters"] = [
        {
            "name": "static",
            "type": "STATIC",
            "connect_timeout": "5s",
            "load_assignment": {
                "cluster_name": "static",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
            },
        }
    ]
    return boot


def pick_cost(sizes: list[int], picks: int) -> dict[int, dict[str, float]]:
    """Director.handle_request per request (parse + schedule + accounting) against N endpoints."""
    from infergate.config.picker import default_picker_config
    from infergate.datastore.store import Datastore
    from infergate.requestcontrol.director import Director
    from infergate.scheduling.engine.scheduler import build_scheduler
    from infergate.types import EndpointMeta, EndpointMetrics

    out: dict[int, dict[str, float]] = {}
    for n in sizes:
        rng = random.Random(n)
        ds = Datastore()
        for i in range(n):
            key = f"10.{i // 250}.{i % 250}.1:8000"
            ds.upsert_endpoint(EndpointMeta(name=f"pod-{i}", address=key.rsplit(":", 1)[0], port=8000))
            ds.update_metrics(
                key,
                EndpointMetrics(
                    waiting_queue_size=rng.randint(0, 20),
                    running_requests=rng.randint(0, 64),
                    kv_cache_usage=rng.random(),
                    updated_at=ds.clock.now() + 3600,  # stays fresh for the whole run
                ),
            )
            ds.set_models(key, frozenset({MODEL}))
        director = Director(
            datastore=ds, scheduler=build_scheduler(default_picker_config(lora=False)), flow=None
        )
        prefixes = ["".join(rng.choice("abcdefghij ") for _ in range(1500)) for _ in range(16)]
        bodies = [
            json.dumps(
                {"model": MODEL, "messages": [{"role": "user", "content": rng.choice(prefixes) + f" q{i}"}]}
            ).encode()
            for i in range(picks)
        ]

        async def run(director: Director = director, bodies: list[bytes] = bodies) -> list[float]:
            times = []
            for body in bodies:
                t0 = time.perf_counter()
                ctx = await director.handle_request(path="/v1/chat/completions", headers={}, body=body)
                times.append(time.perf_counter() - t0)
                director.handle_response_complete(ctx)
            return times

        times = asyncio.run(run())[min(100, picks // 4) :]
        out[n] = {
            "p50_ms": pct(times, 0.5) * 1000,
            "p99_ms": pct(times, 0.99) * 1000,
            "mean_ms": statistics.fmean(times) * 1000,
        }
    return out


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    from infergate.dataplanes.extproc.bootstrap import render_bootstrap
    from infergate.dataplanes.extproc.process import EnvoyProcess

    ctx = mp.get_context("spawn")
    up_port, picker_port, stats_port = free_port(), free_port(), free_port()
    upstream = f"127.0.0.1:{up_port}"
    procs = [
        ctx.Process(target=upstream_main, args=(up_port,), daemon=True),
        ctx.Process(target=picker_main, args=(picker_port, stats_port, upstream), daemon=True),
    ]
    for p in procs:
        p.start()
    e_static, e_picker = free_port(), free_port()
    envoys = [
        EnvoyProcess(static_bootstrap(e_static, upstream), concurrency=args.envoy_concurrency),
        EnvoyProcess(
            render_bootstrap(listen_host="127.0.0.1", listen_port=e_picker, picker_port=picker_port),
            concurrency=args.envoy_concurrency,
        ),
    ]
    results: dict[str, Any] = {"concurrency": args.concurrency, "duration_s": args.duration}
    try:
        for e in envoys:
            await e.start_async()
        paths = {
            "direct": f"http://{upstream}/v1/chat/completions",
            "envoy-static": f"http://127.0.0.1:{e_static}/v1/chat/completions",
            "envoy-picker": f"http://127.0.0.1:{e_picker}/v1/chat/completions",
        }
        paths = {k: v for k, v in paths.items() if k in args.paths}
        for url in paths.values():
            await wait_http(url)
        for name, url in paths.items():
            await load(url, args.concurrency, min(1.0, args.duration))  # warm-up
            if name == "envoy-picker":
                async with aiohttp.ClientSession() as http:
                    await (await http.get(f"http://127.0.0.1:{stats_port}/stats?reset=1")).read()
            user0, sys0 = cpu_seconds(procs[1].pid or 0)
            envoy0 = sum(cpu_seconds(envoys[1].pid or 0))
            results[name] = await load(url, args.concurrency, args.duration)
            n = results[name]["requests"]
            if name == "envoy-picker" and n:
                user1, sys1 = cpu_seconds(procs[1].pid or 0)
                r = results[name]
                r["picker_cpu_us_per_request"] = (user1 - user0 + sys1 - sys0) * 1e6 / n
                r["picker_user_us_per_request"] = (user1 - user0) * 1e6 / n
                r["picker_sys_us_per_request"] = (sys1 - sys0) * 1e6 / n
                r["picker_cores_busy"] = (user1 - user0 + sys1 - sys0) / args.duration
                # Envoy's own share of the ext_proc path (its worker threads and the gRPC client)
                r["envoy_cpu_us_per_request"] = (sum(cpu_seconds(envoys[1].pid or 0)) - envoy0) * 1e6 / n
            print(f"{name:13s} {json.dumps(results[name])}", file=sys.stderr)
        async with aiohttp.ClientSession() as http:
            decisions = await (await http.get(f"http://127.0.0.1:{stats_port}/stats")).json()
        results["picker_decision"] = {
            "count": len(decisions),
            "p50_ms": pct(decisions, 0.5) * 1000,
            "p99_ms": pct(decisions, 0.99) * 1000,
        }
    finally:
        for e in envoys:
            await e.stop_async()
        for p in procs:
            p.terminate()
            p.join(5)
    return results


def report(results: dict[str, Any]) -> str:
    direct = results["direct"]["p50_ms"] if "direct" in results else float("nan")
    lines = [
        f"Closed loop, {results['concurrency']} clients, {results['duration_s']} s per path.",
        "",
        "| path | req/s | p50 ms | p99 ms | added p50 ms vs direct | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("direct", "envoy-static", "envoy-picker"):
        if name not in results:
            continue
        r = results[name]
        lines.append(
            f"| {name} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['p50_ms'] - direct:.2f} | {r['errors']} |"
        )
    picker = results.get("envoy-picker", {})
    cpu = picker.get("picker_cpu_us_per_request")
    if cpu:
        lines += [
            "",
            f"Picker process CPU per request (all ext_proc messages): {cpu:.0f} µs "
            f"(user {picker['picker_user_us_per_request']:.0f}, "
            f"sys {picker['picker_sys_us_per_request']:.0f}); "
            f"one picker core carries about {1e6 / cpu:.0f} req/s; "
            f"{picker['picker_cores_busy']:.2f} cores busy during the run.",
            f"Envoy process CPU per request on that path: {picker['envoy_cpu_us_per_request']:.0f} µs.",
        ]
    d = results["picker_decision"]
    lines += ["", f"Picker decision (Director.handle_request), {d['count']} requests: "
              f"p50 {d['p50_ms']:.3f} ms, p99 {d['p99_ms']:.3f} ms."]  # fmt: skip
    if "pick_cost" in results:
        lines += ["", "| endpoints | p50 ms | p99 ms | mean ms |", "|---:|---:|---:|---:|"]
        for n, r in results["pick_cost"].items():
            lines.append(f"| {n} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['mean_ms']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--envoy-concurrency", type=int, default=1)
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--picks", type=int, default=1000)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--paths",
        type=lambda v: [p for p in v.split(",") if p],
        default=["direct", "envoy-static", "envoy-picker"],
        help="comma-separated subset of direct,envoy-static,envoy-picker",
    )
    args = ap.parse_args()
    results = asyncio.run(bench(args))
    results["pick_cost"] = pick_cost([int(s) for s in args.sizes.split(",") if s], args.picks)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
