"""P/D disaggregation in the scheduler: role filters, the prefix-based decider's threshold on the
decode endpoint's uncached tokens, the profile handler's header and its configuration errors."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry

from infergate.config.picker import parse_picker_config
from infergate.errors import ConfigError
from infergate.scheduling.engine.scheduler import Scheduler, build_scheduler
from infergate.scheduling.plugins.disagg import PREFILLER_HEADER, DisaggProfileHandler, RoleFilter
from infergate.scheduling.sdk.framework import CycleState
from infergate.telemetry import GatewayMetrics
from infergate.types import Endpoint, EndpointMeta, EndpointMetrics, InferenceRequest, SchedulingResult
from tests.integration.test_extproc import metric_value

MODEL = "m"


def ep(port: int, role: str | None, queue: int = 0) -> Endpoint:
    labels = {"llm-d.ai/role": role} if role else {}
    return Endpoint(
        meta=EndpointMeta(name=f"p{port}", address="10.0.0.1", port=port, labels=labels),
        metrics=EndpointMetrics(waiting_queue_size=queue, updated_at=1.0),
    )


def req(prompt: str) -> InferenceRequest:
    return InferenceRequest(
        request_id="r", model=MODEL, target_model=MODEL, prompt=prompt, body={"prompt": prompt}
    )


CONFIG = """
plugins:
- type: prefix-cache-scorer
  parameters: {{loadAware: false, autoTune: false, blockSizeTokens: 16}}
- type: queue-scorer
- type: prefill-filter
- type: decode-filter
- type: max-score-picker
- type: disagg-profile-handler
  parameters: {{deciders: {{prefill: pd-decider}}}}
- type: prefix-based-pd-decider
  name: pd-decider
  parameters: {{nonCachedTokens: {non_cached}, promptTokens: {prompt_tokens}}}
schedulingProfiles:
- name: prefill
  plugins: [{{pluginRef: prefill-filter}}, {{pluginRef: queue-scorer}}, {{pluginRef: max-score-picker}}]
- name: decode
  plugins:
  - {{pluginRef: decode-filter}}
  - {{pluginRef: prefix-cache-scorer, weight: 2}}
  - {{pluginRef: queue-scorer}}
  - {{pluginRef: max-score-picker}}
