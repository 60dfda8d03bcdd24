"""EndpointPickerConfig (schema, default, YAML round trip, errors) and Settings."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pydantic
import pytest
import yaml

from infergate.config import (
    EndpointPickerConfig,
    PluginRef,
    PluginSpec,
    ProfileSpec,
    Settings,
    default_picker_config,
    dump_picker_config,
    load_picker_config,
    parse_picker_config,
    reference_picker_config,
)
from infergate.errors import ConfigError

REFERENCE_SHAPED = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
  parameters: {autoTune: true, blockSizeTokens: 16, maxPrefixBlocksToMatch: 256, lruCapacityPerServer: 31250}
- type: utilization-detector
  parameters: {queueDepthThreshold: 5, kvCacheUtilThreshold: 0.8, metricsStalenessThreshold: 200ms}
- name: strict-affinity
  type: prefix-cache-affinity-filter
  parameters: {affinityThreshold: 0.99}
- name: loose-affinity
  type: prefix-cache-affinity-filter
  parameters: {affinityThreshold: 0.8}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: strict-affinity}
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: prefix-cache-scorer, weight: 3}
saturationDetector: {pluginRef: utilization-detector}
flowControl: {maxBytes: 10Gi, defaultRequestTTL: 60s}
"""


def test_reference_shaped_config_parses() -> None:
    cfg = parse_picker_config(REFERENCE_SHAPED)
    assert cfg.feature_gates == ["flowControl"]
    assert [p.ref for p in cfg.plugins][-2:] == ["strict-affinity", "loose-affinity"]
    assert cfg.plugin("loose-affinity").type == "prefix-cache-affinity-filter"
    assert cfg.plugin("prefix-cache-scorer").parameters["lruCapacityPerServer"] == 31250
    (profile,) = cfg.scheduling_profiles
    assert [(r.plugin_ref, r.weight) for r in profile.plugins] == [
        ("strict-affinity", None),
        ("queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", 2.0),
        ("prefix-cache-scorer", 3.0),
    ]
    assert cfg.saturation_detector == {"pluginRef": "utilization-detector"}
    assert cfg.flow_control == {"maxBytes": "10Gi", "defaultRequestTTL": "60s"}


def test_default_config_is_the_predicted_latency_scorer_and_round_trips() -> None:
    cfg = default_picker_config(lora=True, base_models=["base"])
    (profile,) = cfg.scheduling_profiles
    assert [(r.plugin_ref, r.weight) for r in profile.plugins] == [
        ("predicted-latency-scorer", 1.0),
        ("least-in-flight-scorer", 0.1),
        ("max-score-picker", None),
    ]
    assert cfg.plugin("predicted-latency-scorer").parameters == {"baseModels": ["base"]}
    assert default_picker_config(lora=False).plugin("predicted-latency-scorer").parameters == {}
    assert parse_picker_config(dump_picker_config(cfg)) == cfg


@pytest.mark.parametrize("lora", [False, True])
def test_reference_config_matches_reference_and_round_trips(lora: bool) -> None:
    cfg = reference_picker_config(lora=lora)
    (profile,) = cfg.scheduling_profiles
    expected: list[tuple[str, float | None]] = [
        ("queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", 2.0),
        ("prefix-cache-scorer", 3.0),
    ]
    if lora:
        expected.append(("lora-affinity-scorer", 2.0))
    expected.append(("max-score-picker", None))
    assert profile.name == "default"
    assert [(r.plugin_ref, r.weight) for r in profile.plugins] == expected
    text = dump_picker_config(cfg)
    doc = yaml.safe_load(text)
    assert doc["apiVersion"] == "inference.networking.x-k8s.io/v1alpha1"
    assert doc["kind"] == "EndpointPickerConfig"
    assert doc["schedulingProfiles"][0]["plugins"][0] == {"pluginRef": "queue-scorer", "weight": 2.0}
    assert parse_picker_config(text) == cfg


def test_round_trip_of_a_full_config(tmp_path: Path) -> None:
    cfg = parse_picker_config(REFERENCE_SHAPED)
    path = tmp_path / "epp.yaml"
    path.write_text(dump_picker_config(cfg))
    assert load_picker_config(path) == cfg


