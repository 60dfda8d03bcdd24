"""Flow control: saturation rule, priority bands, round-robin fairness, FCFS, shedding, TTL,
cancellation, capacities and the fc_* metrics, against a real Datastore with synthetic metrics and
a clock the test controls."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from infergate.datastore.store import Datastore
from infergate.errors import NoCapacityError, RateLimitedError, RequestError
from infergate.flowcontrol import (
    Decision,
    FlowControlConfig,
    FlowController,
    FlowCore,
    ItemState,
    PriorityQueues,
    QueuedItem,
    SaturationDetector,
)
from infergate.telemetry import GatewayMetrics
from infergate.types import Endpoint, EndpointMeta, EndpointMetrics, InferenceRequest, PoolSpec
from tests.support import async_wait_for

META = EndpointMeta(name="pod-a", address="10.0.0.1", port=8000)
KEY = META.key


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


class Rig:
    """One pool of one endpoint, a flow controller on it, and a metrics registry."""

    def __init__(self, config: FlowControlConfig | None = None, **detector: Any) -> None:
        self.clock = FakeClock()
        self.ds = Datastore(self.clock, staleness=2.0)
        self.ds.set_pool(PoolSpec(name="pool-1"))
        self.ds.upsert_endpoint(META)
        self.metrics = GatewayMetrics(CollectorRegistry())
        self.fc = FlowController(
            self.ds,
            detector=SaturationDetector(**detector),
            clock=self.clock,
            config=config or FlowControlConfig(),
            metrics=self.metrics,
        )
        self.order: list[str] = []

    def scrape(self, waiting: int = 0, kv: float = 0.0, age: float = 0.0) -> None:
        self.ds.update_metrics(
            KEY,
            EndpointMetrics(waiting_queue_size=waiting, kv_cache_usage=kv, updated_at=self.clock.t - age),
        )

    async def client(self, req: InferenceRequest) -> None:
        """What the director does: admit, then schedule and count the request in flight."""
        await self.fc.admit(req)
        self.order.append(req.request_id)
        self.ds.acquire(KEY)

    def sample(self, name: str, **labels: str) -> float:
        total = 0.0
        for fam in text_string_to_metric_families(self.metrics.render().decode()):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    async def until_queued(self, n: int) -> None:
        async def check() -> bool:
            return self.fc.queued() == n

        await async_wait_for(check, timeout=5, what=f"{n} queued")

    async def until_order(self, n: int) -> None:
        async def check() -> bool:
            return len(self.order) >= n

        await async_wait_for(check, timeout=5, what=f"{n} dispatched")


def req(rid: str, priority: int = 0, flow: str = "default-flow", size: int = 100) -> InferenceRequest:
    return InferenceRequest(
        request_id=rid,
        model="m",
        target_model="m",
        priority=priority,
        fairness_id=flow,
        body_size=size,
    )


def run_once(coro: Coroutine[Any, Any, object]) -> None:
    """Drive ``coro`` one step: proves it finished without ever waiting (or raised at once)."""
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise AssertionError("admit() suspended instead of deciding at once")


# -- saturation detector -------------------------------------------------------------------------


def ep(
    waiting: int = 0,
    kv: float = 0.0,
    updated: float = 100.0,
    healthy: bool = True,
    in_flight: int = 0,
    started: int = 0,
) -> Endpoint:
    return Endpoint(
        meta=META,
        metrics=EndpointMetrics(waiting_queue_size=waiting, kv_cache_usage=kv, updated_at=updated),
        healthy=healthy,
        in_flight=in_flight,
        in_flight_started=started,
    )


def test_detector_reference_utilisation_rule() -> None:
    d = SaturationDetector(track_in_flight=False)
    assert d.endpoint_score(ep(waiting=5), 100.0) == pytest.approx(1.0)
    assert d.endpoint_score(ep(waiting=4), 100.0) == pytest.approx(0.8)
    # KV use counts only while requests wait: a busy server keeping up takes the next request
    assert d.endpoint_score(ep(kv=0.95), 100.0) == 0.0
    assert d.endpoint_score(ep(waiting=1, kv=0.8), 100.0) == pytest.approx(1.0)
    assert SaturationDetector(kv_requires_queue=False).endpoint_score(ep(kv=0.8), 100.0) == pytest.approx(1.0)
    assert d.endpoint_score(ep(waiting=1, kv=0.4), 100.0) == pytest.approx(0.5)
    assert d.is_saturated([ep(waiting=5)], 100.0)
    assert not d.is_saturated([ep(waiting=4, kv=0.79)], 100.0)
    # default: scores capped at 1 before the mean, so one idle endpoint keeps the pool unsaturated
    assert d.saturation([ep(waiting=0), ep(waiting=10)], 100.0) == pytest.approx(0.5)
    assert not d.is_saturated([ep(waiting=0), ep(waiting=10)], 100.0)
    assert d.is_saturated([ep(waiting=5), ep(waiting=10)], 100.0)
    # the reference's plain mean: one idle + one at 2.0 → mean 1.0 → saturated
    reference = SaturationDetector(aggregation="mean")
    assert reference.saturation([ep(waiting=0), ep(waiting=10)], 100.0) == pytest.approx(1.0)
    assert not SaturationDetector(aggregation="min").is_saturated([ep(waiting=0), ep(waiting=10)], 100.0)
    # unhealthy endpoints do not count; none left → saturated
    assert not d.is_saturated([ep(waiting=0), ep(waiting=50, healthy=False)], 100.0)
    assert d.is_saturated([ep(healthy=False)], 100.0)
    assert d.is_saturated([], 100.0)


def test_detector_stale_or_never_scraped_counts_as_saturated() -> None:
    d = SaturationDetector(staleness=2.0)
    assert d.endpoint_score(ep(updated=97.9), 100.0) == 1.0
    assert d.endpoint_score(ep(updated=0.0), 100.0) == 1.0
    assert d.endpoint_score(ep(updated=98.5), 100.0) == 0.0
    custom = SaturationDetector(queue_threshold=10, kv_threshold=0.5)
    assert custom.endpoint_score(ep(waiting=5, kv=0.1), 100.0) == pytest.approx(0.5)
    assert custom.endpoint_score(ep(waiting=1, kv=0.5), 100.0) == pytest.approx(1.0)


def test_detector_follows_in_flight_between_scrapes() -> None:
    d = SaturationDetector()
    assert d.effective_queue(ep(waiting=3, in_flight=7)) == 3  # baseline taken at this snapshot
    assert d.effective_queue(ep(waiting=3, in_flight=9)) == 5  # two sent since the scrape
    assert d.is_saturated([ep(waiting=3, in_flight=9)], 100.0)
    assert d.effective_queue(ep(waiting=3, in_flight=4)) == 0  # three finished
    assert d.effective_queue(ep(waiting=3, in_flight=0)) == 0  # never negative
    # a new scrape resets the baseline
    assert d.effective_queue(ep(waiting=1, updated=100.5, in_flight=0)) == 1
    assert d.effective_queue(ep(waiting=1, updated=100.5, in_flight=2)) == 3
    assert SaturationDetector(track_in_flight=False).effective_queue(ep(waiting=1, in_flight=9)) == 1


def test_detector_counts_requests_seen_to_start_between_scrapes() -> None:
    """Under a burst requests start (a streamed first token) long before any finishes: each start
    since the scrape leaves the server's queue, once, whether or not it has finished since."""
    d = SaturationDetector()
    assert d.effective_queue(ep(waiting=5, in_flight=20, started=10)) == 5  # the scrape: saturated
    assert d.is_saturated([ep(waiting=5, in_flight=20, started=10)], 100.0)
    # two of the waiting started: nothing finished, yet the queue is three
    assert d.effective_queue(ep(waiting=5, in_flight=20, started=12)) == 3
    assert not d.is_saturated([ep(waiting=5, in_flight=20, started=12)], 100.0)
    # one of them finished: still counted once (the in-flight change alone would say 4)
    assert d.effective_queue(ep(waiting=5, in_flight=19, started=11)) == 3
    # requests that were running at the scrape finishing count as before: in-flight change
    assert d.effective_queue(ep(waiting=5, in_flight=17, started=7)) == 2
    # sent since the scrape, not started: they wait
    assert d.effective_queue(ep(waiting=5, in_flight=23, started=12)) == 6
    # where nothing is seen to start (answers not streamed) only finishing requests count
    plain = SaturationDetector()
    assert plain.effective_queue(ep(waiting=5, in_flight=20)) == 5
    assert plain.effective_queue(ep(waiting=5, in_flight=18)) == 3


