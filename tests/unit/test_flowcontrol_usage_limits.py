"""Usage-limit policies: the ceilings of llm-d-router's static, priority-holdback and
soft-reflective-ceiling policies, the priority levels they rank, and flow control obeying them.

The formulas are the reference's (its READMEs); each FlowCore test decides differently under
infergate's default headroom rule, so it fails if the policy is not applied.
"""

from __future__ import annotations

from typing import Any

import pytest

from infergate.config.picker import parse_picker_config
from infergate.config.picker_sections import apply_sections
from infergate.config.settings import Settings
from infergate.errors import ConfigError
from infergate.flowcontrol import FlowControlConfig, FlowCore, SaturationDetector
from infergate.flowcontrol.settings import flow_control_from_settings
from infergate.flowcontrol.usage_limits import (
    BAND_IDLE_SECONDS,
    PriorityHoldback,
    PriorityLevels,
    SoftReflectiveCeiling,
    StaticLimit,
)
from tests.unit.test_flowcontrol_room import FakeClock, metas, pool, req, scrape

# -- the policies ---------------------------------------------------------------------------------


def test_priority_holdback_by_rank_spreads_the_ceilings_in_equal_steps() -> None:
    policy = PriorityHoldback(min_ceiling=0.4, max_ceiling=0.9)
    levels = [20, 10, 0, -1]
    got = [policy.ceiling(0.5, p, levels) for p in levels]
    assert got == pytest.approx([0.9, 0.9 - 0.5 / 3, 0.9 - 1.0 / 3, 0.4])


def test_priority_holdback_by_value_follows_the_numbers() -> None:
    policy = PriorityHoldback(min_ceiling=0.2, max_ceiling=1.0, domain="value")
    levels = [100, 90, 0]
    # 90 sits near 100, so its ceiling stays near the top one (by rank it would be halfway)
    assert [policy.ceiling(0.5, p, levels) for p in levels] == pytest.approx([1.0, 0.92, 0.2])


