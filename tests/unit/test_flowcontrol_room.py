"""Flow control under overload: released requests go only where there is room, and lower bands
leave headroom for the top band.

Both rules exist because of the overload benchmark (docs/overload.md): the scheduler's prefix and
LoRA affinity could send a request the gateway had just released to a replica whose own queue was
already full, where it waited inside the model server and priority no longer applied; and a flood
of priority 10 could take the last room a priority-20 request arriving a moment later needed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest

from infergate.datastore.store import Datastore
from infergate.flowcontrol import FlowControlConfig, FlowController, FlowCore, SaturationDetector
from infergate.requestcontrol.director import Director
from infergate.types import (
    Endpoint,
    EndpointMeta,
    EndpointMetrics,
    InferenceRequest,
    Objective,
    PoolSpec,
    SchedulingResult,
)
from tests.support import async_wait_for

MODEL = "m"


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


class AffinityScheduler:
    """Always prefers ``sticky`` when it is a candidate, like a strong prefix-cache hit would."""

    def __init__(self, sticky: str) -> None:
        self.sticky = sticky
        self.seen: list[list[str]] = []

    def schedule(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> SchedulingResult:
        self.seen.append([c.key for c in candidates])
        ordered = sorted(candidates, key=lambda c: (c.key != self.sticky, c.key))
        return SchedulingResult(profile="default", targets=tuple(ordered))

    def observe_ttft(self, request_id: str, ttft_seconds: float | None) -> None:
        return None

    def observe_tpot(self, request_id: str, tpot_seconds: float | None) -> None:
        return None

    def observe_answer(self, request_id: str, seconds: float | None, output_tokens: int | None) -> None:
        return None


def metas(n: int) -> list[EndpointMeta]:
    return [EndpointMeta(name=f"ep{i}", address=f"10.0.0.{i + 1}", port=8000) for i in range(n)]


def pool(clock: FakeClock, n: int, objectives: dict[str, int] | None = None) -> Datastore:
    ds = Datastore(clock, staleness=2.0)
    ds.set_pool(PoolSpec(name="pool"))
    for m in metas(n):
        ds.upsert_endpoint(m)
        ds.set_models(m.key, frozenset({MODEL}))
    for name, prio in (objectives or {}).items():
        ds.upsert_objective(Objective(name=name, priority=prio))
    return ds


def scrape(ds: Datastore, clock: FakeClock, key: str, waiting: int) -> None:
    ds.update_metrics(key, EndpointMetrics(waiting_queue_size=waiting, updated_at=clock.t))


def req(rid: str, priority: int) -> InferenceRequest:
    return InferenceRequest(request_id=rid, model=MODEL, target_model=MODEL, priority=priority, body_size=10)


def body() -> bytes:
    return json.dumps({"model": MODEL, "prompt": "hello", "max_tokens": 4}).encode()


def director(ds: Datastore, clock: FakeClock, config: FlowControlConfig, sticky: str) -> tuple[Director, Any]:
    flow = FlowController(ds, detector=SaturationDetector(), clock=clock, config=config)
    sched = AffinityScheduler(sticky)
    return Director(datastore=ds, scheduler=sched, flow=flow, clock=clock, check_models=False), sched


# -- route to room ------------------------------------------------------------------------------


async def test_admitted_request_is_scheduled_over_every_candidate() -> None:
    """Below saturation the scheduler, not flow control, weighs a replica's queue against its affinity."""
    clock = FakeClock()
    ds = pool(clock, 3)
    ep0, ep1, ep2 = (m.key for m in metas(3))
    scrape(ds, clock, ep0, 9)  # full: score 1.8
    scrape(ds, clock, ep1, 5)  # full: score 1.0
    scrape(ds, clock, ep2, 1)  # room; pool saturation (1 + 1 + 0.2) / 3 < 1: admitted at once
    d, sched = director(ds, clock, FlowControlConfig(), sticky=ep0)
    ctx = await d.handle_request(path="/v1/completions", headers={}, body=body())
    assert not ctx.released
    assert ctx.target.key == ep0
    assert sorted(sched.seen[-1]) == [ep0, ep1, ep2]


async def test_flow_control_off_keeps_every_candidate() -> None:
    clock = FakeClock()
    ds = pool(clock, 2)
    ep0, ep1 = (m.key for m in metas(2))
    scrape(ds, clock, ep0, 9)
    scrape(ds, clock, ep1, 0)
    d, sched = director(ds, clock, FlowControlConfig(enabled=False), sticky=ep0)
    ctx = await d.handle_request(path="/v1/completions", headers={}, body=body())
    assert ctx.target.key == ep0
    assert sorted(sched.seen[-1]) == [ep0, ep1]


