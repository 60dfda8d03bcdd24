"""KV events from a real ``infergate simulate`` process into the subscriber's bound socket: the
index learns the simulator's blocks under vLLM's own hashes (``sha256_cbor`` with the
``PYTHONHASHSEED`` the scorer is configured with), and a restart of the publisher (sequence numbers
back to 0) makes the index forget them and rebuild from the new process's events; the new process
runs another seed, so its blocks are matched by token ids instead, with the same result."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from infergate.scheduling.plugins.precise_prefix import PrecisePrefixParams, PrecisePrefixScorer
from infergate.scheduling.sdk.framework import CycleState
from infergate.types import Endpoint, EndpointMeta
from tests.integration.test_kvevents_routing import (
    MODEL,
    TIMEOUT,
    _scored,
    complete,
    listen_port,
    prompt,
    request,
    until_received,
)
from tests.support import async_wait_for, free_port, start_infergate


async def test_subscriber_learns_a_simulator_process_and_resyncs_on_restart(tmp_path: Path) -> None:
    zmq_port, http_port = free_port(), listen_port()
    s = PrecisePrefixScorer(
        PrecisePrefixParams.model_validate(
            {
                "kvEventsConfig": {"zmqEndpoint": f"tcp://127.0.0.1:{zmq_port}", "discoverPods": False},
                "tokenProcessorConfig": {"hashSeed": "99"},
                "prefixCachingHashAlgo": "sha256_cbor",
            }
        )
    )
    assert [name for name, _ in s.background_tasks()] == ["kv-events"]  # binds the socket
    task = asyncio.create_task(s.subscriber.run())
    topic = f"kv@127.0.0.1:{http_port}@{MODEL}"
    kv = json.dumps(
        {"enable_kv_cache_events": True, "endpoint": f"tcp://127.0.0.1:{zmq_port}", "topic": topic}
    )
    argv = [
        "simulate",
        "--host",
        "127.0.0.1",
        "--port",
        str(http_port),
        "--model",
        MODEL,
        "--time-scale",
        "0.05",
        "--prefix-caching-hash-algo",
        "sha256_cbor",
    ]
    argv += ["--kv-events-config", kv]
    endpoint = Endpoint(meta=EndpointMeta(name="sim", address="127.0.0.1", port=http_port))
    source = endpoint.key
    health = f"http://127.0.0.1:{http_port}/health"
    sim = start_infergate(argv, tmp_path, health_url=health, timeout=TIMEOUT, env={"PYTHONHASHSEED": "99"})
    try:
        p = prompt(1, 1)
        await until_received(http_port, lambda: s.index.is_live(source))
        await complete(http_port, p)
        await async_wait_for(
            lambda: _scored(s, p, endpoint), timeout=TIMEOUT, what="the prompt's blocks in the index"
        )
        assert s.score(request(p), [endpoint], CycleState())[source] > 0.9
        assert s.score(request(prompt(2, 1)), [endpoint], CycleState()) == {}
        assert s.subscriber.models[source] == MODEL
        scheme = s.index.scheme(source)
        assert scheme is not None and (scheme.algo, scheme.seed) == ("sha256_cbor", "99")
        resyncs = s.index.stats.resyncs
        sim.stop()
        sim = start_infergate(argv, tmp_path, health_url=health, timeout=TIMEOUT, env={"PYTHONHASHSEED": "7"})
        await until_received(http_port, lambda: s.index.stats.resyncs > resyncs)
        p2 = prompt(3, 1)
        await complete(http_port, p2)
        await async_wait_for(
            lambda: _scored(s, p2, endpoint), timeout=TIMEOUT, what="the new process's blocks in the index"
        )
        assert s.index.stats.resyncs == resyncs + 1
        assert s.index.scheme(source) is None and s.index.stats.hash_mismatches == 1  # seed 7: token keys
        assert s.score(request(p2), [endpoint], CycleState())[source] > 0.9
        assert s.score(request(p), [endpoint], CycleState()) == {}  # the old process's blocks are forgotten
    finally:
        sim.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
