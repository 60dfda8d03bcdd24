"""Fault tests end to end: real ``infergate simulate`` processes misbehave under load.

* a replica SIGKILLed while requests are in flight on it: every request that had not started
  streaming is retried elsewhere and succeeds; the ones that had started end cleanly;
* a replica frozen with SIGSTOP: requests keep succeeding within a bound (first-byte timeout, then
  retry), it leaves rotation, and it rejoins after SIGCONT;
* requests already on a replica when it freezes, with no first-byte timeout set: those that had no
  byte yet move to the other replica as soon as the frozen one leaves rotation, a stream that had
  delivered tokens ends with an error event, in seconds rather than the read timeout;
* a model server answering 500 next to real simulators: requests are retried on a simulator;
* the picker (``infergate epp -f``) behind Envoy killed and restarted: requests fail closed (5xx)
  while it is down and succeed again once it is back.

The built-in proxy runs in-process (so the tests can read its datastore); everything it talks to is
a real process on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from infergate.api.loader import load_manifests
from infergate.app.gateway import Gateway, ManifestPoolSource
from infergate.config.picker import EndpointPickerConfig, parse_picker_config
from infergate.config.settings import Settings
from infergate.dataplanes.extproc.bootstrap import EnvoySettings, render_bootstrap
from infergate.dataplanes.extproc.process import EnvoyProcess
from tests.e2e.conftest import StartSims
from tests.support import (
    ChildProcess,
    async_wait_for,
    free_port,
    http_ok,
    start_infergate,
    wait_for,
    write_pool,
)

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SERVED = "x-gateway-destination-endpoint-served"
FAKE_METRICS = (
    f'vllm:num_requests_waiting{{model_name="{MODEL}"}} 0\n'
    f'vllm:num_requests_running{{model_name="{MODEL}"}} 0\n'
    f'vllm:kv_cache_usage_perc{{model_name="{MODEL}"}} 0.0\n'
)


async def start_gateway(
    tmp: Path,
    keys: list[str],
    settings: Settings | None = None,
    picker: EndpointPickerConfig | None = None,
    flow_control: bool = True,
) -> Gateway:
    manifests = load_manifests([write_pool(tmp, keys)])
    base = settings or Settings()
    config = base.replace(
        {
            "listeners.host": "127.0.0.1",
            "listeners.port": 0,
            "listeners.admin_port": 0,
            "proxy.served_header": True,
            "flow_control.enabled": flow_control,
        }
    )
    gw = Gateway(ManifestPoolSource(manifests), config, picker=picker)
    await gw.start()
    assert await gw.wait_ready(60), "gateway never saw its endpoints ready"

    # Scraped and with a known model list: an endpoint whose /v1/models answer has not arrived yet is
    # skipped while another one serves the model, which would steer the first requests.
    async def all_candidates() -> bool:
        ds = gw.datastore
        return len(ds.candidates()) == len(keys) and all(MODEL in ds.models(k) for k in keys)

    await async_wait_for(all_candidates, what="every endpoint scraped, with its model list")
    return gw


@dataclass
class Reply:
    status: int
    served: str
    text: str


async def call(
    session: aiohttp.ClientSession, url: str, payload: dict[str, object], started: asyncio.Event | None = None
) -> Reply:
    """One request; ``started`` is set once the response headers arrived (streaming began)."""
    async with session.post(url, json=payload) as r:
        if started is not None:
            started.set()
        text = (await r.read()).decode()
        return Reply(r.status, r.headers.get(SERVED, ""), text)


def in_flight(gw: Gateway, key: str) -> int:
    ep = gw.datastore.endpoint(key)
    return ep.in_flight if ep is not None else 0


async def test_replica_killed_mid_load_loses_no_request_that_had_not_started(
    tmp_path: Path, start_sims: StartSims
) -> None:
    # Slow (time-scale 4) and small (2 seqs) replicas: requests queue on them, so the victim holds
    # requests that have not produced a byte yet when it dies.
    children = start_sims(
        *(["--model", MODEL, "--max-num-seqs", "2", "--time-scale", "4", "--seed", str(i)] for i in range(2))
    )
    (victim, victim_key), (_, survivor_key) = children
    gw = await start_gateway(tmp_path, [k for _, k in children])
    url = f"http://127.0.0.1:{gw.port}/v1/completions"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
            plain = [
                asyncio.create_task(
                    call(
                        s, url, {"model": MODEL, "prompt": f"plain {i}", "max_tokens": 24, "ignore_eos": True}
                    )
                )
                for i in range(10)
            ]

            async def victim_busy() -> bool:
                return in_flight(gw, victim_key) >= 3

            await async_wait_for(victim_busy, timeout=10, what="requests in flight on the victim")
            events = [asyncio.Event() for _ in range(4)]
            streams = [
                asyncio.create_task(
                    call(
                        s,
                        url,
                        {
                            "model": MODEL,
                            "prompt": f"s{i}",
                            "max_tokens": 24,
                            "ignore_eos": True,
                            "stream": True,
                        },
                        ev,
                    )
                )
                for i, ev in enumerate(events)
            ]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 60)
            on_victim = in_flight(gw, victim_key)
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(5)
            after = [
                asyncio.create_task(call(s, url, {"model": MODEL, "prompt": f"after {i}", "max_tokens": 4}))
                for i in range(4)
            ]
            # nothing hangs: every request ends well within the client timeout
            plain_r = await asyncio.wait_for(asyncio.gather(*plain), 45)
            stream_r = await asyncio.wait_for(asyncio.gather(*streams), 45)
            after_r = await asyncio.wait_for(asyncio.gather(*after), 45)
    finally:
        await gw.stop()
        for c, _ in children:
            c.stop()
    assert on_victim >= 3, on_victim
    # Non-streaming requests send no byte before the answer is complete: none may be lost.
    for r in plain_r + after_r:
        assert r.status == 200, r
        assert "error" not in json.loads(r.text), r.text
    assert sum(json.loads(r.text)["usage"]["completion_tokens"] for r in plain_r) == 10 * 24
    assert all(r.served == survivor_key for r in after_r)
    # At least one non-streaming request was on the victim when it died (so it was retried).
    plain_on_victim = on_victim - sum(r.served == victim_key for r in stream_r)
    assert plain_on_victim >= 1, (on_victim, [r.served for r in stream_r])
    # Streams that had started end cleanly: either complete or an error event, then [DONE].
    for r in stream_r:
        assert r.status == 200, r
        sse = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert sse and sse[-1] == "[DONE]", r.text
        cut = [e for e in sse[:-1] if "error" in json.loads(e)]
        assert not cut or json.loads(cut[0])["error"]["type"] == "upstream_error", cut


async def test_frozen_replica_leaves_rotation_and_requests_keep_succeeding(
    tmp_path: Path, start_sims: StartSims
) -> None:
    children = start_sims(*(["--model", MODEL, "--seed", str(i)] for i in range(2)))
    (victim, victim_key), (_, survivor_key) = children
    # First-byte timeout: a request stuck on the frozen replica moves on after this. Without it the
    # read timeout (a day) applies and the client session's 30 s total fails the request.
    bound = 2.0
    gw = await start_gateway(
        tmp_path, [k for _, k in children], Settings().replace({"proxy.first_byte_timeout": bound})
    )
    url = f"http://127.0.0.1:{gw.port}/v1/completions"
    replies: list[Reply] = []
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:

            async def worker(w: int) -> None:
                i = 0
                while not stop.is_set():
                    replies.append(
                        await call(s, url, {"model": MODEL, "prompt": f"w{w} {i}", "max_tokens": 4})
                    )
                    i += 1

            workers = [asyncio.create_task(worker(w)) for w in range(4)]

            async def some_on_victim() -> bool:
                return any(r.served == victim_key for r in replies)

            await async_wait_for(some_on_victim, timeout=10, what="load reaching both replicas")
            victim.proc.send_signal(signal.SIGSTOP)

            async def gone() -> bool:
                return victim_key not in {e.key for e in gw.datastore.candidates()}

            await async_wait_for(gone, timeout=30, what="frozen replica to leave rotation")
            n_left = len(replies)

            async def more_served() -> bool:
                return len(replies) >= n_left + 20

            await async_wait_for(more_served, timeout=15, what="requests served while a replica is frozen")
            after_leaving = replies[n_left:]
            victim.proc.send_signal(signal.SIGCONT)

            async def back() -> bool:
                return victim_key in {e.key for e in gw.datastore.candidates()}

            await async_wait_for(back, timeout=10, what="thawed replica to rejoin")
            stop.set()
            await asyncio.wait_for(asyncio.gather(*workers), 60)
    finally:
        victim.proc.send_signal(signal.SIGCONT)
        await gw.stop()
        for c, _ in children:
            c.stop()
    # every request answered within the session's bound: one first-byte timeout on the frozen
    # replica at most, then a normal answer from the other
    assert all(r.status == 200 for r in replies), [r for r in replies if r.status != 200][:3]
    assert all(r.served == survivor_key for r in after_leaving[4:])  # the first few may be in flight already


ROUND_ROBIN = parse_picker_config(
    "apiVersion: inference.networking.x-k8s.io/v1alpha1\n"
    "kind: EndpointPickerConfig\n"
    "plugins:\n- type: round-robin-picker\n"
)


def freeze(child: ChildProcess) -> None:
    """SIGSTOP ``child`` and wait until the kernel reports it stopped."""
    child.proc.send_signal(signal.SIGSTOP)
    stat = Path(f"/proc/{child.proc.pid}/stat")

    def stopped() -> bool:
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "T"

    wait_for(stopped, timeout=5, interval=0.005, what="the replica to stop")


def sse_events(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


async def test_requests_on_a_replica_frozen_before_their_first_byte_finish_elsewhere(
    tmp_path: Path, start_sims: StartSims
) -> None:
    # No first_byte_timeout: before the fix these requests waited for the read timeout (a day).
    children = start_sims(*(["--model", MODEL, "--seed", str(i)] for i in range(2)))
    (victim, victim_key), (_, survivor_key) = children
    # Round robin and no flow control: the picker must not steer away from the frozen replica
    # (flow control routes to replicas "with room", and stale metrics count as full). The frozen
    # replica stays a candidate for at least 4 s (probe timeout 4 s, metrics stale after 10 s), so
    # the four requests are scheduled before any verdict even on a loaded machine.
    settings = Settings().replace(
        {"scrape.health_interval": 0.5, "scrape.health_timeout": 4.0, "scrape.staleness": 10.0}
    )
    gw = await start_gateway(
        tmp_path, [k for _, k in children], settings, picker=ROUND_ROBIN, flow_control=False
    )
    url = f"http://127.0.0.1:{gw.port}/v1/completions"
    tokens = 8
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as s:
            freeze(victim)
            # Round robin alternates between the two replicas: of each pair (plain, then streamed)
            # one lands on the frozen replica, which can send nothing back.
            tasks: list[asyncio.Task[Reply]] = []
            # Each is sent once the previous one was scheduled, all within a few milliseconds
            # (seconds on a loaded machine), before the frozen replica's first probe times out.
            for i, stream in enumerate([False, False, True, True]):
                before = gw.decisions.total
                body = {"model": MODEL, "prompt": f"q{i}", "max_tokens": tokens, "ignore_eos": True}
                tasks.append(asyncio.create_task(call(s, url, {**body, "stream": stream})))

                async def scheduled(before: int = before) -> bool:
                    return gw.decisions.total > before

                await async_wait_for(scheduled, timeout=5, interval=0.001, what=f"request {i} scheduled")
            on_victim = in_flight(gw, victim_key)
            # three failed probes (about 3 x 4.5 s) withdraw them; the read timeout would be a day
            replies = await asyncio.wait_for(asyncio.gather(*tasks), 75)
    finally:
        victim.proc.send_signal(signal.SIGCONT)
        await gw.stop()
        for c, _ in children:
            c.stop()
    assert on_victim == 2, on_victim
    plain, streamed = replies[:2], replies[2:]
    for r in plain:
        assert (r.status, r.served) == (200, survivor_key), r
        assert json.loads(r.text)["usage"]["completion_tokens"] == tokens, r.text
    for r in streamed:
        assert (r.status, r.served) == (200, survivor_key), r
        events = sse_events(r.text)
        assert events[-1] == "[DONE]" and not any("error" in json.loads(e) for e in events[:-1]), r.text
    # they finished at all (the 75 s bound above) instead of waiting for the read timeout (a day);
    # how fast depends on the health probes and the machine, so no wall-clock bound is asserted


async def test_stream_on_a_replica_frozen_mid_stream_ends_with_an_error_event(
    tmp_path: Path, start_sims: StartSims
) -> None:
    children = start_sims(*(["--model", MODEL, "--seed", str(i)] for i in range(2)))
    gw = await start_gateway(tmp_path, [k for _, k in children])
    url = f"http://127.0.0.1:{gw.port}/v1/completions"
    body = {"model": MODEL, "prompt": "long", "max_tokens": 4000, "ignore_eos": True, "stream": True}
    victim: ChildProcess | None = None
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s,
            s.post(url, json=body) as r,
        ):
            assert r.status == 200
            victim = next(c for c, k in children if k == r.headers[SERVED])
            head = b""
            while head.count(b"data: ") < 3:
                head += await asyncio.wait_for(r.content.readline(), 60)
            freeze(victim)
            # The frozen replica sends nothing more: only leaving rotation can end the stream.
            rest = await asyncio.wait_for(r.content.read(), 45)
    finally:
        if victim is not None:
            victim.proc.send_signal(signal.SIGCONT)
        await gw.stop()
        for c, _ in children:
            c.stop()
    events = sse_events((head + rest).decode())
    assert len(events) < 1000, len(events)  # cut, not completed
    assert events[-1] == "[DONE]", events[-3:]
    error = json.loads(events[-2])["error"]
    assert error["type"] == "upstream_error" and "left rotation" in error["message"], error
    assert all(ep.in_flight == 0 for ep in gw.datastore.endpoints())


@dataclass
class FailingServer:
    """A model server that looks healthy and idle but answers every completion with 500."""

    hits: int = 0
    runner: web.AppRunner | None = None
    key: str = ""

    async def start(self) -> None:
        app = web.Application()

        async def fail(_: web.Request) -> web.Response:
            self.hits += 1
            return web.json_response({"error": {"message": "boom", "type": "internal_error"}}, status=500)

        async def models(_: web.Request) -> web.Response:
            return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(text=FAKE_METRICS)

        async def health(_: web.Request) -> web.Response:
            return web.Response(text="ok")

        app.router.add_post("/v1/{tail:.*}", fail)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/health", health)
        app.router.add_get("/v1/models", models)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.key = f"127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def test_replica_answering_500_is_retried_on_a_simulator(tmp_path: Path, start_sims: StartSims) -> None:
    bad = FailingServer()
    await bad.start()
    children = start_sims(*(["--model", MODEL, "--seed", str(i)] for i in range(2)))
    sim_keys = {k for _, k in children}
    gw = await start_gateway(tmp_path, [bad.key, *sim_keys])
    url = f"http://127.0.0.1:{gw.port}/v1/completions"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
            replies = await asyncio.gather(
                *(call(s, url, {"model": MODEL, "prompt": f"q{i}", "max_tokens": 3}) for i in range(12))
            )
            streamed = await call(
                s, url, {"model": MODEL, "prompt": "stream", "max_tokens": 3, "stream": True}
            )
        leaked = [ep.key for ep in gw.datastore.endpoints() if ep.in_flight]
    finally:
        await gw.stop()
        await bad.stop()
        for c, _ in children:
            c.stop()
    assert bad.hits > 0, "the failing server was never picked, so no retry was exercised"
    for r in [*replies, streamed]:
        assert r.status == 200, r
        assert r.served in sim_keys, r
    assert streamed.text.rstrip().endswith("data: [DONE]")
    assert leaked == []


@pytest.fixture
async def envoy_pool(
    tmp_path: Path, start_sims: StartSims
) -> AsyncIterator[tuple[list[str], Path, ChildProcess]]:
    ((sim, key),) = start_sims(["--model", MODEL])
    yield [key], write_pool(tmp_path, [key]), sim


def start_epp(tmp: Path, pool: Path, grpc: int, health: int, admin: int) -> ChildProcess:
    args = ["epp", "-f", str(pool), "--host", "127.0.0.1", "--no-secure-serving"]
    args += ["--grpc-port", str(grpc), "--grpc-health-port", str(health), "--metrics-port", str(admin)]
    return start_infergate(args, tmp, health_url=f"http://127.0.0.1:{admin}/readyz", timeout=30)


async def test_picker_restart_fails_closed_then_recovers(
    tmp_path: Path, envoy_pool: tuple[list[str], Path, ChildProcess]
) -> None:
    _, pool, _ = envoy_pool
    grpc, health, admin = free_port(), free_port(), free_port()
    epp = start_epp(tmp_path, pool, grpc, health, admin)
    listen = free_port()
    envoy = EnvoyProcess(
        render_bootstrap(EnvoySettings(listen_host="127.0.0.1", listen_port=listen, picker_port=grpc)),
        concurrency=1,
    )
    url = f"http://127.0.0.1:{listen}/v1/completions"
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 3}
    try:
        await envoy.start_async()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:

            async def serving() -> bool:
                return (await call(s, url, body)).status == 200

            await async_wait_for(serving, timeout=20, interval=0.1, what="Envoy + picker serving")
            epp.stop(signal.SIGKILL)
            down = [await call(s, url, body) for _ in range(3)]
            epp = start_epp(tmp_path, pool, grpc, health, admin)
            await async_wait_for(serving, timeout=20, interval=0.1, what="requests succeeding after restart")
            up = [await call(s, url, body) for _ in range(5)]
    finally:
        await envoy.stop_async()
        epp.stop()
    for r in down:
        assert 500 <= r.status < 600, r  # fail closed, and answered within the session's 20 s: not hung
    assert all(r.status == 200 and json.loads(r.text)["choices"] for r in up), up
    assert not http_ok(f"http://127.0.0.1:{admin}/readyz")  # the restarted picker was stopped above