def test_with_room_counts_in_flight_since_the_scrape_and_falls_back_when_none_has_room() -> None:
    clock = FakeClock()
    ds = pool(clock, 2, {"high": 20})  # narrowing serves the priority order: a pool with priorities
    ep0, ep1 = (m.key for m in metas(2))
    scrape(ds, clock, ep0, 5)
    scrape(ds, clock, ep1, 3)
    fc = FlowController(ds, detector=SaturationDetector(), clock=clock)
    assert [e.key for e in fc.with_room(ds.candidates())] == [ep1]
    ds.acquire(ep1)  # 3 + 1 waiting: still room
    assert [e.key for e in fc.with_room(ds.candidates())] == [ep1]
    ds.acquire(ep1)  # 3 + 2 = threshold: no endpoint has room, the scheduler gets them all
    assert sorted(e.key for e in fc.with_room(ds.candidates())) == [ep0, ep1]
    clock.t += 5  # stale metrics count as full too (the datastore no longer offers them anyway)
    assert len(fc.with_room(ds.endpoints())) == 2


async def test_released_requests_spread_over_the_endpoints_with_room_only() -> None:
    """Queued requests released one by one as room appears never go to the full sticky endpoint."""
    clock = FakeClock()
    ds = pool(clock, 3, {"high": 20})
    ep0, ep1, ep2 = (m.key for m in metas(3))
    for key in (ep0, ep1, ep2):
        scrape(ds, clock, key, 6)  # pool saturated: requests queue
    d, _ = director(ds, clock, FlowControlConfig(), sticky=ep0)
    tasks = [
        asyncio.create_task(
            d.handle_request(
                path="/v1/completions", headers={"x-gateway-inference-objective": "high"}, body=body()
            )
        )
        for _ in range(6)
    ]
    await asyncio.sleep(0)
    assert not any(t.done() for t in tasks)
    scrape(ds, clock, ep1, 2)  # three slots on ep1, ep0 stays full
    scrape(ds, clock, ep0, 6)

    async def three_done() -> bool:
        return sum(t.done() for t in tasks) == 3

    await async_wait_for(three_done, timeout=5, what="three released")
    assert {t.result().target.key for t in tasks if t.done()} == {ep1}
    scrape(ds, clock, ep2, 0)  # five more slots on ep2: the other three go there

    async def all_done() -> bool:
        return all(t.done() for t in tasks)

    await async_wait_for(all_done, timeout=5, what="all released")
    assert [t.result().target.key for t in tasks].count(ep0) == 0
    assert all(t.result().released for t in tasks)
    # the full ones stay last-resort fallbacks for a retry before the first byte
    assert ep0 in [e.key for e in tasks[0].result().result.targets[1:]]


def test_a_pool_without_priorities_is_not_narrowed() -> None:
    """With every request at the default priority the gateway's queue order is the servers' own,
    so released requests keep the scheduler's placement (their prefix and adapter affinity)."""
    clock = FakeClock()
    ds = pool(clock, 2)
    ep0, ep1 = (m.key for m in metas(2))
    scrape(ds, clock, ep0, 5)
    scrape(ds, clock, ep1, 3)
    fc = FlowController(ds, detector=SaturationDetector(), clock=clock)
    assert sorted(e.key for e in fc.with_room(ds.candidates())) == [ep0, ep1]
    ds.upsert_objective(Objective(name="batch", priority=-1))  # sheddable requests: now it narrows
    assert [e.key for e in fc.with_room(ds.candidates())] == [ep1]


async def test_without_the_rule_released_requests_follow_affinity_into_a_full_queue() -> None:
    """The control: with ``route_to_room=False`` a released request lands on the full sticky endpoint."""
    clock = FakeClock()
    ds = pool(clock, 3, {"high": 20})
    ep0, ep1, ep2 = (m.key for m in metas(3))
    for key in (ep0, ep1, ep2):
        scrape(ds, clock, key, 6)
    d, _ = director(ds, clock, FlowControlConfig(route_to_room=False), sticky=ep0)
    task = asyncio.create_task(
        d.handle_request(
            path="/v1/completions", headers={"x-gateway-inference-objective": "high"}, body=body()
        )
    )
    await asyncio.sleep(0)
    assert not task.done()
    scrape(ds, clock, ep1, 0)

    async def done() -> bool:
        return task.done()

    await async_wait_for(done, timeout=5, what="released")
    assert task.result().released and task.result().target.key == ep0


