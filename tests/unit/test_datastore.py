"""Datastore: immutable snapshots, freshness, health, in-flight counting, listeners, objectives."""

from __future__ import annotations

import dataclasses
import random

import pytest

from infergate.datastore import Datastore
from infergate.types import EndpointMeta, EndpointMetrics, ModelRewrite, Objective, PoolSpec


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


def meta(name: str, port: int = 8000, **labels: str) -> EndpointMeta:
    return EndpointMeta(name=name, address=f"10.0.0.{name[-1]}", port=port, labels=labels)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ds(clock: FakeClock) -> Datastore:
    return Datastore(clock, staleness=2.0)


def test_snapshots_are_swapped_never_mutated(ds: Datastore, clock: FakeClock) -> None:
    ds.upsert_endpoint(meta("p1"))
    key = "10.0.0.1:8000"
    before = ds.endpoint(key)
    assert before is not None
    ds.update_metrics(key, EndpointMetrics(waiting_queue_size=3, updated_at=clock.t))
    after = ds.endpoint(key)
    assert after is not None and after is not before
    assert before.metrics.waiting_queue_size == 0
    assert after.metrics.waiting_queue_size == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.in_flight = 5  # type: ignore[misc]
    listed = ds.endpoints()
    ds.acquire(key)
    assert listed[0].in_flight == 0  # a list handed out earlier never changes
    assert ds.endpoints()[0].in_flight == 1


def test_upsert_keeps_live_state_and_remove_forgets(ds: Datastore, clock: FakeClock) -> None:
    ds.upsert_endpoint(meta("p1"))
    key = "10.0.0.1:8000"
    ds.update_metrics(key, EndpointMetrics(kv_cache_usage=0.5, updated_at=clock.t))
    ds.acquire(key)
    ds.set_healthy(key, False)
    ds.upsert_endpoint(meta("p1", app="x"))  # relabel
    ep = ds.endpoint(key)
    assert ep is not None
    assert ep.meta.labels == {"app": "x"}
    assert (ep.metrics.kv_cache_usage, ep.in_flight, ep.healthy) == (0.5, 1, False)
    ds.remove_endpoint(key)
    assert ds.endpoint(key) is None and ds.endpoints() == []
    ds.remove_endpoint(key)  # idempotent
    ds.update_metrics(key, EndpointMetrics(updated_at=clock.t))  # late scrape is ignored
    assert ds.endpoint(key) is None


@pytest.mark.parametrize(
    ("updated_at", "now", "fresh"),
    [
        (0.0, 100.0, False),  # never scraped
        (100.0, 100.0, True),  # just scraped
        (98.0, 100.0, True),  # exactly at the staleness bound
        (97.9, 100.0, False),  # older than staleness
    ],
)
def test_candidates_need_fresh_metrics(
    ds: Datastore, clock: FakeClock, updated_at: float, now: float, fresh: bool
) -> None:
    ds.upsert_endpoint(meta("p1"))
    ds.update_metrics("10.0.0.1:8000", EndpointMetrics(updated_at=updated_at))
    clock.t = now
    assert [e.key for e in ds.candidates()] == (["10.0.0.1:8000"] if fresh else [])
    assert len(ds.endpoints()) == 1


def test_candidates_exclude_unhealthy_and_go_stale_with_time(ds: Datastore, clock: FakeClock) -> None:
    for n in ("p1", "p2"):
        ds.upsert_endpoint(meta(n))
        ds.update_metrics(f"10.0.0.{n[-1]}:8000", EndpointMetrics(updated_at=clock.t))
    ds.set_healthy("10.0.0.2:8000", False)
    assert [e.key for e in ds.candidates()] == ["10.0.0.1:8000"]
    clock.t += 2.5
    assert ds.candidates() == []
    ds.set_healthy("10.0.0.2:8000", True)
    ds.update_metrics("10.0.0.2:8000", EndpointMetrics(updated_at=clock.t))
    assert [e.key for e in ds.candidates()] == ["10.0.0.2:8000"]


def test_in_flight_counts_and_never_goes_negative(ds: Datastore) -> None:
    ds.upsert_endpoint(meta("p1"))
    key = "10.0.0.1:8000"
    for _ in range(3):
        ds.acquire(key)
    ds.release(key)
    ep = ds.endpoint(key)
    assert ep is not None and ep.in_flight == 2
    for _ in range(5):
        ds.release(key)
    ep = ds.endpoint(key)
    assert ep is not None and ep.in_flight == 0
    ds.acquire("unknown:1")  # no error, no entry
    assert ds.endpoint("unknown:1") is None


