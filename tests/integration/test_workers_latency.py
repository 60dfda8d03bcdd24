"""Two gateway workers built in this process, joined by the real channel (Unix socket pairs,
frames) and the gateway process's forwarding (``WorkerPool``): a pick in one worker, and the TTFT
its answer took, move the other worker's predicted latency for that endpoint, and its in-flight
requests count in the other worker's scheduling until it exits (issue #18)."""

from __future__ import annotations

import asyncio
import socket
import time
from types import SimpleNamespace
from typing import cast

import pytest

from infergate.app.workers import child, supervisor
from infergate.app.workers.channel import WorkerSpec, apply_snapshot, snapshot_of
from infergate.app.workers.supervisor import WorkerPool
from infergate.config.picker import default_picker_config
from infergate.dataplanes import WorkerListen
from infergate.dataplanes.builtin import SharedSocketFront
from infergate.datastore.store import Datastore
from infergate.scheduling.plugins.latency import PredictedLatencyScorer
from infergate.types import (
    Endpoint,
    EndpointMeta,
    EndpointMetrics,
    InferenceRequest,
    MonotonicClock,
    PoolSpec,
)
from tests.support import eventually, local_settings

POOL = PoolSpec(name="pool", selector={"app": "sim"})


def _pool_state() -> Datastore:
    """The gateway process's datastore: two idle replicas serving ``base``, just scraped."""
    clock = MonotonicClock()
    ds = Datastore(clock)
    ds.set_pool(POOL)
    for i in range(2):
        meta = EndpointMeta(name=f"sim{i}", address="127.0.0.1", port=9000 + i, labels={"app": "sim"})
        ds.upsert_endpoint(meta)
        ds.update_metrics(
            meta.key, EndpointMetrics(num_gpu_blocks=10_000, block_size=16, updated_at=clock.now())
        )
        ds.set_models(meta.key, frozenset({"base"}))
    return ds


def _scorer(worker: child._Worker) -> PredictedLatencyScorer:
    assert len(worker.latency) == 1, "the default profile has one predicted-latency scorer"
    return worker.latency[0]


def _seen_in_flight(worker: child._Worker, key: str) -> int:
    """The in-flight count ``worker``'s scheduler sees on ``key`` (every worker's requests)."""
    ds = worker.datastore
    return next(e.in_flight for e in ds.with_peer_in_flight(ds.endpoints()) if e.key == key)


def _seen_started(worker: child._Worker, key: str) -> int:
    """Of those, the requests seen to start (the streams the latency scorer's stall charge counts)."""
    ds = worker.datastore
    return next(e.in_flight_started for e in ds.with_peer_in_flight(ds.endpoints()) if e.key == key)


async def _exited() -> int:
    return 0


def _ttft(worker: child._Worker, endpoint: Endpoint, now: float) -> float:
    pred = _scorer(worker).predict(endpoint, prompt_tokens=1000, matched_tokens=0, adapter=None, now=now)
    return pred.ttft_ms


