"""Statically configured bands (llm-d-router's ``flowControl.priorityBands[].priority``): the ranked
usage-limit policies count them among the priorities in use from the start and never drop them,
as the reference's registry does; ``flow_control.priority_bands`` carries them, and a policy that
does not rank refuses it by name.

The pools here have no InferenceObjective, so without the listed bands a ranked policy sees only
the priorities of requests: the first request is alone and holds nothing back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infergate.config.layers import load_settings
from infergate.config.picker import parse_picker_config
from infergate.config.picker_sections import apply_sections
from infergate.config.settings import RANKED_USAGE_LIMITS, Settings
from infergate.errors import ConfigError
from infergate.flowcontrol import FlowCore, SaturationDetector
from infergate.flowcontrol.settings import flow_control_from_settings
from infergate.flowcontrol.usage_limits import (
    BAND_IDLE_SECONDS,
    USAGE_LIMITS,
    PriorityLevels,
    usage_limit_policy,
)
from tests.unit.test_flowcontrol_room import FakeClock, metas, pool, req, scrape

HOLDBACK = "{type: priority-holdback-policy, name: lim, parameters: {domain: rank, minCeiling: 0.4}}"
SOFT = "{type: soft-reflective-ceiling-policy, name: lim}"
STATIC = "{type: static-usage-limit-policy, name: lim}"


def _config(policy: str | None, bands: str = "[{priority: 10}, {priority: 0}]", extra: str = "") -> str:
    """A picker config listing ``bands`` under the usage-limit plugin ``policy`` (None: none named)."""
    plugins = "[{type: queue-scorer}" + (f", {policy}" if policy else "") + "]"
    ref = "  usageLimitPolicyPluginRef: lim\n" if policy else ""
    return f"plugins: {plugins}\nflowControl:\n{ref}  priorityBands: {bands}\n{extra}"


def _settings(text: str, settings: Settings | None = None) -> Settings:
    return apply_sections(parse_picker_config(text), settings or Settings())


def _core(text: str, clock: FakeClock, waiting: int) -> FlowCore:
    """Flow control as the config sets it, over one endpoint with ``waiting`` queued (5 = full)."""
    ds = pool(clock, 1)  # no objectives
    scrape(ds, clock, metas(1)[0].key, waiting)
    config = flow_control_from_settings(_settings(text), pool_name="pool")[1]
    return FlowCore(ds, detector=SaturationDetector(track_in_flight=False), config=config)


# -- the levels ------------------------------------------------------------------------------------


def test_listed_bands_count_from_the_start_and_never_expire() -> None:
    levels = PriorityLevels(configured=(10, 0))
    assert levels.levels(5, now=0.0, declared=[]) == [10, 5, 0]
    # 5 has been idle for the idle time and goes; the listed bands stay, idle or not
    assert levels.levels(-1, now=1.0 + BAND_IDLE_SECONDS, declared=[]) == [10, 0, -1]


def test_the_ranked_names_are_the_policies_that_rank() -> None:
    """The settings refuse ``priority_bands`` by name, the policies by what they read: one list."""
    ranked = {n for n in USAGE_LIMITS if usage_limit_policy(n, min_ceiling=0.5).ranked}
    assert ranked == set(RANKED_USAGE_LIMITS)


# -- llm-d-router's priorityBands under a ranked policy -------------------------------------------


def test_priority_holdback_spreads_its_ceilings_over_the_listed_bands_before_any_request() -> None:
    text = _config(HOLDBACK)
    assert _settings(text).flow_control.priority_bands == (10, 0)
    clock = FakeClock()
    fc = _core(text, clock, waiting=3)  # saturation 0.6
    # by rank over [10, 0]: 1.0 and 0.4, so the very first request (priority 0) waits
    assert fc.offer(req("first", 0), clock.t).decision.value == "queued"
    assert fc.threshold(10) == 1.0
    assert fc.threshold(5) == pytest.approx(0.7)  # an unlisted priority in between: [10, 5, 0]
    # the listed bands outlive any idle time; the level only requests used goes
    clock.t += 2 * BAND_IDLE_SECONDS
    assert fc.threshold(0, now=clock.t) == pytest.approx(0.4)
    # without the bands the first request is alone (one level: the max ceiling) and is admitted
    bare = _config(HOLDBACK, bands="[]")
    assert _settings(bare).flow_control.priority_bands == ()
    assert _core(bare, FakeClock(), waiting=3).offer(req("first", 0), 0.0).decision.value == "admit"


def test_soft_reflective_ceiling_gates_the_first_request_of_a_listed_lower_band() -> None:
    text = _config(SOFT, bands="[{priority: 1}, {priority: 0}]")
    clock = FakeClock()
    # saturation 0.8: band 0 of [1, 0] is past its reflective ceiling (0.2), open one decision in 4
    assert _core(text, clock, waiting=4).offer(req("first", 0), clock.t).decision.value == "queued"
    bare = _config(SOFT, bands="[]")
    assert _core(bare, clock, waiting=4).offer(req("first", 0), clock.t).decision.value == "admit"


def test_only_the_listed_bands_priorities_count() -> None:
    """The default bands are templates for unlisted priorities (the reference ignores their
    ``priority``); a listed band without one adds none."""
    extra = "  defaultPriorityBand: {priority: 7}\n  defaultNegativePriorityBand: {priority: -5}\n"
    text = _config(HOLDBACK, bands="[{priority: 10}, {maxRequests: 5000}]", extra=extra)
    assert _settings(text).flow_control.priority_bands == (10,)


def test_a_priority_listed_twice_is_refused_by_name() -> None:
    text = _config(HOLDBACK, bands="[{priority: 10}, {priority: 10}]")
    with pytest.raises(
        ConfigError, match=r"flowControl\.priorityBands\[1\]\.priority: duplicate priority level 10"
    ):
        _settings(text)


def test_the_settings_bands_and_the_configs_add_up_under_the_policy_in_force() -> None:
    """The config's bands join ``flow_control.priority_bands`` when the policy in force ranks,
    whichever layer chose it."""
    base = Settings().replace(
        {"flow_control.usage_limit": "soft-reflective-ceiling", "flow_control.priority_bands": (20, 10)}
    )
    assert _settings(_config(HOLDBACK), base).flow_control.priority_bands == (20, 10, 0)
    assert _settings(_config(None), base).flow_control.priority_bands == (20, 10, 0)


# -- policies that do not rank ---------------------------------------------------------------------


@pytest.mark.parametrize("policy", [None, STATIC], ids=["headroom", "static"])
def test_a_config_restating_bands_for_a_policy_that_does_not_rank_loads_and_changes_nothing(
    policy: str | None,
) -> None:
    text = _config(policy)
    assert _settings(text).flow_control.priority_bands == ()
    clock = FakeClock()
    listed, bare = _core(text, clock, waiting=3), _core(_config(policy, bands="[]"), clock, waiting=3)
    assert [listed.threshold(p, now=clock.t) for p in (10, 5, 0)] == [
        bare.threshold(p, now=clock.t) for p in (10, 5, 0)
    ]


@pytest.mark.parametrize("policy", ["headroom", "static"])
def test_priority_bands_in_the_settings_are_refused_with_a_policy_that_does_not_rank(policy: str) -> None:
    with pytest.raises(
        ConfigError,
        match=rf"priority_bands: read only by priority-holdback and soft-reflective-ceiling, not by {policy}",
    ):
        Settings().replace({"flow_control.usage_limit": policy, "flow_control.priority_bands": (10, 0)})


def test_the_refusal_names_the_setting_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text("flow_control:\n  priority_bands: [10, 0]\n")
    with pytest.raises(ConfigError, match=r"flow_control \(file\): priority_bands: read only by"):
        load_settings(file=path, environ={})
    path.write_text("flow_control:\n  usage_limit: soft-reflective-ceiling\n  priority_bands: [10, 0]\n")
    assert load_settings(file=path, environ={}).settings.flow_control.priority_bands == (10, 0)


def test_a_config_switching_to_a_policy_that_does_not_rank_refuses_the_settings_bands() -> None:
    """``priority_bands`` set for a ranked policy the config then replaces would do nothing."""
    base: dict[str, Any] = {
        "flow_control.usage_limit": "soft-reflective-ceiling",
        "flow_control.priority_bands": (10, 0),
    }
    with pytest.raises(ConfigError, match=r"priority_bands: read only by .*, not by static"):
        _settings(_config(STATIC), Settings().replace(base))


def test_a_priority_listed_twice_in_the_settings_is_refused() -> None:
    changes = {"flow_control.usage_limit": "soft-reflective-ceiling", "flow_control.priority_bands": (3, 3)}
    with pytest.raises(ConfigError, match="priority_bands: 3 listed twice"):
        Settings().replace(changes)
