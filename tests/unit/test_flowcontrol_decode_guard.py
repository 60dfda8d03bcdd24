"""The decode guard: newcomers wait (at most ``tpot_hold``) while streams decode slower than the TPOT bound.

The twin's diurnal-ramp found the case: at the ramp's peak every replica could start requests at
once, so flow control held nothing, the batches grew and p90 TPOT went over its bound while p90
TTFT stayed at a seventh of its own. These tests pin the guard's rule on fake time: when it holds,
when it must not (too few reports, a pool slow even for its fastest streams, old reports), how
long a held request waits, and that sheddable requests are shed while it holds.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from infergate.config.settings import Settings
from infergate.datastore.store import Datastore
from infergate.flowcontrol import FlowControlConfig, FlowController, SaturationDetector
from infergate.flowcontrol.core import Decision, FlowCore
from infergate.flowcontrol.decode_guard import REFRESH, DecodeGuard
from infergate.flowcontrol.settings import decode_guard_from_settings
from infergate.telemetry import GatewayMetrics
from infergate.types import EndpointMeta, EndpointMetrics, InferenceRequest, PoolSpec
from tests.support import async_wait_for

META = EndpointMeta(name="pod-a", address="10.0.0.1", port=8000)


def reports(guard: DecodeGuard, tpots: list[float], at: float, ttft: float = 0.1) -> None:
    """Streams reporting these TPOTs, each after a first token ``ttft`` seconds from dispatch."""
    for t in tpots:
        guard.observe(t, at)
        guard.observe_ttft(ttft, at)


def guard_of(
    *, tpot_slo: float = 0.05, hold: float = 0.5, window: float = 1.0, min_samples: int = 20
) -> DecodeGuard:
    """A guard with the product's default bounds (TPOT 50 ms, TTFT 1 s, hold 0.5 s)."""
    return DecodeGuard(tpot_slo=tpot_slo, ttft_slo=1.0, hold=hold, window=window, min_samples=min_samples)


def test_holds_while_the_slowest_tenth_is_over_the_bound() -> None:
    g = guard_of()
    reports(g, [0.03] * 17 + [0.06] * 3, at=10.0)  # p90 60 ms, p10 30 ms
    assert g.holding(10.0)
    g2 = guard_of()
    reports(g2, [0.03] * 19 + [0.06], at=10.0)  # only the slowest 5 % over: p90 30 ms
    assert not g2.holding(10.0)


def test_too_few_reports_never_hold() -> None:
    g = guard_of(min_samples=20)
    reports(g, [0.03] * 10 + [0.09] * 9, at=10.0)
    assert not g.holding(10.0)
    reports(g, [0.09], at=10.0)
    assert g.holding(10.0 + REFRESH)


def test_a_pool_slow_for_its_fastest_streams_is_not_held() -> None:
    """Every stream over the bound: a slow pool (a bigger model than the bound was set for), not
    an overloaded one. Holding would add ``hold`` to every TTFT and bring no stream under it."""
    g = guard_of()
    reports(g, [0.055 + 0.001 * i for i in range(30)], at=10.0)
    assert not g.holding(10.0)


def test_reports_older_than_the_window_stop_counting() -> None:
    g = guard_of(window=1.0)
    reports(g, [0.03] * 15 + [0.08] * 15, at=10.0)
    assert g.holding(10.0)
    assert g.holding(10.0 + REFRESH / 2)  # within REFRESH: the last verdict
    reports(g, [0.03] * 30, at=10.6)
    assert g.holding(10.6)  # the slow ones still count: 15 of 60 over
    assert not g.holding(11.2)  # they left the window: 0 of 30


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="tpot_slo"):
        guard_of(tpot_slo=0.0)
    with pytest.raises(ValueError, match="hold"):
        guard_of(hold=0.0)


def test_settings_build_the_guard_or_none() -> None:
    g = decode_guard_from_settings(Settings())
    assert g is not None and (g.tpot_slo, g.ttft_slo, g.hold) == (0.05, 1.0, 0.5)
    assert decode_guard_from_settings(Settings().replace({"flow_control.tpot_hold": 0})) is None
    assert decode_guard_from_settings(Settings().replace({"flow_control.enabled": False})) is None
    g = decode_guard_from_settings(Settings().replace({"flow_control.tpot_slo": "80ms"}))
    assert g is not None and g.tpot_slo == pytest.approx(0.08)


def test_the_guard_is_measured_in_ttft_slos() -> None:
    """A pool told a ten times larger SLO (replicas ten times slower) judges over ten seconds of
    reports and holds up to five; an explicit hold stays as set."""
    slow = Settings().replace({"flow_control.ttft_slo": 10, "flow_control.tpot_slo": 0.5})
    g = decode_guard_from_settings(slow)
    assert g is not None and (g.window, g.hold) == (10.0, 5.0)
    g = decode_guard_from_settings(slow.replace({"flow_control.tpot_hold": "300ms"}))
    assert g is not None and g.window == 10.0 and g.hold == pytest.approx(0.3)
    g = decode_guard_from_settings(Settings())
    assert g is not None and (g.window, g.hold) == (1.0, 0.5)