async def test_a_pick_and_its_ttft_in_one_worker_move_the_other_workers_prediction() -> None:
    settings = local_settings()
    gateway = WorkerPool(settings, SharedSocketFront(settings))
    parent = _pool_state()
    workers: list[child._Worker] = []
    tasks: list[asyncio.Task[None]] = []
    closing: list[asyncio.StreamWriter] = []
    try:
        for i in range(2):
            ours, theirs = socket.socketpair()
            g_reader, g_writer = await asyncio.open_unix_connection(sock=ours)
            w_reader, w_writer = await asyncio.open_unix_connection(sock=theirs)
            closing += [g_writer, w_writer]
            spec = WorkerSpec(
                index=i,
                settings=settings,
                pool=POOL,
                picker=default_picker_config(lora=False),
                objective_max_tokens={},
                api_keys=None,
                route_prefixes=(),
                listen=WorkerListen(),
            )
            worker = child._Worker(spec, w_writer)
            apply_snapshot(worker.datastore, snapshot_of(parent))
            workers.append(worker)
            # the gateway process's side: the same forwarding a started worker gets
            proc = cast(asyncio.subprocess.Process, SimpleNamespace(pid=0))
            gw = gateway._workers[i] = supervisor._Worker(i, proc, g_writer)
            tasks.append(asyncio.create_task(gateway._listen(gw, g_reader)))
            tasks.append(asyncio.create_task(worker.follow(w_reader)))
        a, b = workers
        endpoints = {e.key: e for e in b.datastore.endpoints()}
        before = time.monotonic()
        idle = {key: _ttft(b, e, before) for key, e in endpoints.items()}

        # worker a schedules a request of 4000 prompt tokens (100 ms of prefill)
        request = InferenceRequest(
            request_id="r1", model="base", target_model="base", prompt="x" * 16_000, max_tokens=50
        )
        picked = a.core.scheduler.schedule(request, a.datastore.endpoints()).primary.key
        await eventually(
            lambda: _scorer(b).debug_state().get(picked, {}).get("requests") == 1,
            what="worker b to account worker a's pick",
        )
        now = time.monotonic()
        other = next(k for k in endpoints if k != picked)
        # b now prices the picked endpoint as a does: the same backlog, frontend work and rate
        assert _ttft(b, endpoints[picked], now) == pytest.approx(_ttft(a, endpoints[picked], now))
        assert _ttft(b, endpoints[picked], now) > idle[picked]
        assert _ttft(b, endpoints[other], now) == pytest.approx(idle[other])
        # but its own in-flight counts stay its own
        assert all(e.in_flight == 0 for e in b.datastore.endpoints())

        # the answer's first token came after 10 s, far slower than predicted: a's correction
        # factor for the endpoint goes to the limit (1.5) at once, and so does b's
        a.core.scheduler.observe_ttft("r1", 10.0)
        await eventually(
            lambda: _scorer(b).debug_state()[picked]["observations"] == 1,
            what="worker b to learn worker a's observed TTFT",
        )
        assert _scorer(a).debug_state()[picked]["ttft_observed_over_predicted"] == 1.5
        assert _scorer(b).debug_state()[picked]["ttft_observed_over_predicted"] == 1.5
        now = time.monotonic()
        assert _ttft(b, endpoints[picked], now) == pytest.approx(_ttft(a, endpoints[picked], now))
        assert _scorer(b).debug_state()[other]["observations"] == 0

        # it finished at a second per token, far slower than predicted: b learns a's TPOT ratio
        # (one observation counts at most 10x its prediction, and moves the factor 2 % of the way)
        a.core.scheduler.observe_tpot("r1", 1.0)
        await eventually(
            lambda: _scorer(b).debug_state()[picked]["tpot_observed_over_predicted"] == 1.18,
            what="worker b to learn worker a's observed TPOT",
        )
        assert _scorer(a).debug_state()[picked]["tpot_observed_over_predicted"] == 1.18
        assert _scorer(b).debug_state()[other]["tpot_observed_over_predicted"] == 1.0

        # a sends the request: b's scheduler counts it there, b's own count (flow control) does not
        a.datastore.acquire(picked)
        await eventually(lambda: _seen_in_flight(b, picked) == 1, what="b to count a's request")
        assert _seen_in_flight(b, other) == 0
        assert all(e.in_flight == 0 for e in b.datastore.endpoints())
        assert _seen_started(b, picked) == 0
        a.datastore.start(picked, 4000)  # its first token streamed back: b counts a stream there
        await eventually(lambda: _seen_started(b, picked) == 1, what="b to count a's request as started")
        assert _seen_in_flight(b, picked) == 1
        assert all(e.in_flight_started == 0 for e in b.datastore.endpoints())
        # a exits with the request open: the gateway process tells b to stop counting it
        gateway._stopping = True  # no restart
        gone = gateway._workers[0]
        gone.proc = cast(asyncio.subprocess.Process, SimpleNamespace(pid=0, wait=_exited))
        await gateway._watch(gone)
        await eventually(lambda: _seen_in_flight(b, picked) == 0, what="b to forget a's requests")
    finally:
        for w in closing:
            w.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