# -- controller ----------------------------------------------------------------------------------


async def test_not_saturated_admits_without_waiting() -> None:
    rig = Rig()
    rig.scrape(waiting=0, kv=0.1)
    run_once(rig.fc.admit(req("a")))
    run_once(rig.fc.admit(req("shed", priority=-1)))
    assert rig.fc.queued() == 0
    labels = {"outcome": "Dispatched", "priority": "0", "inference_pool": "pool-1"}
    assert rig.sample("inference_extension_flow_control_request_queue_duration_seconds_count", **labels) == 1


async def test_higher_band_dispatched_first_one_at_a_time() -> None:
    rig = Rig()
    rig.scrape(waiting=5)
    tasks = [asyncio.create_task(rig.client(req(f"p10-{i}", priority=10))) for i in range(2)]
    await rig.until_queued(2)
    tasks += [asyncio.create_task(rig.client(req(f"p20-{i}", priority=20))) for i in range(2)]
    await rig.until_queued(4)
    assert [b.priority for b in rig.fc.snapshot()] == [20, 10]
    assert rig.order == []
    # room for exactly one: waiting 4 → 0.8; after the dispatched request is in flight → 1.0
    rig.scrape(waiting=4)
    await rig.until_order(1)
    assert rig.fc.queued() == 3
    # the gateway's own in-flight drops (a request finished): next one goes, no scrape needed
    rig.ds.release(KEY)
    await rig.until_order(2)
    assert rig.fc.queued() == 2
    rig.scrape(waiting=0)  # plenty of room: everything drains, still in priority order
    await asyncio.gather(*tasks)
    assert rig.order == ["p20-0", "p20-1", "p10-0", "p10-1"]
    assert rig.sample("inference_extension_flow_control_queue_size") == 0


