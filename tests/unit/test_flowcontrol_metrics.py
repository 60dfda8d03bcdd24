"""Flow control's metrics as llm-d-router v0.10 exports them: every request counted once by its
terminal outcome (spelled as upstream spells it), the saturation twin labelled by stage, and the
gauges computed at scrape time (stale endpoints, each band's share of its queue capacity)."""

from __future__ import annotations

import asyncio

import pytest

from infergate.errors import NoCapacityError, RateLimitedError
from infergate.flowcontrol import FlowControlConfig
from infergate.types import EndpointMeta, PoolSpec
from tests.unit.test_flowcontrol import KEY, Rig, req, run_once

TOTAL = "llm_d_epp_flow_control_requests_total"
WAIT = "llm_d_epp_flow_control_request_queue_duration_seconds_count"


async def test_every_outcome_is_counted_once_with_upstream_spelling() -> None:
    rig = Rig(FlowControlConfig(default_ttl=5.0, band_max_requests=2))
    rig.scrape(waiting=0)
    run_once(rig.fc.admit(req("fast")))  # room: admitted at once
    rig.scrape(waiting=5)  # saturated from here on
    with pytest.raises(RateLimitedError):
        run_once(rig.fc.admit(req("shed", priority=-1)))
    waiting = [asyncio.create_task(rig.client(req(f"w{i}", priority=1))) for i in range(2)]
    await rig.until_queued(2)
    with pytest.raises(RateLimitedError):  # the band holds 2
        run_once(rig.fc.admit(req("full", priority=1)))
    cancelled = asyncio.create_task(rig.client(req("gone", priority=2)))
    await rig.until_queued(3)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    rig.clock.t += 6.0  # past the TTL while still saturated
    rig.scrape(waiting=5)
    rig.fc.poke()
    for task in waiting:
        with pytest.raises(RateLimitedError):
            await asyncio.wait_for(task, 60)

    counted = {
        outcome: rig.sample(TOTAL, outcome=outcome)
        for outcome in ("Dispatched", "RejectedCapacity", "EvictedContextCancelled", "EvictedTTL")
    }
    assert counted == {"Dispatched": 1, "RejectedCapacity": 2, "EvictedContextCancelled": 1, "EvictedTTL": 2}
    assert rig.sample(TOTAL, outcome="EvictedTTL", priority="1", inference_pool="pool-1") == 2
    # the queue-duration histogram counts the same requests under the same outcomes
    assert {o: rig.sample(WAIT, outcome=o) for o in counted} == counted
    assert rig.sample(TOTAL) == 6


async def test_shutdown_evicts_the_queued_and_no_endpoints_rejects_at_once() -> None:
    rig = Rig()
    rig.scrape(waiting=5)
    queued = asyncio.create_task(rig.fc.admit(req("w")))
    await rig.until_queued(1)
    rig.fc.close()
    with pytest.raises(NoCapacityError):
        await asyncio.wait_for(queued, 60)
    assert rig.sample(TOTAL, outcome="EvictedOther") == 1

    empty = Rig()
    empty.ds.remove_endpoint(KEY)
    with pytest.raises(NoCapacityError):
        run_once(empty.fc.admit(req("shed", priority=-1)))
    assert empty.sample(TOTAL, outcome="RejectedNoEndpoints") == 1


async def test_the_saturation_twin_is_the_effective_stage() -> None:
    rig = Rig()
    rig.scrape(waiting=2)
    run_once(rig.fc.admit(req("a")))
    assert rig.sample(
        "llm_d_epp_flow_control_pool_saturation", inference_pool="pool-1", stage="effective"
    ) == (pytest.approx(0.4))
    assert rig.sample("inference_extension_flow_control_pool_saturation", inference_pool="pool-1") == (
        pytest.approx(0.4)
    )


async def test_stale_endpoints_as_of_the_last_judgement() -> None:
    rig = Rig()
    other = EndpointMeta(name="pod-b", address="10.0.0.2", port=8000)
    rig.ds.upsert_endpoint(other)  # never scraped
    rig.scrape(waiting=0)
    run_once(rig.fc.admit(req("a")))
    stale = "llm_d_epp_flow_control_stale_endpoints"
    assert rig.sample(stale, detector="utilization-detector") == 1
    rig.clock.t += 3.0  # older than the 2 s staleness, but nothing judged since: still as judged
    assert rig.sample(stale) == 1
    rig.fc.core.saturation(rig.clock.t)  # judged again: both stale now
    assert rig.sample(stale) == 2


