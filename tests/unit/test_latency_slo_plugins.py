"""``latency-slo-admitter``: a sheddable request passes only where some endpoint is predicted to meet
its latency SLO, or is idle, or is cold (llm-d-router's hasValid / hasIdle / hasCold), with the
predictions of the config's ``predicted-latency-scorer``."""

from __future__ import annotations

import random

import pytest

from infergate.config.picker import parse_picker_config
from infergate.errors import ConfigError
from infergate.scheduling.engine.scheduler import Scheduler, build_scheduler
from infergate.scheduling.plugins.latency_slo import LatencySloAdmitter
from infergate.scheduling.sdk.framework import CycleState
from infergate.scheduling.sdk.testing import make_endpoint
from infergate.types import Endpoint, InferenceRequest

# llm-d-router's example (its admitter README), plus the predictor infergate's admitter reads
CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: predicted-latency-scorer
  - type: latency-slo-admitter
    name: latency-admitter
schedulingProfiles:
  - name: default
    plugins:
      - pluginRef: latency-admitter
      - pluginRef: predicted-latency-scorer
"""
PROMPT = "x" * 4000  # ~1,000 tokens


def _scheduler() -> Scheduler:
    return build_scheduler(parse_picker_config(CONFIG), rng=random.Random(1))


def _req(priority: int, *, ttft_slo: float | None = None) -> InferenceRequest:
    return InferenceRequest(
        request_id="r", model="m", target_model="m", priority=priority, prompt=PROMPT, ttft_slo=ttft_slo
    )


def busy(name: str, waiting: int = 60) -> Endpoint:
    """Deep queue, warm cache, requests in flight: predicted far beyond a 1 s TTFT."""
    return make_endpoint(
        name, waiting_queue_size=waiting, running_requests=30, kv_cache_usage=0.7, in_flight=5
    )


def test_the_config_builds_one_admitter_bound_to_the_scorer_and_no_stage_for_it() -> None:
    s = _scheduler()
    assert [type(a) for a in s.admitters] == [LatencySloAdmitter]
    assert [sc.name for sc in s.profiles["default"].scorers] == ["predicted-latency-scorer"]
    without = CONFIG.replace("  - type: predicted-latency-scorer\n", "").replace(
        "      - pluginRef: predicted-latency-scorer\n", ""
    )
    with pytest.raises(
        ConfigError, match=r"plugins\[latency-admitter\]: needs the config's predicted-latency-scorer"
    ):
        build_scheduler(parse_picker_config(without))


def test_a_sheddable_request_no_endpoint_can_serve_in_time_is_refused() -> None:
    s = _scheduler()
    pool = [busy("a"), busy("b")]
    reason = s.admit(_req(-1), pool, set())
    assert reason is not None and "no endpoint is predicted to meet" in reason
    assert s.admit(_req(0), pool, set()) is None  # priority >= 0 always passes
    assert s.admit(_req(-1, ttft_slo=600.0), pool, set()) is None  # its own, looser bound is met


def test_an_idle_a_cold_or_a_fast_endpoint_lets_it_through() -> None:
    s = _scheduler()
    idle = make_endpoint("idle", waiting_queue_size=60, running_requests=30, kv_cache_usage=0.7, in_flight=0)
    cold = make_endpoint("cold", waiting_queue_size=60, running_requests=30, kv_cache_usage=0.01, in_flight=5)
    fast = make_endpoint("fast", waiting_queue_size=0, running_requests=1, kv_cache_usage=0.3, in_flight=1)
    for good in (idle, cold, fast):
        assert s.admit(_req(-1), [busy("a"), good], set()) is None, good.meta.name


def test_stale_endpoints_are_no_evidence() -> None:
    s = _scheduler()
    fast = make_endpoint("fast", waiting_queue_size=0, running_requests=1, kv_cache_usage=0.3, in_flight=1)
    # the only endpoint that could serve it is stale: judged on the busy one, refused
    assert s.admit(_req(-1), [busy("a"), fast], {fast.key}) is not None
    assert s.admit(_req(-1), [busy("a")], {busy("a").key}) is None  # nothing fresh: flow control decides


def test_an_adapter_the_fast_endpoint_would_have_to_load_counts_against_its_bound() -> None:
    """A sheddable request for adapter ``sql`` with a 50 ms TTFT bound: on the fast endpoint its
    prompt takes ~35 ms, and loading the adapter there 25 ms more (``loraLoadMs``). Where the
    adapter is loaded it is predicted in time; where it would be loaded first, it is not."""
    s = _scheduler()
    request = InferenceRequest(
        request_id="r", model="sql", target_model="sql", priority=-1, prompt=PROMPT, ttft_slo=0.05
    )

    def fast(adapters: list[str]) -> Endpoint:
        return make_endpoint(
            "fast",
            running_requests=1,
            kv_cache_usage=0.3,
            in_flight=1,
            max_active_adapters=2,
            running_adapters=adapters,
        )

    holder = make_endpoint(
        "a",
        waiting_queue_size=60,
        running_requests=30,
        kv_cache_usage=0.7,
        in_flight=5,
        max_active_adapters=2,
        running_adapters=["sql"],
    )
    assert s.admit(request, [holder, fast(["sql"])], set()) is None
    reason = s.admit(request, [holder, fast([])], set())
    assert reason is not None and "no endpoint is predicted to meet" in reason


FILTER_CONFIG = """\
plugins:
  - type: predicted-latency-scorer
  - type: slo-headroom-tier-filter
    name: slo-tier
    parameters: {epsilonExploreNeg: 0.25}
schedulingProfiles:
  - name: default
    plugins: [{pluginRef: slo-tier}, {pluginRef: predicted-latency-scorer}]
"""


def _tiers(seed: int) -> list[str]:
    s = build_scheduler(parse_picker_config(FILTER_CONFIG), rng=random.Random(seed))
    (f,) = [slot.plugin for slot in s.profiles["default"].filters]
    fast = make_endpoint("fast", waiting_queue_size=0, running_requests=1, kv_cache_usage=0.3, in_flight=1)
    pool = [busy("a"), fast, busy("b")]
    picks = []
    for _ in range(400):
        kept = f.filter(_req(0, ttft_slo=1.0), pool, CycleState())
        picks.append(",".join(e.meta.name for e in kept))
    assert f.filter(_req(0), pool, CycleState()) == pool  # no bounds of its own: everyone
    return picks


def test_the_headroom_filter_keeps_the_tier_that_meets_the_bounds_and_explores_the_other() -> None:
    picks = _tiers(seed=3)
    assert set(picks) == {"fast", "a,b"}
    explored = picks.count("a,b") / len(picks)
    # epsilonExploreNeg 0.25 over 400 seeded draws: within 5 standard deviations (2.2 points each)
    assert abs(explored - 0.25) < 5 * (0.25 * 0.75 / 400) ** 0.5
    with pytest.raises(ConfigError, match="epsilonExploreNeg"):
        build_scheduler(parse_picker_config(FILTER_CONFIG.replace("0.25", "1.5")))
