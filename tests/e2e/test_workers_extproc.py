"""``--workers 2`` on the ext_proc planes: the picker in two worker processes.

Real processes: simulators, ``infergate serve --data-plane envoy --workers 2`` (the gateway
process runs Envoy, each worker its own ext_proc server on its own loopback port) and
``infergate epp -f ... --workers 2`` (both workers on one gRPC port with SO_REUSEPORT, driven by a
gRPC client as Envoy would). Which worker served what is read from each worker's own request
counter (``/debug/endpoints`` ``workers``), not inferred from timing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2

from infergate.dataplanes.extproc.server import EXTPROC_SERVICE
from tests.e2e.conftest import StartSims
from tests.e2e.test_epp_cluster import health_status, routed
from tests.e2e.test_workers import MODEL, _complete, _Gateway, _gone, sigterm_mid_stream_and_see_it_finish
from tests.integration.test_extproc import body_msg, read, response_headers_msg
from tests.support import (
    ChildProcess,
    async_wait_for,
    envoy_concurrency,
    free_port,
    start_infergate,
    wait_for,
    write_pool,
)

SERVING = int(health_pb2.HealthCheckResponse.SERVING)


def _workers(admin: int) -> list[dict[str, Any]]:
    """Each live worker as the gateway process last heard from it (pid, port, requests counted)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/debug/endpoints", timeout=10) as r:
        return list(json.loads(r.read())["workers"])


def _completion() -> bytes:
    return json.dumps({"model": MODEL, "prompt": "hello", "max_tokens": 2}).encode()


def _requests(admin: int) -> dict[int, float]:
    return {w["pid"]: w["requests"] for w in _workers(admin)}


