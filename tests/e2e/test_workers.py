"""``--workers 2``: the built-in proxy on two worker processes behind one listener.

Real processes: simulators, ``infergate serve --workers 2`` and its workers; the openai SDK as the
client. What must hold: requests are served and ``/metrics`` counts every one of them (summed over
the workers); a worker that dies is replaced and its counts stay; SIGTERM drains and leaves no
process behind; a killed gateway process takes its workers with it; priorities still win when the
pool is saturated.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import urllib.request
from pathlib import Path

import openai

from tests.e2e.conftest import StartSims
from tests.support import ChildProcess, free_port, start_infergate, wait_for, write_pool

MODEL = "m1"


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _gone(pid: int) -> bool:
    """Exited (a zombie waiting for its new parent to reap it counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


class _Gateway:
    def __init__(self, child: ChildProcess, port: int, admin: int) -> None:
        self.child, self.port, self.admin = child, port, admin

    @property
    def workers(self) -> list[int]:
        return _children(self.child.proc.pid)

    def metric(self, name: str, labels: str = "") -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=10).read().decode()
        total = 0.0
        for m in re.finditer(rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$", text, re.M):
            if labels in m.group(1):
                total += float(m.group(2))
        return total

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="none", max_retries=0)


def _serve(tmp: Path, pool: Path, *extra: str) -> _Gateway:
    port, admin = free_port(), free_port()
    args = ["serve", "-f", str(pool), "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin)]
    child = start_infergate(
        [*args, "--metrics-auth", "disabled", "--workers", "2", *extra],
        tmp,
        health_url=f"http://127.0.0.1:{admin}/readyz",
    )
    gw = _Gateway(child, port, admin)
    wait_for(lambda: len(gw.workers) == 2, what="two worker processes")
    return gw


async def _complete(client: openai.AsyncOpenAI, n: int) -> None:
    for i in range(n):
        out = await client.completions.create(model=MODEL, prompt=f"hello {i}", max_tokens=2)
        assert out.choices[0].text


async def _requests(gw: _Gateway, n: int) -> None:
    async with gw.client() as client:
        await _complete(client, n)


def test_two_workers_serve_count_and_drain_without_leftovers(start_sims: StartSims, tmp_path: Path) -> None:
    (sim,) = start_sims(["--model", MODEL])
    gw = _serve(tmp_path, write_pool(tmp_path, [sim.key]))
    workers = gw.workers

    async def traffic() -> None:
        client = gw.client()
        await asyncio.gather(*(_complete(client, 10) for _ in range(4)))  # 4 connections
        chunks = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
        )
        assert [c async for c in chunks]
        await client.close()

    asyncio.run(traffic())
    wait_for(lambda: gw.metric("inference_objective_request_total") == 41, what="41 requests in /metrics")
    assert gw.child.stop(signal.SIGTERM, timeout=60) == 0, gw.child.output()
    assert all(_gone(pid) for pid in workers), workers


def test_a_killed_worker_is_replaced_and_its_counts_stay(start_sims: StartSims, tmp_path: Path) -> None:
    (sim,) = start_sims(["--model", MODEL])
    gw = _serve(tmp_path, write_pool(tmp_path, [sim.key]))
    try:
        asyncio.run(_requests(gw, 6))
        wait_for(lambda: gw.metric("inference_objective_request_total") == 6, what="6 requests counted")
        victim, survivor = gw.workers
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: len(gw.workers) == 2 and victim not in gw.workers,
            what="a new worker in place of the killed one",
        )
        assert survivor in gw.workers
        asyncio.run(_requests(gw, 6))
        wait_for(lambda: gw.metric("inference_objective_request_total") == 12, what="12 requests counted")
        assert "exited with code -9; restarting it" in gw.child.output()
    finally:
        gw.child.stop(timeout=60)


def test_workers_leave_with_a_killed_gateway_process(start_sims: StartSims, tmp_path: Path) -> None:
    (sim,) = start_sims(["--model", MODEL])
    gw = _serve(tmp_path, write_pool(tmp_path, [sim.key]))
    workers = gw.workers
    gw.child.stop(signal.SIGKILL)
    wait_for(lambda: all(_gone(pid) for pid in workers), what="the orphaned workers to exit")


