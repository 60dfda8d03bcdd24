"""``program-aware`` fairness: a band's flows served by least attained service.

llm-d-router's ``program-aware-fairness`` (strategy ``las``): a program's attained service is
``input + 2 x output`` tokens of its finished requests, decayed with a half-life; the waiting flow
with the highest ``0.8 x (1 - service') + 0.2 x wait'`` goes next. Each FlowCore/Director test
decides differently under round-robin, so it fails if the policy is not applied.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from infergate.config.picker import parse_picker_config
from infergate.config.picker_sections import apply_sections
from infergate.config.settings import Settings
from infergate.errors import ConfigError
from infergate.flowcontrol import FlowControlConfig, FlowController, FlowCore, SaturationDetector
from infergate.flowcontrol.program_aware import ProgramAwareFairness, ProgramAwareParams
from infergate.requestcontrol.director import Director
from infergate.telemetry import GatewayMetrics
from infergate.types import InferenceRequest
from tests.unit.test_flowcontrol_room import AffinityScheduler, FakeClock, metas, pool, scrape

MODEL = "m"


def _req(rid: str, flow: str, priority: int = 0) -> InferenceRequest:
    return InferenceRequest(
        request_id=rid, model=MODEL, target_model=MODEL, fairness_id=flow, priority=priority, body_size=10
    )


# -- the policy -------------------------------------------------------------------------------------


def _heads(**enqueued_at: float) -> Any:
    return lambda fid: enqueued_at[fid]


def test_the_program_that_consumed_least_goes_first_whatever_its_wait() -> None:
    las = ProgramAwareFairness()
    las.completed("big", 1000, 500, now=0.0)  # 2,000 weighted tokens
    las.completed("small", 10, 5, now=0.0)
    # big's head has waited longer (10 s against 1 s): 0.8 x 0 + 0.2 x 1 = 0.2 < small's 0.8
    assert las.choose(["big", "small"], _heads(big=0.0, small=9.0), now=10.0) == "small"


def test_equal_service_goes_to_the_longest_waiting_head_and_ties_to_the_rotation() -> None:
    las = ProgramAwareFairness()
    assert las.choose(["a", "b"], _heads(a=5.0, b=2.0), now=10.0) == "b"
    assert las.choose(["a", "b"], _heads(a=2.0, b=2.0), now=10.0) == "a"  # a tie: next in turn
    # a program never seen has attained nothing: it goes before one that has
    las.completed("a", 1, 0, now=10.0)
    assert las.choose(["a", "new"], _heads(a=0.0, new=9.9), now=10.0) == "new"


def test_attained_service_decays_with_its_half_life() -> None:
    las = ProgramAwareFairness(ProgramAwareParams(half_life=60.0))
    las.completed("p", 100, 50, now=0.0)
    assert las.service("p", 0.0) == 200.0
    assert las.service("p", 60.0) == pytest.approx(100.0)
    assert las.service("p", 180.0) == pytest.approx(25.0)
    las.completed("p", 0, 10, now=180.0)  # decayed first, then added
    assert las.service("p", 180.0) == pytest.approx(45.0)
    kept = ProgramAwareFairness(ProgramAwareParams(half_life=0.0))
    kept.completed("p", 100, 50, now=0.0)
    assert kept.service("p", 10_000.0) == 200.0


def test_idle_programs_are_forgotten_after_their_ttl_but_not_while_in_flight() -> None:
    las = ProgramAwareFairness(ProgramAwareParams(idle_ttl=100.0, sweep_interval=10.0))
    las.completed("idle", 5, 5, now=0.0)  # the first call sets the sweep's clock
    las.dispatched("busy", 0.0, now=1.0)
    las.completed("other", 5, 5, now=50.0)  # a sweep: nothing idle for 100 s yet
    assert sorted(las.programs()) == ["busy", "idle", "other"]
    las.completed("other", 5, 5, now=120.0)  # idle has had no completion for 120 s
    assert sorted(las.programs()) == ["busy", "other"]  # busy never completed, but is in flight
    las.completed("busy", 1, 1, now=121.0)
    assert las.service("busy", 121.0) == 3.0


def test_mean_waits_and_jains_fairness_index() -> None:
    las = ProgramAwareFairness()
    assert las.fairness_index() == 1.0
    las.dispatched("a", 0.010, now=1.0)
    las.dispatched("a", 0.030, now=2.0)
    las.dispatched("b", 0.020, now=3.0)
    assert las.mean_wait_ms("a") == 20.0 and las.mean_wait_ms("b") == 20.0
    assert las.fairness_index() == 1.0
    las.dispatched("c", 0.0, now=4.0)  # (20 + 20 + 0)^2 / (3 x 800) = 2/3
    assert las.fairness_index() == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "params",
    [
        {"service_weight": -1.0},
        {"wait_weight": -0.1},
        {"half_life": -1.0},
        {"idle_ttl": -1.0},
        {"sweep_interval": 0.0},
    ],
)
def test_parameters_out_of_range_are_refused(params: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ProgramAwareParams(**params)


# -- flow control serving a band by attained service ------------------------------------------------


def _core(ds: Any, **config: Any) -> FlowCore:
    return FlowCore(
        ds, detector=SaturationDetector(track_in_flight=False), config=FlowControlConfig(**config)
    )


def test_a_released_request_comes_from_the_program_that_consumed_least() -> None:
    clock = FakeClock()
    ds = pool(clock, 1)
    key = metas(1)[0].key
    scrape(ds, clock, key, 5)  # saturated: everything queues
    picks = {}
    for fairness in ("round-robin", "program-aware"):
        fc = _core(ds, fairness=fairness)
        fc.program_completed(_req("old", "heavy"), 5000, 2000, clock.t)
        fc.program_completed(_req("old", "light"), 50, 20, clock.t)
        for rid, flow in (("h1", "heavy"), ("h2", "heavy"), ("l1", "light"), ("l2", "light")):
            assert fc.offer(_req(rid, flow), clock.t).decision.value == "queued"
        scrape(ds, clock, key, 0)
        order = []
        while (item := fc.pop_ready(clock.t)) is not None:
            order.append(item.request.request_id)
        scrape(ds, clock, key, 5)
        picks[fairness] = order
    assert picks["round-robin"] == ["h1", "l1", "h2", "l2"]
    assert picks["program-aware"] == ["l1", "l2", "h1", "h2"]


async def test_the_director_reports_dispatch_and_tokens_and_metrics_follow() -> None:
    clock = FakeClock()
    ds = pool(clock, 1)
    scrape(ds, clock, metas(1)[0].key, 0)
    metrics = GatewayMetrics(CollectorRegistry())
    config = FlowControlConfig(fairness="program-aware")
    flow = FlowController(ds, detector=SaturationDetector(), clock=clock, config=config, metrics=metrics)
    d = Director(
        datastore=ds, scheduler=AffinityScheduler(metas(1)[0].key), flow=flow, clock=clock, check_models=False
    )
    body = json.dumps({"model": MODEL, "prompt": "hello", "max_tokens": 4}).encode()
    ctx = await d.handle_request(
        path="/v1/completions", headers={"x-llm-d-inference-fairness-id": "agent-7"}, body=body
    )
    answer = {"choices": [{"text": "hi"}], "usage": {"prompt_tokens": 30, "completion_tokens": 12}}
    d.handle_response_headers(ctx, 200, {"content-type": "application/json"})
    d.handle_response_chunk(ctx, json.dumps(answer).encode(), end_of_stream=True)
    d.handle_response_complete(ctx)
    las = flow.core._programs
    assert las is not None and las.service("agent-7", clock.t) == 30 + 2 * 12
    assert las.mean_wait_ms("agent-7") == 0.0
    sample = metrics.registry.get_sample_value
    assert sample("llm_d_epp_program_aware_attained_service_tokens", {"program_id": "agent-7"}) == 54.0
    assert sample("llm_d_epp_program_aware_avg_wait_time_milliseconds", {"program_id": "agent-7"}) == 0.0


def test_the_program_metrics_exist_only_with_the_policy() -> None:
    clock = FakeClock()
    ds = pool(clock, 1)
    for fairness, present in (("round-robin", False), ("program-aware", True)):
        metrics = GatewayMetrics(CollectorRegistry())
        FlowCore(
            ds, detector=SaturationDetector(), config=FlowControlConfig(fairness=fairness), metrics=metrics
        )
        text = metrics.render().decode()
        assert ("llm_d_epp_program_aware_jains_fairness_index" in text) is present


# -- llm-d-router's config ----------------------------------------------------------------------------

# deploy/config/sim-program-aware-config.yaml of llm-d-router v0.10, as published
UPSTREAM = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: program-aware-fairness
- type: queue-scorer
- type: max-score-picker
- type: single-profile-handler

featureGates:
- flowControl

flowControl:
  defaultPriorityBand:
    fairnessPolicyRef: program-aware-fairness

schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
  - pluginRef: max-score-picker
"""