def _store() -> Datastore:
    """One endpoint running 100 requests, scraped at 100 s with nothing waiting: never saturated."""
    ds = Datastore(_Clock(), staleness=2.0)
    ds.set_pool(PoolSpec(name="pool-1"))
    ds.upsert_endpoint(META)
    ds.update_metrics(META.key, EndpointMetrics(running_requests=100, updated_at=100.0))
    return ds


def _core(
    guard: DecodeGuard | None, metrics: GatewayMetrics | None = None, ds: Datastore | None = None
) -> FlowCore:
    ds = ds if ds is not None else _store()
    return FlowCore(
        ds, detector=SaturationDetector(), config=FlowControlConfig(), metrics=metrics, guard=guard
    )


def _req(name: str, priority: int = 0) -> InferenceRequest:
    return InferenceRequest(request_id=name, model="m", target_model="m", priority=priority)


def _three_in_flight_and_slow() -> tuple[DecodeGuard, Datastore, FlowCore]:
    """A core over one endpoint with 3 requests in flight, its guard told of slow streams at 100 s."""
    guard = guard_of()
    ds = _store()
    core = _core(guard, ds=ds)
    for _ in range(3):
        ds.acquire(META.key)
    reports(guard, [0.03] * 10 + [0.07] * 10, at=100.0)
    return guard, ds, core


def test_a_held_request_goes_after_hold_seconds_or_when_a_request_finishes() -> None:
    guard = guard_of()
    core = _core(guard)
    assert core.offer(_req("before"), 99.9).decision is Decision.ADMIT  # nothing reported yet
    reports(guard, [0.03] * 10 + [0.07] * 10, at=100.0)
    first = core.offer(_req("a"), 100.0)
    assert first.decision is Decision.QUEUED
    assert core.offer(_req("b"), 100.2).decision is Decision.QUEUED  # behind it
    assert core.next_wake(100.2) == pytest.approx(100.5)  # the head's release, before its 30 s TTL
    assert core.pop_ready(100.4) is None
    assert core.pop_ready(100.5) is first.item  # waited the hold: released although still holding
    assert core.pop_ready(100.5) is None  # the next one has waited 0.3 s
    # once its release time has passed, a head still queued waits for room: the wake-up is its
    # TTL, not a time in the past (which spun the dispatcher without moving the clock)
    assert core.next_wake(100.8) == pytest.approx(130.2)
    reports(guard, [0.047] * 200, at=100.6)  # the batches shrank a little: the guard lets go
    assert core.pop_ready(100.6) is None  # but what it held still waits: no burst of prefills
    assert core.offer(_req("c"), 100.6).decision is Decision.QUEUED  # behind it
    popped = core.pop_ready(100.7)  # b's hold is over
    assert popped is not None and popped.request.request_id == "b"
    popped = core.pop_ready(101.1)
    assert popped is not None and popped.request.request_id == "c"
    assert core.offer(_req("d"), 101.1).decision is Decision.ADMIT  # drained: the cap is gone


def test_no_request_waits_more_than_a_hold_for_the_guard_whatever_its_band() -> None:
    """Only the head of the highest band used to be timed: while higher-priority requests kept
    arriving, each released after its own hold, a lower band's requests waited for the guard as
    long as it held (the held-out priorities-prefix with the guard at 50 ms and 100 ms streams:
    p90 TTFT 3 s). Once any queued request has waited its hold, the queue goes in band order."""
    guard, _, core = _three_in_flight_and_slow()
    low = core.offer(_req("low", priority=0), 100.0).item
    high = core.offer(_req("high-1", priority=10), 100.3).item
    assert low is not None and high is not None
    assert core.next_wake(100.3) == pytest.approx(100.5)  # the oldest request's release
    assert core.pop_ready(100.4) is None
    reports(guard, [0.03] * 10 + [0.07] * 10, at=100.5)  # still slow: the guard holds on
    assert core.pop_ready(100.5) is high  # the oldest waited its hold: the queue goes, band first
    assert core.pop_ready(100.5) is low


def test_after_the_guard_lets_go_its_queue_drains_one_per_finished_request() -> None:
    """Releasing everything the guard held the moment it let go started their prefills together
    and pushed the streams back over the bound (twin, many-tenants); they go as requests finish."""
    guard, ds, core = _three_in_flight_and_slow()
    held = [core.offer(_req(n), 100.0).item for n in "abc"]
    assert all(h is not None for h in held)
    reports(guard, [0.047] * 200, at=100.1)  # the guard lets go, the streams still near the bound
    assert core.pop_ready(100.1) is None
    ds.release(META.key)  # one finished
    assert core.pop_ready(100.1) is held[0]
    ds.acquire(META.key)  # it is in flight
    assert core.pop_ready(100.1) is None
    reports(guard, [0.03] * 2000, at=100.2)  # recovered: 90th percentile under 90 % of the bound
    assert core.pop_ready(100.2) is held[1]
    assert core.pop_ready(100.2) is held[2]


