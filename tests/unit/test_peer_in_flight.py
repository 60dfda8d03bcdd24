"""Other gateway workers' in-flight counts (``proxy.workers``, issue #18): the scheduler counts
them, flow control and ``Endpoint.in_flight`` do not; the twin's workers pass them on as the real
ones do."""

from __future__ import annotations

import random
from dataclasses import replace

from infergate.bench.strategies import picker_config
from infergate.bench.twin import TwinConfig, run_twin
from infergate.bench.workloads import generate, load_workload
from infergate.datastore.store import Datastore
from infergate.requestcontrol.core import RequestCore
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.types import EndpointMeta, EndpointMetrics, InferenceRequest

BASE = "base"


class Clock:
    def now(self) -> float:
        return 10.0


def _pool(n: int = 2) -> Datastore:
    ds = Datastore(Clock(), staleness=2.0)
    for i in range(n):
        meta = EndpointMeta(name=f"ep{i}", address=f"10.0.0.{i + 1}", port=8000)
        ds.upsert_endpoint(meta)
        ds.update_metrics(meta.key, EndpointMetrics(updated_at=10.0))
        ds.set_models(meta.key, frozenset({BASE}))
    return ds


def test_peer_counts_add_to_the_schedulers_view_only() -> None:
    ds = _pool()
    a, b = "10.0.0.1:8000", "10.0.0.2:8000"
    ds.acquire(a)
    ds.set_peer_in_flight(1, b, 3)
    ds.set_peer_in_flight(2, b, 2)
    ds.set_peer_in_flight(2, a, 1)
    seen = {e.key: e.in_flight for e in ds.with_peer_in_flight(ds.endpoints())}
    assert seen == {a: 2, b: 5}
    # the datastore's own counts (flow control, the late-scrape correction) stay this process's
    assert {e.key: e.in_flight for e in ds.endpoints()} == {a: 1, b: 0}
    ds.set_peer_in_flight(1, b, 0)  # worker 1's requests there finished
    assert {e.key: e.in_flight for e in ds.with_peer_in_flight(ds.endpoints())} == {a: 2, b: 2}
    ds.forget_peer(2)  # worker 2 exited
    assert {e.key: e.in_flight for e in ds.with_peer_in_flight(ds.endpoints())} == {a: 1, b: 0}
    ds.set_peer_in_flight(1, b, 4)
    ds.remove_endpoint(b)
    ds.upsert_endpoint(EndpointMeta(name="ep1", address="10.0.0.2", port=8000))
    assert {e.key: e.in_flight for e in ds.with_peer_in_flight(ds.endpoints())} == {a: 1, b: 0}


def test_peer_counts_of_started_requests_add_to_the_schedulers_view_only() -> None:
    """The streams other workers have seen start count toward ``in_flight_started`` as their
    requests count toward ``in_flight`` (never more than those), for scheduling only."""
    ds = _pool()
    a, b = "10.0.0.1:8000", "10.0.0.2:8000"
    ds.acquire(a)
    ds.acquire(a)
    ds.start(a, 0)
    ds.set_peer_in_flight(1, a, 3, started=2)
    ds.set_peer_in_flight(2, b, 2, started=5)  # a stale count can say more started than sent
    seen = {e.key: (e.in_flight, e.in_flight_started) for e in ds.with_peer_in_flight(ds.endpoints())}
    assert seen == {a: (5, 3), b: (2, 2)}
    assert {e.key: e.in_flight_started for e in ds.endpoints()} == {a: 1, b: 0}
    ds.set_peer_in_flight(1, a, 3)  # a count without starts (an older worker) counts none
    assert next(e for e in ds.with_peer_in_flight(ds.endpoints()) if e.key == a).in_flight_started == 1


def test_the_core_schedules_on_every_workers_in_flight_counts() -> None:
    ds = _pool()
    a, b = "10.0.0.1:8000", "10.0.0.2:8000"
    sched = build_scheduler(picker_config("least-in-flight"), rng=random.Random(0), clock=Clock())
    core = RequestCore(datastore=ds, scheduler=sched, rng=random.Random(0))
    request = InferenceRequest(request_id="r", model=BASE, target_model=BASE, prompt="hi")
    ds.acquire(a)  # this worker: one request on a
    assert core.schedule(request).primary.key == b
    ds.set_peer_in_flight(1, b, 2)  # another worker: two on b
    assert core.schedule(request).primary.key == a


def test_twin_workers_schedule_on_each_others_in_flight_requests() -> None:
    """Three workers, three replicas, one long request per worker 10 ms apart, least-in-flight:
    counting each other's requests (2 ms late) they put them on three replicas, with every
    scheduler seed; counting only its own, each worker sees an idle pool and picks at random."""
    requests = [replace(r, max_tokens=400) for r in generate(load_workload("many-tenants"))[:3]]
    offsets = [0.0, 0.01, 0.02]

    def spread(seed: int, share: bool) -> int:
        cfg = TwinConfig(replicas=3, adapters=(), gateway_workers=3, share_in_flight=share, seed=seed)
        out = run_twin(requests, offsets, strategy="least-in-flight", config=cfg)
        assert all(r.status == 200 for r in out.records)
        return sum(1 for n in out.per_endpoint_requests.values() if n > 0)

    assert all(spread(seed, share=True) == 3 for seed in range(8))
    assert any(spread(seed, share=False) < 3 for seed in range(8))