def overtaken_under_overload(gw: _Gateway) -> int:
    """Feed priority-0 requests until the gateway queues some, then 6 of priority 10; how many
    early ones still waited when the important ones had finished."""

    async def one(client: openai.AsyncOpenAI, objective: str, i: int) -> None:
        await client.completions.create(
            model=MODEL,
            prompt=f"{objective} {i}",
            max_tokens=8,
            extra_headers={"x-gateway-inference-objective": objective},
            timeout=600,
        )

    async def overload() -> int:
        async with gw.client() as client:
            low: list[asyncio.Task[None]] = []
            loop = asyncio.get_running_loop()
            queued = loop.run_in_executor(None, gw.metric, "inference_extension_flow_control_queue_size")
            # a steady stream (the replica's own queue then shows what it got) until the gateway
            # holds some of them back: the pool is saturated
            # 12 held back: what is overtaken is mostly what the gateway held when the important ones
            # came; with 8, loaded runs saw 8 (9 held), and one CI run 1, against the callers' bound of 5
            while not queued.done() or await queued < 12:
                if queued.done():
                    queued = loop.run_in_executor(
                        None, gw.metric, "inference_extension_flow_control_queue_size"
                    )
                assert len(low) < 200, "the pool never saturated"
                low.append(asyncio.create_task(one(client, "low", len(low))))
                await asyncio.sleep(0.1)
            await asyncio.gather(*(one(client, "high", i) for i in range(6)))
            waiting = sum(1 for t in low if not t.done())
            # a failed early request is done too, and would pass for one served first
            failed = [t.exception() for t in low if t.done() and t.exception() is not None]
            assert not failed, failed
            for t in low:
                t.cancel()
            await asyncio.gather(*low, return_exceptions=True)
            return waiting

    try:
        return asyncio.run(overload())
    finally:
        gw.child.stop(timeout=60)


def test_priority_wins_under_overload_with_two_workers(start_sims: StartSims, tmp_path: Path) -> None:
    """One slow one-sequence replica fed a stream of priority-0 requests until the gateway queues
    some, then 6 of priority 10: each worker releases its queued requests by priority, so the late
    important ones finish while early ones still wait."""
    (sim,) = start_sims(["--model", MODEL, "--max-num-seqs", "1", "--time-scale", "10"])
    pool = write_pool(tmp_path, [sim.key], objectives={"low": 0, "high": 10})
    overtaken = overtaken_under_overload(_serve(tmp_path, pool))
    # The early requests already in the replica (or on their way: a loaded replica registers them
    # late, and each worker releases into what it sees) finish first; first come, first served none
    # of the early ones would still wait. Measured on the 2-core host with two busy loops beside it,
    # 10 runs: 12-17 of ~29 (through Envoy, test_workers_extproc: 15-18).
    assert overtaken >= 5, overtaken


def test_a_prefix_learned_by_one_worker_routes_the_others_requests(
    start_sims: StartSims, tmp_path: Path
) -> None:
    """Each request on a new connection (so both workers serve some): every request sharing a
    long prefix lands where the first one went, whichever worker schedules it; with a prefix index
    per worker a request on the other worker would find no match and go wherever load says."""
    sims = start_sims(["--model", MODEL], ["--model", MODEL])
    gw = _serve(tmp_path, write_pool(tmp_path, [s.key for s in sims]), "--debug-headers")
    served: dict[int, set[str]] = {}

    async def ask(prefix: int, i: int) -> None:
        words = " ".join(f"tenant{prefix}-word{j}" for j in range(300))
        async with gw.client() as client:
            raw = await client.completions.with_raw_response.create(
                model=MODEL, prompt=f"{words} question {i}", max_tokens=2
            )
        served.setdefault(prefix, set()).add(raw.headers["x-gateway-destination-endpoint-served"])

    async def traffic() -> None:
        for i in range(4):
            for prefix in range(6):
                await ask(prefix, i)

    try:
        asyncio.run(traffic())
        log = gw.child.output()
    finally:
        gw.child.stop(timeout=60)
    assert "infergate.request[w0]" in log and "infergate.request[w1]" in log, "one worker served all"
    assert all(len(eps) == 1 for eps in served.values()), served
    assert len(set().union(*served.values())) == 2  # the prefixes did not all go to one replica


def sigterm_mid_stream_and_see_it_finish(gw: _Gateway, *, what: str) -> None:
    """Stream 12 tokens through ``gw``, SIGTERM the gateway after the first chunk, and check the
    stream still ends with its last token, the gateway exits 0 and every child (``what``) is gone."""
    children = gw.workers

    async def stream() -> tuple[int, str | None]:
        async with gw.client() as client:
            chunks = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=12, stream=True
            )
            count, finish = 0, None
            async for chunk in chunks:
                if count == 0:
                    gw.child.proc.send_signal(signal.SIGTERM)  # after the first chunk
                count += 1
                finish = chunk.choices[0].finish_reason if chunk.choices else finish
            return count, finish

    count, finish = asyncio.run(stream())
    assert finish == "length" and count >= 12
    assert gw.child.proc.wait(120) == 0, gw.child.output()
    wait_for(lambda: all(_gone(pid) for pid in children), what=f"{what} to exit")


def test_sigterm_lets_streams_on_the_workers_finish(start_sims: StartSims, tmp_path: Path) -> None:
    """A stream in flight on a worker when the gateway gets SIGTERM is served to its end; then
    the gateway and its workers exit."""
    (sim,) = start_sims(["--model", MODEL, "--time-scale", "20"])
    gw = _serve(tmp_path, write_pool(tmp_path, [sim.key]), "--grace", "120")
    sigterm_mid_stream_and_see_it_finish(gw, what="the workers")