def test_no_profiles_gets_a_default_profile_of_every_plugin() -> None:
    cfg = parse_picker_config("plugins: [{type: queue-scorer}, {type: random-picker, name: rp}]\n")
    assert cfg.scheduling_profiles == [
        ProfileSpec(
            name="default", plugins=[PluginRef(plugin_ref="queue-scorer"), PluginRef(plugin_ref="rp")]
        )
    ]


def test_models_validate_when_built_in_code() -> None:
    with pytest.raises(ValueError, match="no plugin named 'missing'"):
        EndpointPickerConfig(
            plugins=[PluginSpec(type="queue-scorer")],
            scheduling_profiles=[ProfileSpec(name="p", plugins=[PluginRef(plugin_ref="missing")])],
        )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("plugins: [{type: a}]\nschedulingProfiles: [{name: d, plugins: [{pluginRef: b}]}]\n",
         "schedulingProfiles[0].plugins[0].pluginRef: no plugin named 'b' (plugins: a)"),
        ("plugins: [{type: a}]\nschedulingProfiles: [{name: d, plugins: [{pluginRef: a, weight: -1}]}]\n",
         "schedulingProfiles[0].plugins[0].weight: weight must be a finite number >= 0 (got -1)"),
        ("plugins: [{type: a}]\nschedulingProfiles: [{name: d, plugins: [{pluginRef: a, weight: .nan}]}]\n",
         "schedulingProfiles[0].plugins[0].weight: weight must be a finite number >= 0"),
        ("plugins: [{type: a}, {type: a}]\n", "plugins[1]: duplicate plugin name 'a'"),
        ("plugins: [{type: a, name: x}, {type: b, name: x}]\n", "plugins[1]: duplicate plugin name 'x'"),
        ("plugins: [{type: a}]\nschedulingProfiles: [{name: d, plugins: [{pluginRef: a}, {pluginRef: a}]}]\n",
         "schedulingProfiles[0].plugins[1].pluginRef: 'a' is referenced twice in profile 'd'"),
        ("plugins: [{type: a}]\nschedulingProfiles: [{name: d}, {name: d}]\n",
         "schedulingProfiles[1].name: duplicate profile name 'd'"),
        ("plugins: [{name: x}]\n", "plugins[0].type: Field required"),
        ("plugins: [{type: a, weight: 2}]\n", "plugins[0].weight: Extra inputs are not permitted"),
        ("kind: EndpointPickerConfiguration\n", "kind: Input should be 'EndpointPickerConfig'"),
        ("apiVersion: v1\n", "apiVersion: Input should be 'inference.networking.x-k8s.io/v1alpha1'"),
        ("plugin: []\n", "plugin: Extra inputs are not permitted"),
        ("[1, 2]\n", "(config): expected a mapping"),
    ],
)  # fmt: skip
def test_picker_config_errors_name_the_field(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "epp.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_picker_config(path)
    assert f"{path}: EndpointPickerConfig: {fragment}" in str(info.value)


def test_picker_config_unreadable_or_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_picker_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("plugins: [unclosed\n"))
    with pytest.raises(ConfigError, match=f"{bad}: invalid YAML"):
        load_picker_config(bad)


def test_settings_defaults_follow_the_reference() -> None:
    s = Settings()
    assert (s.scrape.interval, s.scrape.staleness, s.scrape.health_interval, s.proxy.retries) == (
        0.05,
        2.0,
        1.0,
        1,
    )
    fc = s.flow_control
    assert (fc.queue_threshold, fc.kv_threshold, fc.saturation_staleness) == (5, 0.8, 0.2)
    assert (fc.request_ttl, s.listeners.grpc_port, s.listeners.admin_port) == (60.0, 9002, 9090)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        s.proxy.retries = 3


def test_settings_replace_validates() -> None:
    s = Settings().replace({"scrape.interval": "100ms"})
    assert s.scrape.interval == 0.1 and s.proxy.retries == 1
    with pytest.raises(ConfigError, match=r"scrape\.interval: Input should be greater than 0"):
        Settings().replace({"scrape.interval": 0})
    with pytest.raises(ConfigError, match=r"proxy\.retries: Input should be greater than or equal to 0"):
        Settings().replace({"proxy.retries": -1})
    with pytest.raises(ConfigError, match=r"scrape\.nope: Extra inputs are not permitted"):
        Settings().replace({"scrape.nope": 1})
