"""The two flow-control budgets (``defaultRequestTTL`` / ``noEndpointRequestTTL``) in virtual time:
which applies, how it switches when the pool gains or loses its last ready endpoint, the bound on the
total wait, the 503s an empty pool answers at once and the reference's dropped-reason headers.
The real-process counterpart is ``tests/integration/test_dropin_scale_from_zero.py``."""

from __future__ import annotations

import pytest

from infergate.config.picker import parse_picker_config
from infergate.config.picker_sections import apply_sections
from infergate.config.settings import Settings
from infergate.datastore.store import Datastore
from infergate.errors import NoCapacityError, RateLimitedError
from infergate.flowcontrol import (
    Decision,
    FlowControlConfig,
    FlowController,
    FlowCore,
    ItemState,
    SaturationDetector,
)
from infergate.flowcontrol.settings import flow_control_from_settings
from infergate.types import EndpointMeta, EndpointMetrics, InferenceRequest, PoolSpec


def _settings(flow_control_section: str) -> Settings:
    cfg = parse_picker_config(
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins: [{type: queue-scorer}, {type: max-score-picker}]\n" + flow_control_section
    )
    return apply_sections(cfg, Settings())


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t


_META = EndpointMeta(name="pod-a", address="10.0.0.1", port=8000)


def _core(config: FlowControlConfig) -> tuple[FlowCore, Datastore, _Clock]:
    clock = _Clock()
    ds = Datastore(clock, staleness=2.0)
    ds.set_pool(PoolSpec(name="pool"))
    ds.upsert_endpoint(_META)
    return FlowCore(ds, detector=SaturationDetector(), config=config), ds, clock


def _req(name: str, priority: int = 0) -> InferenceRequest:
    return InferenceRequest(request_id=name, model="m", target_model="m", priority=priority, body_size=10)


def test_an_empty_pool_queues_on_its_own_budget_and_switches_to_the_default_when_an_endpoint_comes() -> None:
    core, ds, clock = _core(FlowControlConfig(default_ttl=2.0, no_endpoint_ttl=10.0))
    ds.set_healthy(_META.key, False)
    offer = core.offer(_req("r"), clock.now())
    assert offer.decision is Decision.QUEUED and offer.item is not None
    assert offer.item.deadline == 110.0  # the no-endpoint budget
    clock.t = 105.0
    ds.set_healthy(_META.key, True)  # ready but not scraped yet: still saturated, still waiting
    assert core.expire(clock.now()) == [] and core.pop_ready(clock.now()) is None
    assert offer.item.deadline == 107.0  # a fresh default budget from the switch
    clock.t = 107.0
    assert core.expire(clock.now()) == [offer.item]
    assert offer.item.state is ItemState.EVICTED_TTL  # the pool had an endpoint: 429 backpressure


def test_the_wait_never_exceeds_the_longer_budget_however_the_pool_flaps() -> None:
    core, ds, clock = _core(FlowControlConfig(default_ttl=2.0, no_endpoint_ttl=10.0))
    item = core.offer(_req("r"), clock.now()).item  # never scraped: saturated, queued on 2 s
    assert item is not None and item.deadline == 102.0
    clock.t = 101.0
    ds.set_healthy(_META.key, False)
    core.expire(clock.now())
    assert item.deadline == 110.0  # min(101 + 10, 100 + 10)
    clock.t = 109.5
    ds.set_healthy(_META.key, True)
    core.expire(clock.now())
    assert item.deadline == 110.0  # min(109.5 + 2, 100 + 10)
    clock.t = 109.9
    ds.set_healthy(_META.key, False)
    assert core.expire(clock.now()) == []
    clock.t = 110.0
    assert core.expire(clock.now()) == [item]
    assert item.state is ItemState.EVICTED_NO_ENDPOINTS  # 503: no endpoint came


def test_no_endpoint_budget_follows_the_default_and_none_waits_until_an_endpoint_comes() -> None:
    assert FlowControlConfig(default_ttl=7.0).empty_pool_ttl == 7.0
    core, ds, clock = _core(FlowControlConfig(default_ttl=2.0, no_endpoint_ttl=None))
    ds.set_healthy(_META.key, False)
    item = core.offer(_req("r"), clock.now()).item
    assert item is not None and item.deadline is None
    clock.t += 10_000
    assert core.expire(clock.now()) == []
    ds.set_healthy(_META.key, True)
    ds.update_metrics(_META.key, EndpointMetrics(updated_at=clock.now()))
    assert core.pop_ready(clock.now()) is item


@pytest.mark.parametrize(
    ("config", "priority"),
    [
        (FlowControlConfig(), -1),  # a sheddable request does not wait out a cold start
        (FlowControlConfig(enabled=False), 0),  # no queueing at all
        (FlowControlConfig(max_requests=1), 0),  # the queue is full: 503, not 429
    ],
)
def test_an_empty_pool_refuses_with_503_what_cannot_wait(config: FlowControlConfig, priority: int) -> None:
    core, ds, clock = _core(config)
    ds.set_healthy(_META.key, False)
    if config.max_requests == 1:
        assert core.offer(_req("first"), clock.now()).decision is Decision.QUEUED
    assert core.offer(_req("r", priority), clock.now()).decision is Decision.REJECT_NO_ENDPOINTS


async def test_the_controller_answers_each_drop_with_the_reference_reason_header() -> None:
    clock = _Clock()
    ds = Datastore(clock, staleness=2.0)
    ds.upsert_endpoint(_META)
    ds.set_healthy(_META.key, False)
    fc = FlowController(ds, detector=SaturationDetector(), clock=clock, config=FlowControlConfig())
    with pytest.raises(NoCapacityError) as shed:
        await fc.admit(_req("shed", -1))
    assert shed.value.headers == {"x-llm-d-request-dropped-reason": "rejected-no-endpoints"}
    ds.set_healthy(_META.key, True)
    ds.update_metrics(_META.key, EndpointMetrics(waiting_queue_size=50, updated_at=clock.now()))
    with pytest.raises(RateLimitedError) as saturated:
        await fc.admit(_req("shed", -1))
    assert saturated.value.headers == {"x-llm-d-request-dropped-reason": "rejected-saturated"}
    fc.close()
    with pytest.raises(NoCapacityError) as closed:
        await fc.admit(_req("late"))
    assert closed.value.headers == {"x-llm-d-request-dropped-reason": "rejected-shutting-down"}


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("flowControl: {noEndpointRequestTTL: 10m}", 600.0),
        ("flowControl: {defaultRequestTTL: 5s}", 5.0),  # unset: follows defaultRequestTTL
        ("flowControl: {defaultRequestTTL: 5s, noEndpointRequestTTL: 0s}", None),  # no eviction
    ],
)
def test_no_endpoint_request_ttl_reaches_the_flow_controller(section: str, expected: float | None) -> None:
    _, config = flow_control_from_settings(_settings(section + "\n"), pool_name="p")
    assert config.empty_pool_ttl == expected
