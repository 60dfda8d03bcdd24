"""``concurrency-detector``: llm-d-router's saturation from in-flight counts, as flow control's
detector and as a scheduling filter."""

from __future__ import annotations

from typing import Any

import pytest

from infergate.config.picker import parse_picker_config
from infergate.config.picker_sections import apply_sections
from infergate.config.settings import Settings
from infergate.errors import ConfigError
from infergate.flowcontrol import FlowControlConfig, FlowCore
from infergate.flowcontrol.concurrency import ConcurrencyDetector
from infergate.flowcontrol.settings import flow_control_from_settings
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.scheduling.plugins.filters import ConcurrencyFilter
from infergate.scheduling.sdk.framework import CycleState
from infergate.scheduling.sdk.testing import make_endpoint
from infergate.types import Endpoint, InferenceRequest
from tests.unit.test_flowcontrol_room import FakeClock, metas, pool, req

REQ = InferenceRequest(request_id="r", model="m", target_model="m")


def ep(name: str, in_flight: int, tokens: int = 0, **metrics: Any) -> Endpoint:
    return make_endpoint(name, in_flight=in_flight, **metrics).with_load(in_flight, tokens)


def test_requests_tokens_and_hybrid_saturation() -> None:
    pool_ = [ep("a", 8, 100), ep("b", 2, 900)]
    requests = ConcurrencyDetector(mode="requests", max_concurrency=10)
    assert requests.saturation(pool_, 0.0) == pytest.approx(0.5)  # 10 of 20
    tokens = ConcurrencyDetector(mode="tokens", max_token_concurrency=1000)
    assert tokens.saturation(pool_, 0.0) == pytest.approx(0.5)  # 1,000 of 2,000
    hybrid = ConcurrencyDetector(mode="hybrid", max_concurrency=10, max_token_concurrency=1000)
    # per endpoint the fuller share (0.8 and 0.9), averaged: both look busier than the aggregates
    assert hybrid.saturation(pool_, 0.0) == pytest.approx(0.85)
    # the servers' own reports change nothing: a full queue on an endpoint with nothing in flight
    assert requests.saturation([ep("q", 0, waiting_queue_size=50, kv_cache_usage=0.99)], 0.0) == 0.0
    assert requests.saturation([], 0.0) == 1.0  # no endpoint: nothing can be admitted


def test_flow_control_queues_on_in_flight_counts_alone() -> None:
    clock = FakeClock()
    ds = pool(clock, 1)  # never scraped: the utilization detector would count it saturated
    key = metas(1)[0].key
    fc = FlowCore(ds, detector=ConcurrencyDetector(max_concurrency=2), config=FlowControlConfig())
    assert fc.offer(req("a", 0), clock.t).decision.value == "admit"
    ds.acquire(key)
    ds.acquire(key)  # two in flight: the capacity
    assert fc.offer(req("b", 0), clock.t).decision.value == "queued"
    ds.release(key)
    released = fc.pop_ready(clock.t)
    assert released is not None and released.request.request_id == "b"
    assert fc.metrics_state().detector == "concurrency-detector" and fc.metrics_state().stale_endpoints == 0


def test_as_a_filter_it_drops_endpoints_at_capacity_plus_headroom() -> None:
    config = parse_picker_config(
        "plugins: [{type: concurrency-detector, parameters: {maxConcurrency: 10, headroom: 0.2}}, "
        "{type: queue-scorer}]\n"
        "schedulingProfiles: [{name: default, plugins: [{pluginRef: concurrency-detector}, "
        "{pluginRef: queue-scorer}]}]\n"
    )
    s = build_scheduler(config)
    (f,) = [slot.plugin for slot in s.profiles["default"].filters]
    assert isinstance(f, ConcurrencyFilter)
    candidates = [ep("a", 11), ep("b", 12), ep("c", 3)]  # b is at 10 x 1.2
    assert [e.meta.name for e in f.filter(REQ, candidates, CycleState())] == ["a", "c"]
    full = [ep("a", 12), ep("b", 20)]
    assert f.filter(REQ, full, CycleState()) == full  # nobody below the limit: everyone


def test_the_config_section_chooses_it_and_its_settings_are_checked() -> None:
    text = (
        "plugins: [{type: queue-scorer}, {type: concurrency-detector, name: cd, "
        "parameters: {concurrencyMode: hybrid, maxConcurrency: 64, maxTokenConcurrency: 200000}}]\n"
        "flowControl: {saturationDetector: {pluginRef: cd}}\n"
    )
    settings = apply_sections(parse_picker_config(text), Settings())
    detector, _ = flow_control_from_settings(settings, pool_name="p")
    assert isinstance(detector, ConcurrencyDetector)
    assert (detector.mode, detector.max_concurrency, detector.max_token_concurrency) == (
        "hybrid",
        64,
        200_000,
    )
    with pytest.raises(ConfigError, match="concurrencyMode"):
        apply_sections(parse_picker_config(text.replace("hybrid", "both")), Settings())
    with pytest.raises(ConfigError, match="max_concurrency: read only with detector: concurrency"):
        Settings().replace({"flow_control.max_concurrency": 8})
