"""EndpointPickerConfig sections beside scheduling: each one takes effect or is refused by name.

The flowControl / saturationDetector mapping is proven on a real FlowController built by the one
flow-control builder (``flow_control_from_settings``), on a clock the test controls. The upstream
example configs below are written from llm-d-router v0.10's documented fields (deploy/config/*.yaml
and plugin READMEs), not copied; each either loads with a stated effect or fails with an error that
names the field or type infergate does not support.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from infergate.config.picker import EndpointPickerConfig, parse_picker_config
from infergate.config.picker_sections import apply_sections, passthrough_paths
from infergate.config.picker_units import parse_go_duration, parse_quantity
from infergate.config.settings import Settings
from infergate.datastore.store import Datastore
from infergate.errors import ConfigError, RateLimitedError
from infergate.flowcontrol import FlowController
from infergate.flowcontrol.settings import flow_control_from_settings
from infergate.scheduling.engine.scheduler import Scheduler, build_scheduler
from infergate.scheduling.plugins.prefix import PrefixCacheScorer
from infergate.scheduling.plugins.upstream_load import PrefixCacheAffinityFilter, TokenLoadScorer
from infergate.telemetry import GatewayMetrics
from infergate.types import EndpointMeta, EndpointMetrics, InferenceRequest, PoolSpec
from tests.unit.test_flowcontrol import FakeClock, run_once

HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
META = EndpointMeta(name="pod-a", address="10.0.0.1", port=8000)

FLOW_CONFIG = (
    HEAD
    + """
featureGates: [flowControl]
plugins:
- type: queue-scorer
- type: utilization-detector
  parameters: {queueDepthThreshold: 3, kvCacheUtilThreshold: 0.9, metricsStalenessThreshold: 500ms}
flowControl:
  maxRequests: 10
  maxBytes: 1Mi
  defaultRequestTTL: 1s
  defaultPriorityBand: {maxRequests: 1, maxBytes: 64Ki}
  saturationDetector: {pluginRef: utilization-detector}