async def test_a_request_seen_to_start_releases_the_next_without_a_scrape() -> None:
    """A streamed first token (``Datastore.start``) wakes the dispatcher, which now counts that
    request as gone from the server's queue: the next one goes before any scrape or finish."""
    rig = Rig()
    for _ in range(3):
        rig.ds.acquire(KEY)  # three in flight, not yet started
    rig.scrape(waiting=5)
    task = asyncio.create_task(rig.client(req("next")))
    await rig.until_queued(1)
    rig.ds.start(KEY, 0)  # one of the waiting three started: 4 of 5 waiting
    await rig.until_order(1)
    await task
    assert rig.order == ["next"]


async def test_round_robin_between_flows_fcfs_within_flow() -> None:
    rig = Rig()
    rig.scrape(waiting=5)
    tasks = []
    for rid, flow in [("a1", "A"), ("a2", "A"), ("a3", "A"), ("b1", "B"), ("b2", "B")]:
        tasks.append(asyncio.create_task(rig.client(req(rid, flow=flow))))
        await rig.until_queued(len(tasks))
    band = rig.fc.snapshot()[0]
    assert [(f.fairness_id, f.queued) for f in band.flows] == [("A", 3), ("B", 2)]
    assert rig.sample("inference_extension_flow_control_queue_size", fairness_id="A") == 3
    rig.scrape(waiting=4)  # one slot; each release frees the next
    for n in range(1, 6):
        await rig.until_order(n)
        rig.ds.release(KEY)
    await asyncio.gather(*tasks)
    assert rig.order == ["a1", "b1", "a2", "b2", "a3"]


async def test_sheddable_rejected_at_once_when_saturated() -> None:
    rig = Rig(FlowControlConfig(retry_after=1.0))
    rig.scrape(waiting=7)
    with pytest.raises(RateLimitedError) as info:
        run_once(rig.fc.admit(req("shed", priority=-5)))
    err = info.value
    assert err.status == 429 and err.retry_after == 1.0
    body = err.to_openai()["error"]
    assert isinstance(body, dict) and body["type"] == "rate_limit_error"
    assert rig.fc.queued() == 0
    assert rig.sample("inference_extension_flow_control_rejected_requests_total", reason="sheddable") == 1
    assert (
        rig.sample("inference_extension_flow_control_pool_saturation", inference_pool="pool-1") == 1.0
    )  # capped per endpoint (1.4 uncapped)