def test_a_listener_may_leave_out_the_in_flight_counts(ds: Datastore, clock: FakeClock) -> None:
    """Membership, metrics and health still reach it; acquire and release (twice per request) do not."""
    every: list[str] = []
    state: list[str] = []
    ds.add_listener(lambda: every.append("x"))
    unsubscribe = ds.add_listener(lambda: state.append("x"), in_flight=False)
    ds.upsert_endpoint(meta("p1"))
    key = "10.0.0.1:8000"
    ds.update_metrics(key, EndpointMetrics(updated_at=clock.t))
    ds.set_healthy(key, False)
    assert len(every) == len(state) == 3
    ds.acquire(key)
    ds.release(key)
    assert len(every) == 5 and len(state) == 3
    unsubscribe()
    unsubscribe()
    ds.remove_endpoint(key)
    assert len(every) == 6 and len(state) == 3


def test_listeners_called_synchronously_and_unsubscribe(ds: Datastore, clock: FakeClock) -> None:
    calls: list[int] = []
    unsubscribe = ds.add_listener(lambda: calls.append(len(ds.endpoints())))

    def broken() -> None:
        raise RuntimeError("listener bug")

    ds.add_listener(broken)
    ds.upsert_endpoint(meta("p1"))
    assert calls == [1]  # already called when upsert returns
    key = "10.0.0.1:8000"
    ds.update_metrics(key, EndpointMetrics(updated_at=clock.t))
    ds.set_healthy(key, False)
    ds.set_healthy(key, False)  # no change → no call
    ds.acquire(key)
    ds.release(key)
    assert len(calls) == 5
    unsubscribe()
    unsubscribe()
    ds.remove_endpoint(key)
    assert len(calls) == 5


def test_models_pool_objectives_rewrites(ds: Datastore) -> None:
    ds.set_pool(PoolSpec(name="pool", selector={"app": "vllm"}))
    assert ds.pool is not None and ds.pool.name == "pool"
    ds.upsert_endpoint(meta("p1"))
    ds.upsert_endpoint(meta("p2"))
    ds.set_models("10.0.0.1:8000", frozenset({"base", "food-review"}))
    ds.set_models("10.0.0.2:8000", frozenset({"base"}))
    ds.set_models("10.0.0.9:8000", frozenset({"ghost"}))  # unknown endpoint ignored
    ds.set_healthy("10.0.0.1:8000", False)
    assert ds.served_models() == {"base", "food-review"}  # unhealthy still counts (503, not 404)
    ds.remove_endpoint("10.0.0.1:8000")
    assert ds.served_models() == {"base"}

    ds.upsert_objective(Objective(name="food-review", priority=10))
    ds.upsert_objective(Objective(name="food-review", priority=11))
    ds.upsert_objective(Objective(name="batch", priority=-1))
    obj = ds.objective("food-review")
    assert obj is not None and obj.priority == 11
    ds.remove_objective("batch")
    assert [o.name for o in ds.objectives()] == ["food-review"]
    assert ds.objective("batch") is None

    ds.upsert_rewrite(ModelRewrite(name="r1"))
    ds.upsert_rewrite(ModelRewrite(name="r2"))
    ds.remove_rewrite("r1")
    assert [r.name for r in ds.rewrites()] == ["r2"]


def test_rejects_non_positive_staleness() -> None:
    with pytest.raises(ValueError):
        Datastore(staleness=0)


def test_membership_version_moves_on_rotation_changes_only(ds: Datastore, clock: FakeClock) -> None:
    key = "10.0.0.1:8000"
    seen = [ds.membership_version]

    def moved() -> bool:
        now = ds.membership_version
        changed = now != seen[-1]
        seen.append(now)
        return changed

    ds.upsert_endpoint(meta("p1"))
    assert moved()  # joined
    ds.update_metrics(key, EndpointMetrics(kv_cache_usage=0.5, updated_at=clock.t))
    ds.acquire(key)
    ds.release(key)
    ds.upsert_endpoint(meta("p1", app="x"))  # relabel: same member
    assert not moved()
    ds.set_healthy(key, False)
    assert moved()
    ds.set_healthy(key, False)  # no change
    assert not moved()
    ds.set_healthy(key, True)
    assert moved()
    ds.remove_endpoint(key)
    assert moved()