"""
)


def _request(rid: str) -> InferenceRequest:
    return InferenceRequest(request_id=rid, model="m", target_model="m", body_size=10)


def test_sections_map_onto_the_gateway_settings() -> None:
    cfg = parse_picker_config(FLOW_CONFIG)
    full = apply_sections(cfg, Settings().replace({"flow_control.enabled": False}))
    settings = full.flow_control
    assert settings.enabled is True  # the gate wins over the CLI default
    assert (settings.request_ttl, settings.max_queued_requests, settings.max_queued_bytes) == (1.0, 1, 65536)
    assert (settings.max_queued_requests_total, settings.max_queued_bytes_total) == (10, 1048576)
    assert (settings.queue_threshold, settings.kv_threshold, settings.saturation_staleness) == (3, 0.9, 0.5)
    _, config = flow_control_from_settings(full, pool_name="p")
    assert (config.default_ttl, config.band_max_requests, config.max_requests, config.max_bytes) == (
        1.0,
        1,
        10,
        1048576,
    )


async def test_one_second_ttl_and_a_band_of_one_take_effect() -> None:
    cfg = parse_picker_config(FLOW_CONFIG)
    settings = apply_sections(cfg, Settings())
    detector, config = flow_control_from_settings(settings, pool_name="p")
    clock = FakeClock()
    ds = Datastore(clock, staleness=2.0)
    ds.set_pool(PoolSpec(name="p"))
    ds.upsert_endpoint(META)
    # 3 waiting: saturated with queueDepthThreshold 3 (the default 5 would admit at once).
    ds.update_metrics(META.key, EndpointMetrics(waiting_queue_size=3, updated_at=clock.t))
    fc = FlowController(
        ds, detector=detector, clock=clock, config=config, metrics=GatewayMetrics(CollectorRegistry())
    )
    first = asyncio.create_task(fc.admit(_request("first")))
    for _ in range(20):
        await asyncio.sleep(0)
        if fc.queued() == 1:
            break
    assert fc.queued() == 1
    with pytest.raises(RateLimitedError):  # the band holds one request
        run_once(fc.admit(_request("second")))
    clock.t += 1.01
    ds.update_metrics(META.key, EndpointMetrics(waiting_queue_size=3, updated_at=clock.t))
    fc.poke()
    with pytest.raises(RateLimitedError, match="timed out"):
        await asyncio.wait_for(first, 60)


def test_flow_control_gate_off_turns_queueing_off_and_conflicts_with_the_section() -> None:
    cfg = parse_picker_config(HEAD + "featureGates: ['flowControl=false']\nplugins: [{type: queue-scorer}]\n")
    assert apply_sections(cfg, Settings()).flow_control.enabled is False
    with pytest.raises(ConfigError, match="flowControl: set while featureGates"):
        parse_picker_config(
            HEAD + "featureGates: ['flowControl=false']\nflowControl: {defaultRequestTTL: 1s}\n"
        )


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            "featureGates: [flowControll]",
            r"featureGates\[0\]: unknown feature gate 'flowControll' \(did you mean 'flowControl'\?\)",
        ),
        ("featureGates: [enableLegacyMetrics]", "feature gate 'enableLegacyMetrics' is not supported"),
        (
            "flowControl: {noEndpointRequestTTL: soon}",
            "flowControl.noEndpointRequestTTL: expected a duration",
        ),
        ("flowControl: {enableEviction: true}", "flowControl.enableEviction"),
        ("flowControl: {defaultRequestTTL: soon}", "flowControl.defaultRequestTTL: expected a duration"),
        ("flowControl: {maxRequests: lots}", "flowControl.maxRequests: expected a quantity"),
        ("flowControl: {ttl: 1s}", "flowControl.ttl: Extra inputs are not permitted"),
        (
            "flowControl: {priorityBands: [{priority: 10, maxRequests: 7}]}",
            r"flowControl.priorityBands\[0\].maxRequests: per-band capacities",
        ),
        (
            "flowControl: {priorityBands: [{priority: 1, orderingPolicyRef: lifo-ordering-policy}]}",
            r"priorityBands\[0\].orderingPolicyRef: 'lifo-ordering-policy' is not supported",
        ),
        (
            "saturationDetector: {pluginRef: nothing}",
            "saturationDetector.pluginRef: no plugin named 'nothing'",
        ),
        (
            "plugins: [{type: utilization-detector, parameters: {headroom: 0.2}}]",
            r"plugins\[utilization-detector\].parameters.headroom: burst headroom",
        ),
        ("dataLayer: {discovery: {pluginRef: file-discovery}}", "dataLayer.discovery: not supported"),
        (
            "parser: {pluginRef: queue-scorer}\nplugins: [{type: queue-scorer}]",
            "parser.pluginRef: plugin 'queue-scorer' has type",
        ),
        (
            "requestHandler: {parsers: [{pluginRef: x}]}",
            r"requestHandler.parsers\[0\].pluginRef: no plugin named 'x'",
        ),
        ("requestHandler: {parsers: []}\nextra: 1", "extra: Extra inputs are not permitted"),
    ],
)
def test_unsupported_fields_are_refused_by_name(body: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_picker_config(HEAD + body + "\n")


def test_unknown_plugin_type_names_the_nearest() -> None:
    cfg = parse_picker_config(HEAD + "plugins: [{type: queue-scorrer}]\n")
    with pytest.raises(
        ConfigError, match="unknown type 'queue-scorrer' \\(did you mean 'queue-scorer'\\?\\)"
    ):
        build_scheduler(cfg)


def test_units() -> None:
    assert [parse_quantity(v) for v in (0, "500", "1k", "10Gi", "1.5k")] == [0, 500, 1000, 10 * 2**30, 1500]
    assert [parse_go_duration(v) for v in ("200ms", "1m30s", "2h")] == [0.2, 90.0, 7200.0]
    for bad in ("1.5", "-1", "ten"):
        with pytest.raises(ValueError):
            parse_quantity(bad)


# Configs equivalent to upstream's documented examples: (name, YAML, None = loads, or the error).
UPSTREAM_EXAMPLES: list[tuple[str, str, str | None]] = [
    (
        "GIE default with parser",
        """
plugins: [{type: queue-scorer}, {type: kv-cache-utilization-scorer}, {type: prefix-cache-scorer},
          {type: lora-affinity-scorer}, {type: openai-parser}]
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}, {pluginRef: kv-cache-utilization-scorer},
            {pluginRef: prefix-cache-scorer}, {pluginRef: lora-affinity-scorer}]