# -- headroom for the top band -------------------------------------------------------------------


def core(ds: Datastore, **config: Any) -> FlowCore:
    detector = SaturationDetector(track_in_flight=False)
    return FlowCore(ds, detector=detector, config=FlowControlConfig(**config))


def test_lower_band_is_held_back_at_the_headroom_while_the_top_band_passes() -> None:
    clock = FakeClock()
    ds = pool(clock, 1, {"high": 20, "low": 10, "shed": -1})
    key = metas(1)[0].key
    scrape(ds, clock, key, 4)  # saturation 0.8 = 1 - headroom
    fc = core(ds)
    assert fc.threshold(20) == 1.0
    assert fc.threshold(10) == pytest.approx(0.8)
    assert fc.offer(req("low", 10), clock.t).decision.value == "queued"
    # the queue is not empty, so the top band queues too, but it is released first and at once
    assert fc.offer(req("high", 20), clock.t).decision.value == "queued"
    assert fc.offer(req("shed", -1), clock.t).decision.value == "sheddable"
    first = fc.pop_ready(clock.t)
    assert first is not None and first.request.request_id == "high"
    assert fc.pop_ready(clock.t) is None  # low waits at 0.8
    scrape(ds, clock, key, 3)  # 0.6 < 0.8
    second = fc.pop_ready(clock.t)
    assert second is not None and second.request.request_id == "low"


def test_top_band_takes_the_fast_path_up_to_full_and_lower_bands_stop_short() -> None:
    clock = FakeClock()
    ds = pool(clock, 1, {"high": 20, "low": 10})
    key = metas(1)[0].key
    scrape(ds, clock, key, 4)
    fc = core(ds)
    assert fc.offer(req("h", 20), clock.t).decision.value == "admit"
    assert fc.offer(req("l", 10), clock.t).decision.value == "queued"


def test_headroom_zero_is_the_reference_rule() -> None:
    clock = FakeClock()
    ds = pool(clock, 1, {"high": 20, "low": 10})
    scrape(ds, clock, metas(1)[0].key, 4)
    fc = core(ds, headroom=0.0)
    assert fc.threshold(10) == 1.0
    assert fc.offer(req("l", 10), clock.t).decision.value == "admit"


def test_top_priority_can_be_set_and_defaults_to_the_request_without_objectives() -> None:
    clock = FakeClock()
    ds = pool(clock, 1)
    assert core(ds).threshold(0) == 1.0  # no objectives: nothing above it to make room for
    assert core(ds, top_priority=5).threshold(0) == pytest.approx(0.8)
    assert core(ds, top_priority=5).threshold(7) == 1.0
    with pytest.raises(ValueError):
        FlowControlConfig(headroom=1.0)


# -- backlog the server cannot see --------------------------------------------------------------


def test_requests_waiting_for_an_upstream_connection_count_as_queued() -> None:
    """A connection pool of max_num_seqs caps what the server can report as waiting; in-flight
    requests beyond the connection limit wait in the gateway and count as queued."""
    clock = FakeClock()
    ds = pool(clock, 1)
    key = metas(1)[0].key
    for _ in range(250):
        ds.acquire(key)
    ds.update_metrics(key, EndpointMetrics(waiting_queue_size=0, running_requests=250, updated_at=clock.t))
    d = SaturationDetector()  # connection_limit 256
    (e,) = ds.endpoints()
    assert d.effective_queue(e) == 0
    for _ in range(50):
        ds.acquire(
            key
        )  # 300 in flight: 6 more seated (assumed waiting in the server), 44 without a connection
    (e,) = ds.endpoints()
    assert d.effective_queue(e) == 6 + 44
    assert d.endpoint_score(e, clock.t) > 1.0
    # a new scrape sees the 6 seated ones running; the 44 still wait for a connection
    ds.update_metrics(
        key, EndpointMetrics(waiting_queue_size=0, running_requests=256, updated_at=clock.t + 0.05)
    )
    (e,) = ds.endpoints()
    assert d.effective_queue(e) == 44
    # the reference rule (no connection limit) forgets them at every scrape
    unlimited = SaturationDetector(connection_limit=None)
    assert unlimited.effective_queue(e) == 0
    for _ in range(42):
        ds.release(key)
    (e,) = ds.endpoints()
    assert d.effective_queue(e) == 2