def test_with_load_changes_only_the_in_flight_counts() -> None:
    """Endpoint.with_load spells the fields out (for speed): a field added to Endpoint and not to
    it would silently fall back to its default on every request; this names the fields it keeps."""
    from infergate.types import Endpoint

    fields = {f.name for f in dataclasses.fields(Endpoint)}
    assert fields == {"meta", "metrics", "healthy", "in_flight", "in_flight_tokens", "in_flight_started"}, (
        "Endpoint gained or lost a field: update Endpoint.with_load and this test"
    )
    ep = Endpoint(
        meta=meta("pod-1"),
        metrics=EndpointMetrics(waiting_queue_size=3, kv_cache_usage=0.5, updated_at=7.0),
        healthy=False,
        in_flight=4,
        in_flight_tokens=900,
        in_flight_started=2,
    )
    assert ep.with_load(5, 1200) == dataclasses.replace(ep, in_flight=5, in_flight_tokens=1200)
    assert ep.with_load(5, 1200, 3) == dataclasses.replace(
        ep, in_flight=5, in_flight_tokens=1200, in_flight_started=3
    )


def test_requests_seen_to_start_are_counted_until_they_finish(ds: Datastore) -> None:
    """``start`` (a streamed first token) moves a request's prompt tokens off the endpoint and
    counts it as started, which listeners hear; ``release(started=True)`` takes it off both
    counts, a release without it off the in-flight count only."""
    m = meta("pod-1")
    ds.upsert_endpoint(m)
    key = m.key
    heard: list[int] = []
    ds.add_listener(lambda: heard.append(1))

    def counts() -> tuple[int, int, int]:
        e = ds.endpoint(key)
        assert e is not None
        return e.in_flight, e.in_flight_tokens, e.in_flight_started

    ds.acquire(key, 100)
    ds.acquire(key, 40)
    ds.acquire(key, 10)
    assert counts() == (3, 150, 0)
    heard.clear()
    ds.start(key, 100)
    assert counts() == (3, 50, 1)
    assert heard  # flow control re-checks for room
    ds.start(key, 40)
    ds.release(key, 0, started=True)  # a started request finishes
    assert counts() == (2, 10, 1)
    ds.release(key, 10)  # one never seen to start (not streamed, or failed)
    assert counts() == (1, 0, 1)
    ds.start(key, 0)  # more starts than requests in flight are ignored
    assert counts() == (1, 0, 1)
    ds.release(key, 0)  # the count of started never exceeds the count in flight
    assert counts() == (0, 0, 0)


def test_aggregates_read_per_request_follow_every_change(ds: Datastore) -> None:
    """``has_healthy``, ``served_models``, ``max_model_len`` and ``top_priority`` are kept, not
    recomputed per request: after any sequence of changes they equal what the endpoints, models,
    context lengths and objectives give when computed from scratch."""
    rng = random.Random(7)
    names = [f"p{i}" for i in range(1, 6)]
    for step in range(600):
        name = rng.choice(names)
        key = meta(name).key
        op = rng.randrange(9)
        if op == 0:
            ds.upsert_endpoint(meta(name, 8000, v=str(step)))  # a new identity, same key
        elif op == 1:
            ds.upsert_endpoint(meta(name))
        elif op == 2:
            ds.remove_endpoint(key)
        elif op == 3:
            ds.set_healthy(key, rng.random() < 0.5)
        elif op == 4:
            ds.set_models(key, frozenset(rng.sample(["a", "b", "c", "lora-x"], rng.randrange(3))))
        elif op == 5:
            ds.set_max_model_len(key, rng.choice([None, 2048, 4096, 8192]))
        elif op == 6:
            ds.upsert_objective(Objective(name=rng.choice("xyz"), priority=rng.randrange(-3, 4)))
        elif op == 7:
            ds.remove_objective(rng.choice("xyz"))
        else:
            ds.acquire(key)  # in-flight changes touch none of them
        served: set[str] = set()
        for e in ds.endpoints():
            served |= ds.models(e.key)
        assert ds.has_healthy() == any(e.healthy for e in ds.endpoints()), step
        assert ds.served_models() == served, step
        assert ds.max_model_len() == max(ds.context_lengths().values(), default=None), step
        assert ds.top_priority() == max((o.priority for o in ds.objectives()), default=None), step
        assert ds.priorities_differ() == any(o.priority != 0 for o in ds.objectives()), step