requestHandler: {parsers: [{pluginRef: openai-parser}]}
""",
        None,
    ),
    (
        "GIE full reference shape",
        """
featureGates: [flowControl]
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
  parameters: {autoTune: true, blockSizeTokens: 16, maxPrefixBlocksToMatch: 256, lruCapacityPerServer: 31250}
- type: utilization-detector
  parameters:
    {queueDepthThreshold: 5, kvCacheUtilThreshold: 0.8, metricsStalenessThreshold: 200ms, headroom: 0.0}
- type: metrics-data-source
- type: core-metrics-extractor
- type: openai-parser
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer, weight: 2}, {pluginRef: kv-cache-utilization-scorer, weight: 2},
            {pluginRef: prefix-cache-scorer, weight: 3}]
saturationDetector: {pluginRef: utilization-detector}
dataLayer:
  sources: [{pluginRef: metrics-data-source, extractors: [{pluginRef: core-metrics-extractor}]}]
parser: {pluginRef: openai-parser}
flowControl:
  maxBytes: 10Gi
  maxRequests: 0
  defaultRequestTTL: 60s
  defaultPriorityBand: {maxBytes: 10Gi, maxRequests: 5000}
""",
        None,
    ),
    (
        "approx producer with parameters (sim-epp-config shape, without decode-filter)",
        """
plugins:
- type: approx-prefix-cache-producer
  parameters: {maxPrefixTokensToMatch: 16384, lruCapacityPerServer: 31250}
- type: prefix-cache-scorer
- type: max-score-picker
- type: single-profile-handler
schedulingProfiles:
- name: default
  plugins: [{pluginRef: max-score-picker}, {pluginRef: prefix-cache-scorer, weight: 2}]
""",
        None,
    ),
    (
        "P/D (pd-epp-config shape) without its profile handler",
        """
plugins: [{type: prefill-filter}, {type: decode-filter}, {type: max-score-picker}]
schedulingProfiles:
- {name: prefill, plugins: [{pluginRef: prefill-filter}, {pluginRef: max-score-picker}]}
- {name: decode, plugins: [{pluginRef: decode-filter}, {pluginRef: max-score-picker}]}
""",
        "need a profile handler",
    ),
    (
        "data parallel (dp-epp-config): each rank is an endpoint of its own port instead",
        """
plugins:
- type: prefix-cache-scorer
- type: decode-filter
- type: max-score-picker
- type: data-parallel-profile-handler
  parameters: {primaryPort: 8000}
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: decode-filter
  - pluginRef: max-score-picker
  - {pluginRef: prefix-cache-scorer, weight: 2}
""",
        r"data-parallel-profile-handler.*deprecated upstream.*own port.*targetPorts.*remove the handler",
    ),
    (
        "soft reflective ceiling",
        """
featureGates: [flowControl]
plugins: [{type: queue-scorer}, {type: soft-reflective-ceiling-policy}]
flowControl: {usageLimitPolicyPluginRef: soft-reflective-ceiling-policy}
""",
        None,
    ),
    (
        "concurrency detector",
        """
plugins: [{type: queue-scorer}, {type: concurrency-detector, parameters: {maxConcurrency: 100}}]
flowControl: {saturationDetector: {pluginRef: concurrency-detector}}
""",
        None,
    ),
    (
        "metrics source over https, a CA that would check nothing",
        """
plugins: [{type: queue-scorer}, {type: metrics-data-source, parameters: {scheme: https, caCertPath: /ca.pem}}]
""",
        "caCertPath with insecureSkipVerify: true",
    ),
    (
        "scale from zero (flow-control README)",
        """
featureGates: [flowControl]
plugins: [{type: queue-scorer}]
flowControl: {defaultRequestTTL: 5s, noEndpointRequestTTL: 10m}
""",
        None,
    ),
    (
        "queue wait without eviction",
        """
plugins: [{type: queue-scorer}]
flowControl: {defaultRequestTTL: 0s}
""",
        r"flowControl.defaultRequestTTL: must be > 0",
    ),
    (
        "token load with the in-flight producer and the prefix affinity gate (plugin READMEs)",
        """