def _settings(text: str) -> Any:
    return apply_sections(parse_picker_config(text), Settings()).flow_control


def test_the_upstream_config_selects_the_policy_with_its_defaults() -> None:
    s = _settings(UPSTREAM)
    assert s.fairness == "program-aware"
    got = (s.program_service_weight, s.program_wait_weight, s.program_half_life, s.program_idle_ttl)
    assert got == (0.8, 0.2, 60.0, 3600.0) and s.program_sweep_interval == 300.0


def test_parameters_map_onto_the_settings_and_bad_ones_are_refused() -> None:
    params = (
        "  parameters: {strategy: las, lasWeightService: 0.5, lasWeightHeadWait: 0.5, lasHalfLifeSeconds: 0, "
        "evictionTtlSeconds: 600, evictionSweepSeconds: 30}\n"
    )
    text = UPSTREAM.replace("- type: program-aware-fairness\n", "- type: program-aware-fairness\n" + params)
    s = _settings(text)
    got = (s.program_service_weight, s.program_wait_weight, s.program_half_life, s.program_idle_ttl)
    assert got == (0.5, 0.5, 0.0, 600.0) and s.program_sweep_interval == 30.0
    for bad, field in (("{strategy: fifo}", "strategy"), ("{lasHalfLifeSeconds: -1}", "lasHalfLifeSeconds")):
        wrong = UPSTREAM.replace(
            "- type: program-aware-fairness\n", f"- type: program-aware-fairness\n  parameters: {bad}\n"
        )
        with pytest.raises(ConfigError, match=rf"plugins\[program-aware-fairness\]\.parameters\.{field}"):
            _settings(wrong)
    unused = UPSTREAM.replace(
        "    fairnessPolicyRef: program-aware-fairness\n",
        "    fairnessPolicyRef: round-robin-fairness-policy\n",
    )
    with pytest.raises(ConfigError, match="program-aware-fairness is declared but no band uses it"):
        _settings(unused)


def test_program_settings_are_refused_with_another_fairness() -> None:
    with pytest.raises(ConfigError, match="program_half_life: read only with fairness: program-aware"):
        Settings().replace({"flow_control.program_half_life": 10.0})
    s = Settings().replace(
        {"flow_control.fairness": "program-aware", "flow_control.program_half_life": "10s"}
    )
    assert s.flow_control.program_half_life == 10.0