async def test_sheddable_rejected_while_others_wait() -> None:
    rig = Rig()
    rig.scrape(waiting=5)
    task = asyncio.create_task(rig.client(req("p0")))
    await rig.until_queued(1)
    rig.ds.update_metrics(KEY, EndpointMetrics(waiting_queue_size=4, updated_at=rig.clock.t))
    # the listener kicked a dispatch cycle, but it has not run yet: p0 still waits
    assert rig.fc.queued() == 1
    with pytest.raises(RateLimitedError):
        run_once(rig.fc.admit(req("shed", priority=-1)))
    await asyncio.wait_for(task, 60)


async def test_ttl_expiry_answers_429_with_the_dropped_reason() -> None:
    # the reference (llm-d-router v0.10): a TTL eviction while the pool has endpoints is backpressure
    rig = Rig(FlowControlConfig(default_ttl=5.0))
    rig.scrape(waiting=5)
    task = asyncio.create_task(rig.fc.admit(req("slow", priority=10)))
    await rig.until_queued(1)
    rig.clock.t += 4.0
    rig.scrape(waiting=5)  # still saturated, still within TTL
    rig.fc.poke()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not task.done() and rig.fc.queued() == 1
    rig.clock.t += 1.5
    rig.fc.poke()
    with pytest.raises(RateLimitedError) as info:
        await asyncio.wait_for(task, 60)
    assert info.value.status == 429
    assert "timed out" in info.value.message
    assert info.value.headers == {"x-llm-d-request-dropped-reason": "rejected-ttl-expired"}
    assert rig.fc.queued() == 0
    assert rig.sample("inference_extension_flow_control_queue_size") == 0
    ttl = {"outcome": "EvictedTTL", "priority": "10"}
    assert rig.sample("inference_extension_flow_control_request_queue_duration_seconds_count", **ttl) == 1
    assert rig.sample("inference_extension_flow_control_request_queue_duration_seconds_sum", **ttl) == 5.5


async def test_ttl_timer_fires_without_any_event() -> None:
    # real clock: nothing changes in the datastore, the TTL timer alone must answer
    ds = Datastore(staleness=2.0)
    ds.upsert_endpoint(META)
    fc = FlowController(
        ds,
        detector=SaturationDetector(),
        config=FlowControlConfig(default_ttl=0.2, recheck_interval=10.0),
    )
    with pytest.raises(RateLimitedError):  # never scraped → saturated → queued → 429 at TTL
        await asyncio.wait_for(fc.admit(req("x")), 60)
    assert fc.queued() == 0


async def test_cancellation_leaves_queue_at_once() -> None:
    rig = Rig()
    rig.scrape(waiting=5)
    task = asyncio.create_task(rig.client(req("gone", flow="F", size=300)))
    await rig.until_queued(1)
    assert rig.sample("inference_extension_flow_control_queue_bytes", fairness_id="F") == 300
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rig.fc.queued() == 0
    assert rig.fc.snapshot() == []
    assert rig.sample("inference_extension_flow_control_queue_size", fairness_id="F") == 0
    assert rig.sample("inference_extension_flow_control_queue_bytes", fairness_id="F") == 0
    cancelled = {"outcome": "EvictedContextCancelled", "fairness_id": "F"}
    assert (
        rig.sample("inference_extension_flow_control_request_queue_duration_seconds_count", **cancelled) == 1
    )
    # the next request is not blocked by a ghost
    rig.scrape(waiting=0)
    await asyncio.wait_for(rig.client(req("next")), 60)
    assert rig.order == ["next"]