plugins:
- {type: inflight-load-producer}
- {type: token-load-scorer, name: token-load, parameters: {queueThresholdTokens: 65536}}
- {type: prefix-cache-scorer}
- type: prefix-cache-affinity-filter
  name: prefix-affinity
  parameters: {affinityThreshold: 0.8, explorationProbability: 0.01, maxTTFTPenaltyMs: 5000,
               ttftSource: prefillThroughput}
- {type: weighted-random-picker}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: prefix-affinity}, {pluginRef: token-load, weight: 1},
            {pluginRef: prefix-cache-scorer, weight: 1}, {pluginRef: weighted-random-picker}]
""",
        None,
    ),
    (
        "affinity gate on the latency predictor",
        """
plugins:
- {type: prefix-cache-scorer}
- {type: prefix-cache-affinity-filter, parameters: {ttftSource: latencyPredictor}}
""",
        "latencyPredictor is not supported",
    ),
    (
        "default parser list (openai, anthropic, passthrough)",
        """
plugins: [{type: openai-parser}, {type: anthropic-parser}, {type: passthrough-parser}, {type: queue-scorer}]
requestHandler:
  parsers: [{pluginRef: openai-parser}, {pluginRef: anthropic-parser}, {pluginRef: passthrough-parser}]
""",
        r"passthrough-parser\].parameters.paths: required",
    ),
    (
        "passthrough for rerank and audio",
        """
plugins:
- {type: openai-parser}
- {type: passthrough-parser, parameters: {paths: [/v1/rerank, /v1/audio/transcriptions]}}
- {type: queue-scorer}
requestHandler: {parsers: [{pluginRef: openai-parser}, {pluginRef: passthrough-parser}]}
""",
        None,
    ),
]


def _scorers(sched: Scheduler) -> list[tuple[str, float]]:
    return [(s.type, s.weight) for s in sched.profile.scorers]


def _check_gie_default(cfg: EndpointPickerConfig, s: Settings, on: bool, sched: Scheduler) -> None:
    assert _scorers(sched) == [
        ("queue-scorer", 1.0),
        ("kv-cache-utilization-scorer", 1.0),
        ("prefix-cache-scorer", 1.0),
        ("lora-affinity-scorer", 1.0),
    ]
    assert s == Settings() and passthrough_paths(cfg) == ()


def _check_gie_full(cfg: EndpointPickerConfig, s: Settings, on: bool, sched: Scheduler) -> None:
    fc = s.flow_control
    assert on and (fc.request_ttl, fc.max_queued_requests, fc.max_queued_bytes) == (60.0, 5000, 10 * 2**30)
    assert (fc.queue_threshold, fc.kv_threshold, fc.saturation_staleness) == (5, 0.8, 0.2)
    assert _scorers(sched) == [
        ("queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", 2.0),
        ("prefix-cache-scorer", 3.0),
    ]


def _check_producer(cfg: EndpointPickerConfig, s: Settings, on: bool, sched: Scheduler) -> None:
    scorer = sched.plugin("prefix-cache-scorer")
    assert isinstance(scorer, PrefixCacheScorer) and scorer._max_blocks(16) == 16384 // 16


def _check_scale_from_zero(cfg: EndpointPickerConfig, s: Settings, on: bool, sched: Scheduler) -> None:
    _, config = flow_control_from_settings(s, pool_name="p")
    assert (config.default_ttl, config.empty_pool_ttl) == (5.0, 600.0)


def _check_token_load(cfg: EndpointPickerConfig, s: Settings, on: bool, sched: Scheduler) -> None:
    assert [f.type for f in sched.profile.filters] == ["prefix-cache-affinity-filter"]
    assert _scorers(sched) == [("token-load-scorer", 1.0), ("prefix-cache-scorer", 1.0)]
    assert sched.profile.picker.type == "weighted-random-picker"
    token_load = sched.plugin("token-load")
    assert isinstance(token_load, TokenLoadScorer) and token_load._threshold == 65536
    affinity = sched.plugin("prefix-affinity")
    assert isinstance(affinity, PrefixCacheAffinityFilter)
    assert affinity._prefix is sched.plugin("prefix-cache-scorer")
    assert (affinity._p.max_ttft_penalty_ms, affinity._p.exploration_probability) == (5000, 0.01)


def _check_passthrough(cfg: EndpointPickerConfig, s: Settings, on: bool, sched: Scheduler) -> None:
    assert passthrough_paths(cfg) == ("/v1/rerank", "/v1/audio/transcriptions")


# What each example that loads changes: every one must state it (nothing loads without effect).
def _check_concurrency(cfg: EndpointPickerConfig, settings: Settings, fc_on: bool, sched: Scheduler) -> None:
    fc = settings.flow_control
    assert (fc.detector, fc.concurrency_mode, fc.max_concurrency) == ("concurrency", "requests", 100)


def _check_soft_ceiling(cfg: EndpointPickerConfig, settings: Settings, fc_on: bool, sched: Scheduler) -> None:
    assert fc_on and settings.flow_control.usage_limit == "soft-reflective-ceiling"


EFFECTS = {
    "soft reflective ceiling": _check_soft_ceiling,
    "concurrency detector": _check_concurrency,
    "GIE default with parser": _check_gie_default,
    "GIE full reference shape": _check_gie_full,
    "approx producer with parameters (sim-epp-config shape, without decode-filter)": _check_producer,
    "scale from zero (flow-control README)": _check_scale_from_zero,
    "token load with the in-flight producer and the prefix affinity gate (plugin READMEs)": _check_token_load,
    "passthrough for rerank and audio": _check_passthrough,
}


@pytest.mark.parametrize(("name", "body", "error"), UPSTREAM_EXAMPLES, ids=[e[0] for e in UPSTREAM_EXAMPLES])
def test_upstream_example_configs_take_effect_or_fail(name: str, body: str, error: str | None) -> None:
    def load() -> None:
        cfg = parse_picker_config(HEAD + body)
        sched = build_scheduler(cfg)
        settings = apply_sections(cfg, Settings())
        EFFECTS[name](cfg, settings, settings.flow_control.enabled, sched)

    if error is None:
        load()
    else:
        assert name not in EFFECTS
        with pytest.raises(ConfigError, match=error):
            load()


def test_producer_parameters_reach_the_scorer() -> None:
    cfg = parse_picker_config(HEAD + UPSTREAM_EXAMPLES[2][1])
    scorer = cfg.plugin("prefix-cache-scorer")
    assert scorer.parameters == {"maxPrefixTokensToMatch": 16384, "lruCapacityPerServer": 31250}
    with pytest.raises(ConfigError, match="differ from approx-prefix-cache-producer"):
        parse_picker_config(
            HEAD
            + """