async def test_band_capacity_shares_follow_the_queues() -> None:
    config = FlowControlConfig(band_max_requests=4, band_max_bytes=1000, max_requests=10, max_bytes=10_000)
    rig = Rig(config)
    rig.ds.set_pool(PoolSpec(name="pool-1"))
    rig.scrape(waiting=5)
    tasks = [asyncio.create_task(rig.client(req(f"r{i}", priority=3, size=250))) for i in range(3)]
    await rig.until_queued(3)
    share = "llm_d_epp_flow_control_capacity_utilization_requests"
    assert rig.sample(share, priority="3", inference_pool="pool-1") == pytest.approx(0.75)
    assert rig.sample(share, priority="0") == 0  # the default band is reported empty
    assert rig.sample("llm_d_epp_flow_control_capacity_utilization_bytes", priority="3") == pytest.approx(
        0.75
    )
    assert rig.sample("llm_d_epp_flow_control_global_capacity_utilization_requests") == pytest.approx(0.3)
    assert rig.sample("llm_d_epp_flow_control_global_capacity_utilization_bytes") == pytest.approx(0.075)
    rig.scrape(waiting=0)
    await asyncio.gather(*tasks)
    assert rig.sample(share, priority="3") == 0


def test_without_capacities_only_the_byte_share_of_each_band_is_shown() -> None:
    rig = Rig()  # defaults: no request capacity, 1 GB a band, no global capacity
    text = rig.metrics.render().decode()
    assert (
        'llm_d_epp_flow_control_capacity_utilization_bytes{inference_pool="pool-1",priority="0"} 0.0' in text
    )
    assert "llm_d_epp_flow_control_capacity_utilization_requests{" not in text
    assert "llm_d_epp_flow_control_global_capacity_utilization" not in text


ENQUEUE = "llm_d_epp_flow_control_request_enqueue_duration_seconds_count"


async def test_every_arrival_is_timed_into_the_enqueue_histogram_by_its_outcome() -> None:
    rig = Rig(FlowControlConfig(band_max_requests=1))
    rig.scrape(waiting=0)
    run_once(rig.fc.admit(req("fast")))  # admitted at once
    rig.scrape(waiting=5)
    queued = asyncio.create_task(rig.client(req("w", priority=1)))
    await rig.until_queued(1)
    with pytest.raises(RateLimitedError):  # the band is full
        run_once(rig.fc.admit(req("full", priority=1)))
    with pytest.raises(RateLimitedError):  # sheddable while saturated
        run_once(rig.fc.admit(req("shed", priority=-1)))
    got = {o: rig.sample(ENQUEUE, outcome=o) for o in ("Dispatched", "NotYetFinalized", "RejectedCapacity")}
    assert got == {"Dispatched": 1, "NotYetFinalized": 1, "RejectedCapacity": 2}
    assert rig.sample(ENQUEUE, outcome="RejectedCapacity", priority="-1", fairness_id="default-flow") == 1
    gie = "inference_extension_flow_control_request_enqueue_duration_seconds_count"
    assert rig.sample(gie, outcome="NotYetFinalized", priority="1") == 1  # and the deprecated twin
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued


def test_a_p_d_pool_is_as_saturated_as_its_fuller_stage_and_each_stage_is_exported() -> None:
    from prometheus_client import CollectorRegistry

    from infergate.datastore.store import Datastore
    from infergate.flowcontrol import FlowCore, SaturationDetector
    from infergate.telemetry import GatewayMetrics
    from infergate.types import EndpointMetrics
    from tests.unit.test_flowcontrol import FakeClock

    clock = FakeClock()
    ds = Datastore(clock, staleness=2.0)
    ds.set_pool(PoolSpec(name="pd"))
    roles = {"p0": "prefill", "p1": "prefill", "d0": "decode", "d1": "decode"}
    for i, (name, role) in enumerate(roles.items()):
        ds.upsert_endpoint(
            EndpointMeta(name=name, address=f"10.0.0.{i + 1}", port=8000, labels={"llm-d.ai/role": role})
        )
        # the prefill servers' queues are full, the decode servers idle
        waiting = 5 if role == "prefill" else 0
        ds.update_metrics(
            f"10.0.0.{i + 1}:8000", EndpointMetrics(waiting_queue_size=waiting, updated_at=clock.t)
        )
    metrics = GatewayMetrics(CollectorRegistry())
    core = FlowCore(
        ds, detector=SaturationDetector(track_in_flight=False), metrics=metrics, config=FlowControlConfig()
    )
    # over all four endpoints the capped mean is 0.5; the prefill stage is full
    assert core.saturation(clock.t) == 1.0
    sample = metrics.registry.get_sample_value
    twin = "llm_d_epp_flow_control_pool_saturation"
    assert [
        sample(twin, {"inference_pool": "pd", "stage": s}) for s in ("prefill", "decode", "effective")
    ] == [
        1.0,
        0.0,
        1.0,
    ]
    assert sample("inference_extension_flow_control_pool_saturation", {"inference_pool": "pd"}) == 1.0


def test_a_pool_without_roles_exports_its_effective_saturation_only() -> None:
    rig = Rig()
    rig.scrape(waiting=3)
    rig.fc.core.saturation(rig.clock.t)
    twin = "llm_d_epp_flow_control_pool_saturation"
    assert rig.sample(twin, stage="effective") == 0.6
    text = rig.metrics.render().decode()
    assert 'stage="prefill"' not in text and 'stage="decode"' not in text