async def test_capacity_limits_reject_with_429() -> None:
    rig = Rig(FlowControlConfig(band_max_requests=2, band_max_bytes=1000, max_requests=4))
    rig.scrape(waiting=5)
    tasks = [asyncio.create_task(rig.client(req(f"r{i}", priority=1, size=10))) for i in range(2)]
    await rig.until_queued(2)
    with pytest.raises(RateLimitedError) as info:
        run_once(rig.fc.admit(req("r3", priority=1, size=10)))
    assert "capacity" in info.value.message and info.value.retry_after == 1.0
    # another band still has room, but not for a body over the band's byte limit
    with pytest.raises(RateLimitedError):
        run_once(rig.fc.admit(req("big", priority=2, size=1001)))
    tasks.append(asyncio.create_task(rig.client(req("p2", priority=2, size=1000))))
    tasks.append(asyncio.create_task(rig.client(req("p3", priority=3, size=10))))
    await rig.until_queued(4)
    with pytest.raises(RateLimitedError):  # global count limit
        run_once(rig.fc.admit(req("p4", priority=4, size=1)))
    assert rig.sample("inference_extension_flow_control_rejected_requests_total", reason="capacity") == 3
    rig.scrape(waiting=0)
    await asyncio.gather(*tasks)
    assert rig.order == ["p3", "p2", "r0", "r1"]


async def test_stale_metrics_hold_requests_until_fresh() -> None:
    rig = Rig()
    rig.scrape(waiting=0, age=3.0)  # idle but stale
    with pytest.raises(RateLimitedError):
        run_once(rig.fc.admit(req("shed", priority=-1)))
    task = asyncio.create_task(rig.client(req("wait")))
    await rig.until_queued(1)
    rig.scrape(waiting=0)  # fresh again
    await asyncio.wait_for(task, 60)
    assert rig.order == ["wait"]


async def test_unhealthy_endpoint_leaves_pool_saturated() -> None:
    rig = Rig()
    rig.scrape(waiting=0)
    rig.ds.set_healthy(KEY, False)
    task = asyncio.create_task(rig.client(req("x")))
    await rig.until_queued(1)
    rig.ds.set_healthy(KEY, True)
    await asyncio.wait_for(task, 60)


async def test_disabled_flow_control_is_legacy_admission() -> None:
    rig = Rig(FlowControlConfig(enabled=False))
    rig.scrape(waiting=9)
    run_once(rig.fc.admit(req("p0")))
    with pytest.raises(RateLimitedError):
        run_once(rig.fc.admit(req("shed", priority=-1)))
    assert rig.fc.queued() == 0


async def test_newcomers_do_not_overtake_queued_requests() -> None:
    rig = Rig()
    rig.scrape(waiting=5)
    first = asyncio.create_task(rig.client(req("first", priority=5)))
    await rig.until_queued(1)
    # room for one: the queued request is released first; the newcomer, judged with the released
    # one counted as landed, finds no room and waits its turn
    rig.scrape(waiting=4)
    second = asyncio.create_task(rig.client(req("second", priority=5)))
    await first
    await rig.until_queued(1)
    assert rig.order == ["first"]
    rig.ds.release(KEY)  # the first finished: room for the second
    await second
    assert rig.order == ["first", "second"]


async def test_room_admits_newcomers_while_a_released_request_is_in_transit() -> None:
    """A released request not in flight yet does not force newcomers through the queue when the
    pool has room even counting it (the fast path stays the fast path under steady load)."""
    rig = Rig()
    rig.scrape(waiting=5)
    first = asyncio.create_task(rig.client(req("first")))
    await rig.until_queued(1)
    seen: list[object] = []

    def after_cycle() -> None:
        # runs after the dispatch cycle the scrape kicked, before the released task resumes
        seen.append((rig.fc.queued(), list(rig.order)))
        coro = rig.fc.admit(req("newcomer"))
        try:
            coro.send(None)
        except StopIteration:
            seen.append("admitted at once")
            return
        coro.close()
        seen.append("suspended")

    rig.scrape(waiting=0)
    asyncio.get_running_loop().call_soon(after_cycle)
    await first
    assert seen == [(0, []), "admitted at once"]


async def test_one_cycle_releases_as_many_as_the_pool_has_room_for() -> None:
    rig = Rig()
    rig.scrape(waiting=5)
    tasks = [asyncio.create_task(rig.client(req(f"r{i}"))) for i in range(3)]
    await rig.until_queued(3)
    left: list[int] = []
    # waiting 3 of 5: room for two more, counting each released request as landed
    rig.scrape(waiting=3)
    asyncio.get_running_loop().call_soon(lambda: left.append(rig.fc.queued()))
    await rig.until_order(2)
    assert left == [1]
    rig.ds.release(KEY)
    await asyncio.gather(*tasks)
    assert rig.order == ["r0", "r1", "r2"]