def test_priority_holdback_with_one_level_holds_nothing_back_below_its_max() -> None:
    assert PriorityHoldback(min_ceiling=0.1, max_ceiling=0.7).ceiling(0.9, 5, [5]) == 0.7
    assert PriorityHoldback(min_ceiling=0.1, domain="value").ceiling(0.9, 5, [5, 5]) == 1.0


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"min_ceiling": 1.0}, "min_ceiling"),
        ({"min_ceiling": 0.5, "max_ceiling": 0.5}, "below max_ceiling"),
        ({"min_ceiling": 0.1, "max_ceiling": 0.0}, "max_ceiling"),
        ({"min_ceiling": 0.1, "domain": "log"}, "domain"),
    ],
)
def test_priority_holdback_refuses_ceilings_out_of_range(args: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        PriorityHoldback(**args)


def test_static_limit_is_one_ceiling_for_every_band() -> None:
    policy = StaticLimit(0.8)
    assert {policy.ceiling(0.5, p, []) for p in (20, 0, -5)} == {0.8}
    with pytest.raises(ValueError):
        StaticLimit(0.0)


def test_soft_reflective_ceiling_below_the_reflection_leaves_every_band_open() -> None:
    policy = SoftReflectiveCeiling()
    levels = [2, 1, 0]
    # at 0.3: band 1's reflective ceiling is 1 - 0.3/2 = 0.85, band 2's 0.7, both above 0.3
    assert [policy.ceiling(0.3, p, levels) for p in levels] == [1.0, 1.0, 1.0]


def test_soft_reflective_ceiling_past_the_reflection_opens_one_decision_in_a_period() -> None:
    policy = SoftReflectiveCeiling()
    levels = [1, 0]
    # at 0.8 the lower band (reflective ceiling 1 - 0.8 = 0.2) is gated; period 0.8 / 0.2 = 4
    turns = [policy.ceiling(0.8, 0, levels) for _ in range(400)]
    assert set(turns) == {0.0, 1.0}
    assert turns.count(1.0) == 100
    assert [i for i, c in enumerate(turns[:12]) if c == 1.0] == [3, 7, 11]
    # the top band is never gated below full, and its decisions advance the same counter
    assert policy.ceiling(0.8, 1, levels) == 1.0


def test_soft_reflective_ceiling_in_the_middle_band_gates_only_what_is_past_its_reflection() -> None:
    policy = SoftReflectiveCeiling()
    levels = [2, 1, 0]
    # at 0.65: band 1's ceiling 1 - 0.325 = 0.675 (open), band 2's 0.35 (gated, period
    # round(0.65 / 0.35) = 2)
    assert [policy.ceiling(0.65, 1, levels) for _ in range(6)] == [1.0] * 6
    lowest = [policy.ceiling(0.65, 0, levels) for _ in range(6)]
    assert lowest.count(1.0) == 3 and lowest.count(0.0) == 3


def test_soft_reflective_ceiling_at_full_closes_every_band_but_the_top() -> None:
    policy = SoftReflectiveCeiling()
    levels = [1, 0, -1]
    assert [policy.ceiling(1.0, p, levels) for p in levels] == [1.0, 0.0, 0.0]
    assert SoftReflectiveCeiling().ceiling(0.95, 7, [7]) == 1.0  # one band: always open
    # just past the reflection the period rounds to 1: the band is open on every decision
    assert [SoftReflectiveCeiling().ceiling(0.55, 0, [1, 0]) for _ in range(4)] == [1.0] * 4


def test_priority_levels_are_the_declared_ones_and_those_seen_lately() -> None:
    levels = PriorityLevels()
    assert levels.levels(0, now=0.0, declared=[10]) == [10, 0]
    assert levels.levels(-1, now=1.0, declared=[10]) == [10, 0, -1]
    # priority 0 has not been seen for the idle time: its band no longer counts
    assert levels.levels(-1, now=1.0 + BAND_IDLE_SECONDS, declared=[10]) == [10, -1]


# -- flow control under each policy ----------------------------------------------------------------


def _core(ds: Any, **config: Any) -> FlowCore:
    return FlowCore(
        ds, detector=SaturationDetector(track_in_flight=False), config=FlowControlConfig(**config)
    )


def test_priority_holdback_queues_a_lower_band_the_headroom_rule_admits() -> None:
    clock = FakeClock()
    ds = pool(clock, 1, {"high": 20, "mid": 10, "low": 0})
    scrape(ds, clock, metas(1)[0].key, 3)  # saturation 0.6
    assert _core(ds).offer(req("l", 0), clock.t).decision.value == "admit"  # headroom: 0.6 < 0.8
    # ceilings by rank: 1.0, 0.7, 0.4
    holdback = _core(
        ds, usage_limit="priority-holdback", usage_limit_min_ceiling=0.4, usage_limit_ceiling=1.0
    )
    assert holdback.offer(req("h", 20), clock.t).decision.value == "admit"
    assert holdback.offer(req("m", 10), clock.t).decision.value == "admit"
    assert holdback.offer(req("l", 0), clock.t).decision.value == "queued"
    assert holdback.pop_ready(clock.t) is None


def test_priority_holdback_releases_bands_in_priority_order_as_the_pool_drains() -> None:
    clock = FakeClock()
    ds = pool(clock, 1, {"high": 20, "mid": 10, "low": 0})
    key = metas(1)[0].key
    fc = _core(ds, usage_limit="priority-holdback", usage_limit_min_ceiling=0.2, usage_limit_ceiling=1.0)
    scrape(ds, clock, key, 4)  # 0.8: ceilings 1.0 / 0.6 / 0.2
    assert fc.offer(req("low", 0), clock.t).decision.value == "queued"
    assert fc.pop_ready(clock.t) is None
    scrape(ds, clock, key, 2)  # 0.4: still over the lowest band's 0.2
    assert fc.pop_ready(clock.t) is None
    scrape(ds, clock, key, 0)
    released = fc.pop_ready(clock.t)
    assert released is not None and released.request.request_id == "low"


def test_soft_reflective_ceiling_lets_a_gated_band_through_one_decision_in_a_period() -> None:
    clock = FakeClock()
    ds = pool(clock, 1, {"high": 1, "low": 0})
    scrape(ds, clock, metas(1)[0].key, 4)  # saturation 0.8: the low band's period is 4
    fc = _core(ds, usage_limit="soft-reflective-ceiling")
    assert fc.offer(req("q", 0), clock.t).decision.value == "queued"  # decision 1: closed
    released = [fc.pop_ready(clock.t) for _ in range(3)]  # decisions 2, 3, 4
    assert [r is not None for r in released] == [False, False, True]
    # the headroom rule would hold the band back at 0.8 on every decision
    assert _core(ds).threshold(0, saturation=0.8) == pytest.approx(0.8)


def test_static_limit_below_one_queues_every_band_at_its_ceiling() -> None:
    clock = FakeClock()
    ds = pool(clock, 1, {"high": 20})
    scrape(ds, clock, metas(1)[0].key, 3)  # 0.6
    assert _core(ds).offer(req("h", 20), clock.t).decision.value == "admit"
    fc = _core(ds, usage_limit="static", usage_limit_ceiling=0.5)
    assert fc.offer(req("h", 20), clock.t).decision.value == "queued"


# -- llm-d-router's configs -------------------------------------------------------------------------

# deploy/config/soft-reflective-ceiling-epp-config.yaml of llm-d-router v0.10, as published
SOFT_REFLECTIVE_EXAMPLE = """\
# EPP configuration for the soft-reflective-ceiling usage limit policy.
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
featureGates:
- flowControl
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: soft-reflective-ceiling-policy
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2.0
  - pluginRef: kv-cache-utilization-scorer
    weight: 2.0
  - pluginRef: prefix-cache-scorer
    weight: 3.0
flowControl:
  usageLimitPolicyPluginRef: soft-reflective-ceiling-policy
"""


def _flow_config(text: str) -> FlowControlConfig:
    settings = apply_sections(parse_picker_config(text), Settings())
    return flow_control_from_settings(settings, pool_name="pool")[1]


def test_the_soft_reflective_example_config_selects_the_policy() -> None:
    assert _flow_config(SOFT_REFLECTIVE_EXAMPLE).usage_limit == "soft-reflective-ceiling"


@pytest.mark.parametrize(
    ("plugin", "expected"),
    [
        (
            "{type: static-usage-limit-policy, name: lim, parameters: {threshold: 0.8}}",
            ("static", 0.8, None, "rank"),
        ),
        (
            "{type: priority-holdback-policy, name: lim, parameters: {shape: linear, domain: value, "
            "minCeiling: 0.4, maxCeiling: 0.9}}",
            ("priority-holdback", 0.9, 0.4, "value"),
        ),
        (
            "{type: priority-holdback-policy, name: lim, parameters: {minCeiling: 0.3}}",
            ("priority-holdback", 1.0, 0.3, "rank"),
        ),
    ],
)
def test_usage_limit_plugins_map_onto_the_settings(plugin: str, expected: tuple[Any, ...]) -> None:
    config = _flow_config(
        f"plugins: [{{type: queue-scorer}}, {plugin}]\nflowControl: {{usageLimitPolicyPluginRef: lim}}\n"
    )
    got = (
        config.usage_limit,
        config.usage_limit_ceiling,
        config.usage_limit_min_ceiling,
        config.usage_limit_domain,
    )
    assert got == expected


@pytest.mark.parametrize(
    ("parameters", "error"),
    [
        ("{}", r"plugins\[lim\]\.parameters\.minCeiling: Field required"),
        ("{minCeiling: 0.5, maxCeiling: 0.5}", r"minCeiling: 0.5 must be below maxCeiling"),
        ("{minCeiling: 0.2, shape: sigmoid}", r"shape"),
        ("{minCeiling: 0.2, domain: log}", r"domain"),
        ("{minCeiling: 0.2, floor: 0.1}", r"floor"),
    ],
)
def test_priority_holdback_parameters_are_checked_by_name(parameters: str, error: str) -> None:
    text = (
        "plugins: [{type: queue-scorer}, "
        f"{{type: priority-holdback-policy, name: lim, parameters: {parameters}}}]\n"
        "flowControl: {usageLimitPolicyPluginRef: lim}\n"
    )
    with pytest.raises(ConfigError, match=error):
        _flow_config(text)


def test_soft_reflective_ceiling_takes_no_parameters() -> None:
    text = SOFT_REFLECTIVE_EXAMPLE.replace(
        "- type: soft-reflective-ceiling-policy",
        "- type: soft-reflective-ceiling-policy\n  parameters: {period: 3}",
    )
    with pytest.raises(ConfigError, match="period"):
        _flow_config(text)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"flow_control.usage_limit": "priority-holdback"}, "usage_limit_min_ceiling: required"),
        ({"flow_control.usage_limit_min_ceiling": 0.3}, "read only by priority-holdback"),
        ({"flow_control.usage_limit_domain": "value"}, "read only by priority-holdback"),
        ({"flow_control.usage_limit_ceiling": 0.9}, "not by headroom"),
        (
            {"flow_control.usage_limit": "soft-reflective-ceiling", "flow_control.usage_limit_ceiling": 0.9},
            "not by soft-reflective-ceiling",
        ),
    ],
)
def test_settings_no_policy_reads_are_refused(changes: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        Settings().replace(changes)