def _serve_envoy(tmp: Path, pool: Path, envoy_admin: int, *extra: str, workers: int = 2) -> _Gateway:
    pytest.importorskip("envoy", reason="the [envoy] extra provides the Envoy binary")
    port, admin = free_port(), free_port()
    args = ["serve", "-f", str(pool), "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin)]
    child = start_infergate(
        [*args, "--data-plane", "envoy", "--metrics-auth", "disabled", "--workers", str(workers), *extra],
        tmp,
        health_url=f"http://127.0.0.1:{admin}/readyz",
        env={"INFERGATE_LISTENERS__ENVOY_ADMIN_PORT": str(envoy_admin)},
        timeout=120,
    )
    gw = _Gateway(child, port, admin)
    if workers > 1:
        wait_for(lambda: len(_workers(admin)) == workers, what=f"{workers} picker workers")
    return gw


def _picker_hosts_healthy(envoy_admin: int, ports: list[int]) -> bool:
    """Envoy's ext_proc cluster lists every worker's port and health-checks it as healthy."""
    with urllib.request.urlopen(f"http://127.0.0.1:{envoy_admin}/clusters", timeout=10) as r:
        text = r.read().decode()
    return all(f"ext_proc::127.0.0.1:{p}::health_flags::healthy" in text for p in ports)


def test_envoy_spreads_requests_over_picker_workers_and_replaces_a_killed_one(
    start_sims: StartSims, tmp_path: Path
) -> None:
    (sim,) = start_sims(["--model", MODEL])
    envoy_admin = free_port()
    gw = _serve_envoy(tmp_path, write_pool(tmp_path, [sim.key]), envoy_admin)
    try:
        first = _workers(gw.admin)
        ports = sorted(w["port"] for w in first)
        assert len(set(ports)) == 2, first  # a port per worker: Envoy's cluster has two endpoints
        wait_for(lambda: _picker_hosts_healthy(envoy_admin, ports), what="both pickers healthy in Envoy")
        assert envoy_concurrency(f"127.0.0.1:{envoy_admin}") == 2  # a worker thread per picker

        async def send(n: int) -> None:
            async with gw.client() as client:
                await _complete(client, n)

        # one client connection: Envoy still picks a picker per ext_proc stream
        asyncio.run(send(20))
        wait_for(lambda: sum(_requests(gw.admin).values()) == 20, what="20 requests counted by the workers")
        assert all(n > 0 for n in _requests(gw.admin).values()), _workers(gw.admin)
        assert gw.metric("inference_objective_request_total") == 20  # /metrics sums the workers

        victim = first[0]
        os.kill(victim["pid"], signal.SIGKILL)

        def replaced() -> bool:
            now = _workers(gw.admin)
            return len(now) == 2 and victim["pid"] not in {w["pid"] for w in now}

        wait_for(replaced, what="a new worker in place of the killed one")
        (new,) = [w for w in _workers(gw.admin) if w["index"] == victim["index"]]
        assert new["port"] == victim["port"]  # the port Envoy knows, kept reserved meanwhile
        wait_for(lambda: _picker_hosts_healthy(envoy_admin, ports), what="the new worker healthy in Envoy")
        sent = 20

        def counted() -> bool:
            return gw.metric("inference_objective_request_total") == sent

        while _requests(gw.admin).get(new["pid"], 0) == 0:
            assert sent < 200, f"the restarted worker got none of {sent - 20} requests: {_workers(gw.admin)}"
            asyncio.run(send(5))
            sent += 5
            wait_for(counted, what=f"{sent} requests counted")
        assert "exited with code -9; restarting it" in gw.child.output()
        workers = gw.workers
        assert gw.child.stop(signal.SIGTERM, timeout=60) == 0, gw.child.output()
        assert all(_gone(pid) for pid in workers), workers
    finally:
        gw.child.stop(timeout=60)


def test_priority_wins_under_overload_with_two_picker_workers(start_sims: StartSims, tmp_path: Path) -> None:
    """test_workers' overload pattern through Envoy: each picker worker holds its queued
    requests in flow control and releases them by priority."""
    from tests.e2e import test_workers

    (sim,) = start_sims(["--model", MODEL, "--max-num-seqs", "1", "--time-scale", "10"])
    pool = write_pool(tmp_path, [sim.key], objectives={"low": 0, "high": 10})
    gw = _serve_envoy(tmp_path, pool, free_port())
    overtaken = test_workers.overtaken_under_overload(gw)
    assert overtaken >= 5, overtaken


def _epp(tmp: Path, pool: Path) -> tuple[ChildProcess, int, int, int]:
    grpc_port, health, admin = free_port(), free_port(), free_port()
    args = [
        "epp", "-f", str(pool), "--workers", "2", "--no-secure-serving", "--grpc-port", str(grpc_port),
        "--grpc-health-port", str(health), "--metrics-port", str(admin), "--grace", "120",
    ]  # fmt: skip
    child = start_infergate(args, tmp, health_url=f"http://127.0.0.1:{admin}/readyz", timeout=120)
    wait_for(lambda: len(_workers(admin)) == 2, what="two picker workers")
    return child, grpc_port, health, admin


async def _one_request(port: int) -> None:
    """One request as Envoy sends it, on a connection of its own (each new connection goes to
    one of the workers listening on the shared port). A local subchannel pool makes the channel
    open its own connection: from gRPC's global pool a new channel may take over the connection
    of the one just closed, and with it the same worker."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as ch:
        call, _ = await routed(pb_grpc.ExternalProcessorStub(ch), _completion(), None)
        await call.write(response_headers_msg(length=2))
        await call.write(body_msg(b"{}", eos=True, response=True))
        await read(call, 2)
        await call.done_writing()


def test_epp_workers_share_the_grpc_port_and_drain_on_sigterm(start_sims: StartSims, tmp_path: Path) -> None:
    (sim,) = start_sims(["--model", MODEL])
    child, grpc_port, health, admin = _epp(tmp_path, write_pool(tmp_path, [sim.key]))
    workers = [w["pid"] for w in _workers(admin)]
    try:

        async def run() -> None:
            assert await health_status(health, "readiness") == SERVING  # the gateway process's port
            for _ in range(4):  # the ext_proc port's own health service, whichever worker answers
                assert await health_status(grpc_port, EXTPROC_SERVICE) == SERVING
            # 24 connections: the kernel hands each to one worker (all to one: odds 2^-23)
            for _ in range(24):
                await _one_request(grpc_port)

        asyncio.run(run())
        wait_for(lambda: sum(_requests(admin).values()) == 24, what="24 requests counted by the workers")
        assert all(n > 0 for n in _requests(admin).values()), _workers(admin)

        async def drain() -> None:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
                call, _ = await routed(pb_grpc.ExternalProcessorStub(ch), _completion(), None)
                child.proc.send_signal(signal.SIGTERM)

                async def unready() -> bool:
                    return await health_status(health, "readiness") != SERVING

                await async_wait_for(unready, timeout=30, what="readiness NOT_SERVING on SIGTERM")
                assert child.alive(), "the picker exited without draining the open stream"
                await call.write(response_headers_msg(length=2))
                await call.write(body_msg(b"{}", eos=True, response=True))
                await read(call, 2)
                await call.done_writing()

        asyncio.run(drain())
        assert child.proc.wait(120) == 0, child.output()
        wait_for(lambda: all(_gone(pid) for pid in workers), what="the workers to exit")
    finally:
        child.stop(timeout=60)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_streams_through_envoy_and_the_picker_workers_finish(
    start_sims: StartSims, tmp_path: Path, workers: int
) -> None:
    """A stream in flight through Envoy when the gateway gets SIGTERM is served to its end: Envoy
    stops taking connections and drains, then the picker (its workers) drains its ext_proc streams."""
    (sim,) = start_sims(["--model", MODEL, "--time-scale", "20"])
    pool = write_pool(tmp_path, [sim.key])
    gw = _serve_envoy(tmp_path, pool, free_port(), "--grace", "120", workers=workers)
    try:  # with one process, gw.workers is Envoy alone
        sigterm_mid_stream_and_see_it_finish(gw, what="the workers and Envoy")
    finally:
        gw.child.stop(timeout=60)