def test_pending_releases_count_as_landed_on_every_endpoint() -> None:
    clock = FakeClock()
    ds = Datastore(clock, staleness=2.0)
    ds.set_pool(PoolSpec(name="pool-1"))
    other = EndpointMeta(name="pod-b", address="10.0.0.2", port=8000)
    for meta, waiting in ((META, 5), (other, 4)):
        ds.upsert_endpoint(meta)
        ds.update_metrics(meta.key, EndpointMetrics(waiting_queue_size=waiting, updated_at=clock.t))
    core = FlowCore(ds, detector=SaturationDetector(), config=FlowControlConfig())
    assert core.saturation(clock.t) == pytest.approx(0.9)  # (1.0 + 0.8) / 2
    assert core.saturation(clock.t, pending=1) == pytest.approx(1.0)  # b would be full too
    assert core.offer(req("a"), clock.t, pending=1).decision is Decision.QUEUED
    assert core.pop_ready(clock.t, pending=1) is None
    assert core.pop_ready(clock.t) is not None


async def test_close_answers_waiters_503() -> None:
    rig = Rig()
    rig.scrape(waiting=5)
    task = asyncio.create_task(rig.fc.admit(req("w")))
    await rig.until_queued(1)
    rig.fc.close()
    with pytest.raises(NoCapacityError):
        await asyncio.wait_for(task, 60)
    with pytest.raises(RequestError):
        run_once(rig.fc.admit(req("late")))


# -- properties ----------------------------------------------------------------------------------


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, int, str, int]]:
    ops = st.one_of(
        st.tuples(st.just("push"), st.integers(-2, 3), st.sampled_from(["A", "B", "C"]), st.integers(0, 50)),
        st.tuples(st.just("pop"), st.just(0), st.just(""), st.just(0)),
        st.tuples(st.just("remove"), st.integers(0, 40), st.just(""), st.just(0)),
    )
    return draw(st.lists(ops, max_size=80))


@settings(max_examples=200, deadline=None)
@given(operations())
def test_queue_ordering_invariants(ops: list[tuple[str, int, str, int]]) -> None:
    """Against a plain model: strict priority, round-robin rotation of flows, FCFS within a flow,
    exact counts and bytes after any mix of pushes, pops and removals."""
    q = PriorityQueues()
    # model: priority -> list of [fairness_id, [items]] in rotation order
    model: dict[int, list[tuple[str, list[QueuedItem]]]] = {}
    live: list[QueuedItem] = []
    seq = 0
    for op, a, flow, size in ops:
        if op == "push":
            item = QueuedItem(
                request=req(f"r{seq}", a, flow), size=size, enqueued_at=0.0, deadline=None, seq=seq
            )
            seq += 1
            q.push(item)
            live.append(item)
            band = model.setdefault(a, [])
            for fid, items in band:
                if fid == flow:
                    items.append(item)
                    break
            else:
                band.append((flow, [item]))
        elif op == "pop":
            got = q.pop()
            if not model:
                assert got is None
                continue
            top = max(model)
            fid, items = model[top].pop(0)
            expected = items.pop(0)
            if items:
                model[top].append((fid, items))
            if not model[top]:
                del model[top]
            assert got is expected
            assert got.priority == max(i.priority for i in live)
            assert got.seq == min(i.seq for i in live if i.fairness_id == fid and i.priority == top)
            live.remove(got)
        else:
            if not live:
                assert not q.remove(
                    QueuedItem(request=req("x"), size=0, enqueued_at=0, deadline=None, seq=-1)
                )
                continue
            victim = live.pop(a % len(live))
            assert q.remove(victim)
            assert not q.remove(victim)
            band = model[victim.priority]
            for idx, (fid, items) in enumerate(band):
                if fid == victim.fairness_id:
                    items.remove(victim)
                    if not items:
                        del band[idx]
                    break
            if not band:
                del model[victim.priority]
        assert len(q) == len(live)
        assert q.bytes == sum(i.size for i in live)
        snap = q.snapshot()
        assert [b.priority for b in snap] == sorted(model, reverse=True)
        for b in snap:
            assert [f.fairness_id for f in b.flows] == [fid for fid, _ in model[b.priority]]
            assert b.queued == sum(f.queued for f in b.flows)