def test_with_no_ttft_to_spare_the_queue_goes_at_once() -> None:
    """Once TTFTs from dispatch leave no room for a whole hold, keeping requests back would cost
    them their TTFT bound: what the guard held goes at once."""
    guard = guard_of()
    core = _core(guard)
    reports(guard, [0.03] * 10 + [0.07] * 10, at=100.0)
    held = [core.offer(_req(n), 100.0).item for n in "ab"]
    reports(guard, [0.07] * 200, at=100.1, ttft=0.6)  # TPOT still over, but TTFT has no slack
    assert core.pop_ready(100.1) is held[0]
    assert core.pop_ready(100.1) is held[1]


def test_while_holding_the_pools_in_flight_count_does_not_grow() -> None:
    """The guard freezes the pool's in-flight count where it stood when holding began: a request
    that finishes lets one held request go at once, ahead of its hold, so the batches stop
    growing without shrinking below what the pool ran."""
    _, ds, core = _three_in_flight_and_slow()
    held = core.offer(_req("a"), 100.0)
    assert held.decision is Decision.QUEUED  # holding begins at 3 in flight
    assert core.pop_ready(100.1) is None
    ds.release(META.key)  # one finished: 2 in flight
    assert core.pop_ready(100.1) is held.item
    ds.acquire(META.key)  # the released one is in flight: 3 again
    assert core.offer(_req("b"), 100.1).decision is Decision.QUEUED


def test_the_gauge_says_when_the_guard_holds() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    guard = guard_of()
    core = _core(guard, metrics)

    def gauge() -> float | None:
        return metrics.registry.get_sample_value(
            "infergate_flow_control_decode_guard_holding", {"inference_pool": "pool-1"}
        )

    core.offer(_req("a"), 99.9)
    assert gauge() is None  # never held: no series
    reports(guard, [0.03] * 10 + [0.07] * 10, at=100.0)
    core.offer(_req("b"), 100.0)
    assert gauge() == 1.0
    reports(guard, [0.03] * 200, at=100.1)
    core.offer(_req("c"), 100.1)
    assert gauge() == 0.0


def test_sheddable_requests_are_shed_while_the_guard_holds() -> None:
    guard = guard_of()
    core = _core(guard)
    assert core.offer(_req("s", -1), 99.9).decision is Decision.ADMIT
    reports(guard, [0.03] * 10 + [0.07] * 10, at=100.0)
    assert core.offer(_req("s2", -1), 100.0).decision is Decision.REJECT_SHED


def test_without_a_guard_nothing_is_held() -> None:
    core = _core(None)
    core.observe_tpot(0.09, 100.0)
    assert core.offer(_req("a"), 100.0).decision is Decision.ADMIT
    assert core.next_wake(100.2) is None


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t


async def test_the_controller_releases_a_held_request_on_its_own_timer() -> None:
    """No datastore change comes while the request is held: the controller's timer must wake
    for the guard's release time (it armed only for TTLs and the recheck interval before)."""
    clock = _Clock()
    ds = Datastore(clock, staleness=2.0)
    ds.set_pool(PoolSpec(name="pool-1"))
    ds.upsert_endpoint(META)
    ds.update_metrics(META.key, EndpointMetrics(running_requests=100, updated_at=100.0))
    # a recheck interval far beyond the test's patience: only the release time can wake it
    config = FlowControlConfig(recheck_interval=3600.0)
    fc = FlowController(
        ds,
        detector=SaturationDetector(),
        clock=clock,
        config=config,
        guard=guard_of(hold=0.01),
    )
    for t in [0.03] * 10 + [0.07] * 10:
        fc.observe_tpot(t)
        fc.observe_ttft(0.1)
    waiter = asyncio.create_task(fc.admit(_req("a")))

    async def queued() -> bool:
        return fc.queued() == 1

    await async_wait_for(queued, timeout=5, what="the request held")
    clock.t = 100.02  # past its release; the loop's own timer fires after 10 ms of real time
    assert await asyncio.wait_for(waiter, 5) is True


def test_reports_are_kept_for_the_window_only_even_if_nobody_asks() -> None:
    """A saturated pool never asks the guard (saturation decides first) while streams keep
    reporting: what left the window must go as new reports come, not pile up."""
    g = guard_of(window=1.0)
    for k in range(10_000):
        g.observe(0.03, 100.0 + k * 0.01)
        g.observe_ttft(0.1, 100.0 + k * 0.01)
    tpots, ttfts = g.kept
    assert tpots <= 101 and ttfts <= 101
