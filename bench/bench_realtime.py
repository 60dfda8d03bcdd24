"""Precise prefix routing and P/D in real time: in-process simulators, the gateway and an
open-loop client on this machine (loopback), the same comparisons the twin makes.

* ``--mode precise``: ``--replicas`` simulators publish KV events into the gateway's bound socket
  (topics ``kv@127.0.0.1:<port>@<model>``); strategies ``precise-prefix`` (reference profile with
  the precise scorer), ``gie-default`` (the same with the approximate scorer) and ``default``.
  ``--num-gpu-blocks`` shrinks every simulator's KV cache so tenants' prefixes churn within a
  short run.
* ``--mode pd``: the same replicas aggregated, or half prefill (``kv_producer``) and half decode
  (``kv_consumer`` behind the P/D sidecar) with ``disagg-profile-handler`` (bench_pd.py's configs).

Wall-clock figures on a shared, loaded host carry its CPU contention (docs/benchmarks.md):

    .venv/bin/python bench/bench_realtime.py --mode precise --workload many-tenants --requests 300 --qps 4
    .venv/bin/python bench/bench_realtime.py --mode pd --workload prefill-decode-mix --requests 200 --qps 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import yaml
from aiohttp import web

from infergate.api.loader import load_manifests
from infergate.app.fleet import free_port
from infergate.app.gateway import Gateway, ManifestPoolSource
from infergate.bench.loadgen import run_open_loop
from infergate.bench.stats import Slo, summarise
from infergate.bench.strategies import PD_AGGREGATED, pd_picker_config, picker_config
from infergate.bench.workloads import generate, load_workload
from infergate.config.picker import EndpointPickerConfig, PluginSpec, parse_picker_config
from infergate.config.settings import Settings
from infergate.pdsidecar.proxy import SidecarOptions, build_app
from infergate.simulator.args import parse_args
from infergate.simulator.server import SimServer

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def _manifest(endpoints: list[tuple[str, dict[str, str]]]) -> Path:
    docs = [
        {
            "apiVersion": "inference.networking.k8s.io/v1",
            "kind": "InferencePool",
            "metadata": {"name": "pool"},
            "spec": {"selector": {"matchLabels": {"app": "sim"}}, "targetPorts": [{"number": 8000}]},
        },
        {
            "apiVersion": "infergate.dev/v1alpha1",
            "kind": "EndpointList",
            "metadata": {"name": "sims"},
            "spec": {
                "poolName": "pool",
                "endpoints": [
                    {"name": f"sim{i}", "address": a, "labels": {"app": "sim", **labels}}
                    for i, (a, labels) in enumerate(endpoints)
                ],
            },
        },
    ]
    path = Path(tempfile.mkdtemp(prefix="bench-rt-")) / "pool.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


async def _serve(
    picker: EndpointPickerConfig,
    endpoints: list[tuple[str, dict[str, str]]],
    workload: str,
    n: int,
    qps: float,
    staleness: float = 2.0,
) -> str:
    gw = Gateway(
        ManifestPoolSource(load_manifests([_manifest(endpoints)])),
        Settings().replace(
            {
                "listeners.host": "127.0.0.1",
                "listeners.port": free_port(),
                "listeners.admin_port": free_port(),
                # every process shares one loaded event loop: a slow probe is not a dead server
                "scrape.health_timeout": 10.0,
                "scrape.evict_after_failed_probes": 10,
                "scrape.staleness": staleness,
            }
        ),
        picker=picker,
    )
    await gw.start()
    try:
        assert await gw.wait_ready(60)
        requests = generate(load_workload(workload))[:n]
        records = await run_open_loop(f"http://127.0.0.1:{gw.port}", requests, qps=qps, seed=1)
    finally:
        await gw.stop()
    warm = n // 5
    s = summarise(records[warm:], Slo())
    if s.errors:
        messages = Counter(f"{r.status} {(r.error or '')[:120]}" for r in records[warm:] if not r.ok)
        print(f"errors: {dict(messages)}", file=sys.stderr, flush=True)
    slo = "yes" if s.meets_slo else "no"
    return (
        f"{s.ttft_p50:.3f} | {s.ttft_p90:.3f} | {s.tpot_p90 * 1000:.1f} | {slo} | {s.succeeded}/{s.requests}"
    )


def _sim(argv: list[str]) -> SimServer:
    return SimServer(parse_args(["--host", "127.0.0.1", "--model", MODEL, *argv], {}))


async def precise(args: argparse.Namespace) -> None:
    for strategy in ("precise-prefix", "gie-default", "default"):
        zmq_port = free_port()
        ports = [free_port() for _ in range(args.replicas)]
        sims = []
        for p in ports:
            kv = {
                "enable_kv_cache_events": True,
                "endpoint": f"tcp://127.0.0.1:{zmq_port}",
                "topic": f"kv@127.0.0.1:{p}@{MODEL}",
            }
            sims.append(
                _sim(
                    [
                        "--port",
                        str(p),
                        "--num-gpu-blocks",
                        str(args.num_gpu_blocks),
                        "--kv-events-config",
                        json.dumps(kv),
                    ]
                )
            )
        for s in sims:
            await s.start()
        picker = picker_config(strategy)
        if strategy == "precise-prefix":
            plugins = [
                PluginSpec(
                    type=p.type,
                    name=p.name,
                    parameters={
                        "kvEventsConfig": {
                            "zmqEndpoint": f"tcp://127.0.0.1:{zmq_port}",
                            "discoverPods": False,
                        }
                    },
                )
                if p.type == "precise-prefix-cache-scorer"
                else p
                for p in picker.plugins
            ]
            picker = picker.model_copy(update={"plugins": plugins})
        try:
            row = await _serve(
                picker, [(f"127.0.0.1:{p}", {}) for p in ports], args.workload, args.requests, args.qps
            )
        finally:
            for s in sims:
                await s.stop()
        print(f"| {strategy} | {args.qps:g} | {row} |", flush=True)


async def pd(args: argparse.Namespace) -> None:
    kv = lambda role: ["--kv-transfer-config", json.dumps({"kv_connector": "NixlConnector", "kv_role": role})]  # noqa: E731
    # aggregated
    sims = [_sim(["--port", "0"]) for _ in range(args.replicas)]
    for s in sims:
        await s.start()
    try:
        row = await _serve(
            parse_picker_config(PD_AGGREGATED),
            [(s.url.removeprefix("http://"), {}) for s in sims],
            args.workload,
            args.requests,
            args.qps,
            args.staleness,
        )
    finally:
        for s in sims:
            await s.stop()
    print(f"| aggregated | {args.qps:g} | {row} |", flush=True)
    half = args.replicas // 2
    prefill = [_sim(["--port", "0", *kv("kv_producer")]) for _ in range(half)]
    decode = [_sim(["--port", "0", *kv("kv_consumer")]) for _ in range(args.replicas - half)]
    runners = []
    for s in [*prefill, *decode]:
        await s.start()
    endpoints = [(s.url.removeprefix("http://"), {"llm-d.ai/role": "prefill"}) for s in prefill]
    for s in decode:
        runner = web.AppRunner(build_app(SidecarOptions(decoder_url=s.url)))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        endpoints.append((f"127.0.0.1:{runner.addresses[0][1]}", {"llm-d.ai/role": "decode"}))
    try:
        picker = pd_picker_config(args.threshold)
        row = await _serve(picker, endpoints, args.workload, args.requests, args.qps, args.staleness)
    finally:
        for r in runners:
            await r.cleanup()
        for s in [*prefill, *decode]:
            await s.stop()
    print(f"| pd-{half}p{args.replicas - half}d | {args.qps:g} | {row} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("precise", "pd"), required=True)
    p.add_argument("--workload", default="many-tenants")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--qps", type=float, default=4.0)
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--num-gpu-blocks", type=int, default=4000)
    p.add_argument("--threshold", type=int, default=1024)
    p.add_argument(
        "--staleness",
        type=float,
        default=2.0,
        help="scrape.staleness: metrics older than this take an endpoint out of the fresh candidates",
    )
    a = p.parse_args()
    print(f"{a.mode}: {a.workload}, {a.requests} requests (first 20 % not counted), {a.replicas} replicas")
    print("| strategy/pool | QPS | TTFT p50 (s) | TTFT p90 (s) | TPOT p90 (ms) | SLO | served |")
    print("|---|---|---|---|---|---|---|")
    asyncio.run(precise(a) if a.mode == "precise" else pd(a))


if __name__ == "__main__":
    main()