async def test_many_clients_with_cancellations_leave_no_residue() -> None:
    """Stress: 300 clients of mixed priorities, a third cancelled while waiting; capacity frees in
    bursts. Every survivor is dispatched exactly once, bands in order, and all gauges return to 0."""
    rig = Rig(FlowControlConfig(default_ttl=None))
    rig.scrape(waiting=5)
    rng = random.Random(7)
    tasks: dict[str, asyncio.Task[None]] = {}
    prio: dict[str, int] = {}
    for i in range(300):
        rid = f"r{i}"
        prio[rid] = rng.choice([0, 10, 20])
        tasks[rid] = asyncio.create_task(rig.client(req(rid, prio[rid], flow=rng.choice("xyz"))))
    await rig.until_queued(300)
    cancelled = set(rng.sample(sorted(tasks), 100))
    for rid in cancelled:
        tasks[rid].cancel()
    await rig.until_queued(200)
    rig.scrape(waiting=0)
    # room for 5 at a time; finishing requests release capacity in bursts
    while len(rig.order) < 200:
        n = len(rig.order)
        await rig.until_order(min(200, n + 1))
        for _ in range(len(rig.order) - n):
            rig.ds.release(KEY)
    await asyncio.gather(*(t for rid, t in tasks.items() if rid not in cancelled))
    assert sorted(rig.order) == sorted(set(tasks) - cancelled)
    assert [prio[r] for r in rig.order] == sorted((prio[r] for r in rig.order), reverse=True)
    assert rig.fc.queued() == 0 and rig.fc.core.queued_bytes == 0
    assert rig.sample("inference_extension_flow_control_queue_size") == 0
    assert rig.sample("inference_extension_flow_control_queue_bytes") == 0


def test_core_runs_without_asyncio_on_a_virtual_clock() -> None:
    """The digital twin drives FlowCore directly: offer, pop_ready after each schedule, expire."""
    clock = FakeClock(10.0)
    ds = Datastore(clock)
    ds.upsert_endpoint(META)
    ds.update_metrics(KEY, EndpointMetrics(waiting_queue_size=5, updated_at=10.0))
    core = FlowCore(ds, detector=SaturationDetector(), config=FlowControlConfig(default_ttl=2.0))
    assert core.offer(req("shed", priority=-1), 10.0).decision is Decision.REJECT_SHED
    a = core.offer(req("a", priority=1), 10.0)
    b = core.offer(req("b", priority=2), 10.5)
    assert a.decision is b.decision is Decision.QUEUED
    assert core.pop_ready(10.5) is None  # saturated
    ds.update_metrics(KEY, EndpointMetrics(waiting_queue_size=4, updated_at=11.0))
    got = core.pop_ready(11.0)
    assert got is b.item and got is not None and got.state is ItemState.DISPATCHED
    ds.acquire(KEY)
    assert core.pop_ready(11.0) is None  # the dispatched one filled the last slot
    assert core.next_deadline() == 12.0
    assert core.expire(11.9) == []
    assert core.expire(12.0) == [a.item]
    assert len(core) == 0


async def test_queue_duration_series_count_every_request_across_cache_resets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import infergate.flowcontrol.core as core_module

    monkeypatch.setattr(core_module, "_SERIES_CACHE", 2)
    rig = Rig()
    rig.scrape(waiting=0)
    for i in range(7):
        run_once(rig.fc.admit(req(f"r{i}", flow=f"tenant-{i % 3}")))
    name = "inference_extension_flow_control_request_queue_duration_seconds_count"
    assert [rig.sample(name, fairness_id=f"tenant-{t}", outcome="Dispatched") for t in range(3)] == [3, 2, 2]


async def test_saturation_gauge_follows_the_pool_name() -> None:
    rig = Rig()
    rig.scrape(waiting=2)
    run_once(rig.fc.admit(req("a")))
    rig.ds.set_pool(PoolSpec(name="pool-2"))
    rig.scrape(waiting=1)
    run_once(rig.fc.admit(req("b")))
    gauge = "inference_extension_flow_control_pool_saturation"
    assert rig.sample(gauge, inference_pool="pool-1") == pytest.approx(0.4)
    assert rig.sample(gauge, inference_pool="pool-2") == pytest.approx(0.2)