plugins:
- {type: approx-prefix-cache-producer, parameters: {blockSizeTokens: 32}}
- {type: prefix-cache-scorer, parameters: {blockSizeTokens: 16}}
"""
        )


def test_gie_reference_config_changes_nothing_but_what_it_states() -> None:
    cfg = parse_picker_config(HEAD + UPSTREAM_EXAMPLES[1][1])
    settings = apply_sections(cfg, Settings().replace({"flow_control.enabled": False})).flow_control
    assert settings.enabled
    assert settings.request_ttl == 60.0 and settings.max_queued_requests == 5000
    assert settings.max_queued_bytes == 10 * 2**30 and settings.max_queued_requests_total is None
    assert (settings.queue_threshold, settings.kv_threshold, settings.saturation_staleness) == (5, 0.8, 0.2)
    # The generated default profile leaves out the data-layer and parser plugins.
    plain = parse_picker_config(HEAD + "plugins: [{type: queue-scorer}, {type: openai-parser}]\n")
    assert [r.plugin_ref for r in plain.scheduling_profiles[0].plugins] == ["queue-scorer"]


def test_a_non_scheduling_plugin_in_a_profile_is_refused() -> None:
    cfg = parse_picker_config(
        HEAD
        + """
plugins: [{type: utilization-detector}, {type: max-score-picker}]
schedulingProfiles:
- {name: default, plugins: [{pluginRef: utilization-detector}, {pluginRef: max-score-picker}]}
"""
    )
    with pytest.raises(
        ConfigError, match="'utilization-detector' \\(type utilization-detector\\) is not a filter"
    ):
        build_scheduler(cfg)