"""


def scheduler(non_cached: int = 256, prompt_tokens: int = 0) -> Scheduler:
    cfg = parse_picker_config(CONFIG.format(non_cached=non_cached, prompt_tokens=prompt_tokens))
    return build_scheduler(cfg, rng=random.Random(1))


# decode 8001 (busy), decode 8002, prefill 8003 (idle), prefill 8004 (busy), both 8005 (busy), unlabelled 8006
POOL = [
    ep(8001, "decode", 5),
    ep(8002, "decode"),
    ep(8003, "prefill"),
    ep(8004, "prefill", 9),
    ep(8005, "both", 9),
]


def test_long_uncached_prompts_are_disaggregated_short_ones_are_not() -> None:
    s = scheduler()
    long = req("x" * 4 * 2000)  # ~2000 tokens, nothing cached anywhere
    result = s.schedule(long, POOL)
    assert result.primary.key == "10.0.0.1:8002"  # decode-filter, then the empty queue
    assert result.request_headers == {PREFILLER_HEADER: "10.0.0.1:8003"}
    short = req("y" * 4 * 100)  # 100 tokens < nonCachedTokens
    result = s.schedule(short, POOL)
    assert result.primary.key == "10.0.0.1:8002"
    assert result.request_headers == {}


def test_a_prompt_cached_on_the_decode_endpoint_is_not_disaggregated() -> None:
    s = scheduler(non_cached=256)
    prompt = "z" * 4 * 1000
    first = s.schedule(req(prompt), POOL)
    assert PREFILLER_HEADER in first.request_headers
    # the decode endpoint was credited with the prompt: only the new question is uncached
    second = s.schedule(req(prompt + "w" * 4 * 100), POOL)
    assert second.primary.key == first.primary.key
    assert second.request_headers == {}
    handler = next(p for p in s.plugins() if isinstance(p, DisaggProfileHandler))
    assert handler.decisions == {"decode-only": 1, "prefill-decode": 1}


def test_prompt_tokens_gate_and_zero_threshold() -> None:
    assert (
        scheduler(non_cached=16, prompt_tokens=5000).schedule(req("x" * 4 * 2000), POOL).request_headers == {}
    )
    assert scheduler(non_cached=0).schedule(req("x" * 4 * 2000), POOL).request_headers == {}


def test_without_prefill_endpoints_the_decode_endpoint_serves_alone() -> None:
    s = scheduler()
    pool = [ep(8001, "decode"), ep(8006, None)]
    result = s.schedule(req("x" * 4 * 2000), pool)
    assert result.request_headers == {}


def test_role_filters() -> None:
    s = scheduler()
    for _ in range(5):
        result = s.schedule(
            req("x" * 4 * 2000 + str(random.random())), [ep(8003, "prefill"), ep(8005, "both")]
        )
        assert result.primary.key == "10.0.0.1:8005"  # a prefill-only pod never decodes
    decode_filter = s.plugin("decode-filter")
    prefill_filter = s.plugin("prefill-filter")
    assert isinstance(decode_filter, RoleFilter) and isinstance(prefill_filter, RoleFilter)
    kept = decode_filter.filter(
        req(""), [ep(1, "decode"), ep(2, "prefill"), ep(3, None), ep(4, "prefill-decode")], CycleState()
    )
    assert [e.meta.port for e in kept] == [1, 3, 4]
    kept = prefill_filter.filter(
        req(""), [ep(1, "decode"), ep(2, "prefill"), ep(3, None), ep(4, "both")], CycleState()
    )
    assert [e.meta.port for e in kept] == [2, 4]


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (
            ("pluginRef: queue-scorer}}, {{pluginRef: max-score-picker}}]", "pluginRef: max-score-picker}}]"),
            None,
        ),
        (
            ("  - {{pluginRef: prefix-cache-scorer, weight: 2}}\n", ""),
            "add prefix-cache-scorer",
        ),
        (("prefill: pd-decider", "prefill: nothing"), "no decider plugin named 'nothing'"),
        (("parameters: {{deciders: {{prefill: pd-decider}}}}", "parameters: {{}}"), "never run"),
        (("- name: prefill\n", "- name: pre\n"), "no scheduling profile named 'prefill'"),
    ],
)
def test_configuration_errors(edit: tuple[str, str], fragment: str | None) -> None:
    text = CONFIG.replace(*edit).format(non_cached=16, prompt_tokens=0)
    if fragment is None:
        build_scheduler(parse_picker_config(text))
        return
    with pytest.raises(ConfigError, match=fragment):
        build_scheduler(parse_picker_config(text))


def test_deciders_cannot_sit_in_a_profile() -> None:
    text = CONFIG.format(non_cached=16, prompt_tokens=0).replace(
        "  - {pluginRef: max-score-picker}\n",
        "  - {pluginRef: max-score-picker}\n  - {pluginRef: pd-decider}\n",
    )
    with pytest.raises(ConfigError, match="pd-decider"):
        build_scheduler(parse_picker_config(text))


def test_result_carries_the_decode_profiles_scores() -> None:
    result: SchedulingResult = scheduler().schedule(req("x" * 4 * 2000), POOL)
    assert result.profile == "decode"
    assert set(result.scores) == {"10.0.0.1:8001", "10.0.0.1:8002", "10.0.0.1:8005"}


def test_decisions_are_counted_under_llm_d_routers_names() -> None:
    """``llm_d_epp_pd_decision_total`` and ``llm_d_epp_disagg_decision_total`` (labelled with the
    handler plugin), and their deprecated ``llm_d_inference_scheduler_*`` twins."""
    registry = CollectorRegistry()
    cfg = parse_picker_config(CONFIG.format(non_cached=256, prompt_tokens=0))
    s = build_scheduler(cfg, rng=random.Random(1), metrics=GatewayMetrics(registry))
    s.schedule(req("x" * 4 * 2000), POOL)
    s.schedule(req("y" * 4 * 100), POOL)
    s.schedule(req("v" * 4 * 100), POOL)
    plugin = {"plugin_name": "disagg-profile-handler", "plugin_type": "disagg-profile-handler"}
    for family in ("llm_d_epp_pd_decision_total", "llm_d_epp_disagg_decision_total"):
        for decision, count in (("prefill-decode", 1), ("decode-only", 2)):
            labels = {**plugin, "model_name": MODEL, "decision_type": decision}
            assert metric_value(registry, family, **labels) == count, (family, decision)
    for family in (
        "llm_d_inference_scheduler_pd_decision_total",
        "llm_d_inference_scheduler_disagg_decision_total",
    ):
        assert metric_value(registry, family, model_name=MODEL, decision_type="decode-only") == 2
