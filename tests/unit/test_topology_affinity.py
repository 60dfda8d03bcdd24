"""Topology-aware prefill placement: llm-d-router's ``topology-extractor``, ``topology-affinity-filter``
and ``topology-affinity-scorer``, and the P/D handler giving the prefill profile its decode pick.

The end-to-end test runs llm-d-router's ``pd-topology-epp-config.yaml`` as published: the prefill
endpoint on the decode pick's host wins over an idle one elsewhere, which the same config without
the topology plugins does not do.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from infergate.api.loader import load_manifests
from infergate.config.picker import parse_picker_config
from infergate.errors import ConfigError
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.scheduling.plugins.disagg import PREFILLER_HEADER
from infergate.scheduling.plugins.topology import (
    PEER_ENDPOINT,
    TopologyAffinityFilter,
    TopologyAffinityParams,
    TopologyAffinityScorer,
    TopologyExtractor,
    TopologyExtractorParams,
)
from infergate.scheduling.sdk.framework import CycleState
from infergate.types import Endpoint, EndpointMeta, EndpointMetrics, InferenceRequest

HOST, RACK, ZONE, REGION = (
    "kubernetes.io/hostname",
    "topology.kubernetes.io/rack",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
)


def ep(name: str, *, queue: int = 0, role: str | None = None, hostname: str = "", **place: str) -> Endpoint:
    keys = {"host": HOST, "rack": RACK, "zone": ZONE, "region": REGION}
    labels = {keys[k]: v for k, v in place.items()}
    if role is not None:
        labels["llm-d.ai/role"] = role
    return Endpoint(
        meta=EndpointMeta(name=name, address=name, port=8000, labels=labels, hostname=hostname),
        metrics=EndpointMetrics(waiting_queue_size=queue, updated_at=1.0),
    )


def _bound(plugin: Any, extractor: TopologyExtractor | None = None) -> Any:
    plugin.bind_plugins({"topology-extractor": (extractor or TopologyExtractor(), "topology-extractor")})
    return plugin


def _state(peer: Endpoint | None) -> CycleState:
    state = CycleState()
    if peer is not None:
        state.put(PEER_ENDPOINT, peer)
    return state


REQ = InferenceRequest(request_id="r", model="m", target_model="m")
DECODE = ep("decode", host="h1", rack="r1", zone="z1", region="eu")
CANDIDATES = [
    ep("same-host", host="h1", rack="r1", zone="z1", region="eu"),
    ep("same-rack", host="h2", rack="r1", zone="z1", region="eu"),
    ep("same-zone", host="h3", rack="r2", zone="z1", region="eu"),
    ep("same-region", host="h4", rack="r3", zone="z2", region="eu"),
    ep("elsewhere", host="h5", rack="r4", zone="z3", region="us"),
    ep("unlabelled"),
]


def test_the_scorer_grades_the_closest_shared_level() -> None:
    scorer = _bound(TopologyAffinityScorer())
    scores = scorer.score(REQ, CANDIDATES, _state(DECODE))
    assert list(scores.values()) == [1.0, 0.2, 0.05, 0.02, 0.0, 0.0]
    assert set(scorer.score(REQ, CANDIDATES, _state(None)).values()) == {0.0}  # no decode pick
    assert set(scorer.score(REQ, CANDIDATES, _state(ep("nowhere"))).values()) == {0.0}


@pytest.mark.parametrize(
    ("floor", "kept"),
    [
        ("host", ["same-host"]),
        ("rack", ["same-host", "same-rack"]),
        ("zone", ["same-host", "same-rack", "same-zone"]),
        ("region", ["same-host", "same-rack", "same-zone", "same-region"]),
    ],
)
def test_the_filter_keeps_what_is_at_least_as_close_as_its_floor(floor: str, kept: list[str]) -> None:
    f = _bound(TopologyAffinityFilter(TopologyAffinityParams(min_affinity=floor)))  # type: ignore[arg-type]
    assert [e.meta.name for e in f.filter(REQ, CANDIDATES, _state(DECODE))] == kept


def test_the_filter_fails_open() -> None:
    f = _bound(TopologyAffinityFilter())
    far = [ep("a", host="h9"), ep("b", host="h8")]
    assert f.filter(REQ, far, _state(DECODE)) == far  # nobody on the host: everyone
    assert f.filter(REQ, CANDIDATES, _state(None)) == CANDIDATES  # outside a prefill profile
    assert f.filter(REQ, CANDIDATES, _state(ep("nowhere"))) == CANDIDATES  # the decode's place unknown


def test_an_empty_name_matches_nothing_and_spec_hostname_stands_in_for_the_label() -> None:
    scorer = _bound(TopologyAffinityScorer())
    rackless = ep("peer", host="h1")
    assert list(scorer.score(REQ, [ep("x", host="h2")], _state(rackless)).values()) == [0.0]
    by_spec = ep("peer", hostname="node-7")
    assert list(scorer.score(REQ, [ep("y", hostname="node-7"), ep("z")], _state(by_spec)).values()) == [
        1.0,
        0.0,
    ]
    custom = TopologyExtractor(TopologyExtractorParams(hostname="example.com/host"))
    labelled = Endpoint(meta=EndpointMeta(name="c", address="c", port=1, labels={"example.com/host": "h1"}))
    assert list(
        _bound(TopologyAffinityScorer(), custom).score(REQ, [labelled], _state(labelled)).values()
    ) == [1.0]


def test_pods_spec_hostname_reaches_the_endpoint(tmp_path: Path) -> None:
    (tmp_path / "pool.yaml").write_text(
        """
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: pool}
spec:
  selector: {matchLabels: {app: vllm}}
  targetPorts: [{number: 8000}]
  endpointPickerRef: {name: epp, port: {number: 9002}}
---
apiVersion: v1
kind: Pod
metadata: {name: vllm-0, labels: {app: vllm}}
spec: {hostname: node-7, containers: [{name: vllm, image: vllm}]}
status: {phase: Running, podIP: 10.0.0.1}
"""
    )
    manifests = load_manifests([tmp_path / "pool.yaml"])
    (meta,) = manifests.endpoints_for(manifests.pool_spec("pool"))
    assert meta.hostname == "node-7"


# llm-d-router v0.10's deploy/config/pd-topology-epp-config.yaml, as published (comments shortened)
UPSTREAM = """\
# Sample EPP configuration for running with P/D, adding topology-aware affinity to the prefill profile.
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: approx-prefix-cache-producer
  parameters:
    maxPrefixTokensToMatch: 16384
    lruCapacityPerServer: 31250
- type: prefix-cache-scorer
- type: queue-scorer
- type: prefill-filter
- type: decode-filter
- type: max-score-picker
- type: topology-extractor
- type: topology-affinity-filter
- type: topology-affinity-scorer
- type: disagg-profile-handler
  parameters:
    deciders:
      prefill: prefix-based-pd-decider
- type: prefix-based-pd-decider
  parameters:
    nonCachedTokens: 16
schedulingProfiles:
- name: prefill
  plugins:
  - pluginRef: prefill-filter
  - pluginRef: topology-affinity-filter
  - pluginRef: max-score-picker
  - pluginRef: prefix-cache-scorer
    weight: 2
  - pluginRef: queue-scorer
    weight: 1
  - pluginRef: topology-affinity-scorer
    weight: 1
- name: decode
  plugins:
  - pluginRef: decode-filter
  - pluginRef: max-score-picker
  - pluginRef: prefix-cache-scorer
    weight: 2
  - pluginRef: queue-scorer
    weight: 1
"""


def test_the_upstream_config_places_prefill_on_the_decode_picks_host() -> None:
    pool = [
        ep("decode-a", role="decode", host="h1", zone="z1"),
        ep("decode-b", role="decode", queue=4, host="h2", zone="z1"),
        ep("prefill-a", role="prefill", queue=3, host="h1", zone="z1"),  # busier, on decode-a's host
        ep("prefill-b", role="prefill", host="h2", zone="z1"),  # idle, elsewhere
    ]
    request = InferenceRequest(
        request_id="r", model="m", target_model="m", prompt="x" * 4000, body={"prompt": "x" * 4000}
    )
    with_topology = build_scheduler(parse_picker_config(UPSTREAM), rng=random.Random(1)).schedule(
        request, pool
    )
    assert with_topology.primary.meta.name == "decode-a"
    assert with_topology.request_headers[PREFILLER_HEADER] == "prefill-a:8000"
    plain = UPSTREAM.replace("  - pluginRef: topology-affinity-filter\n", "").replace(
        "  - pluginRef: topology-affinity-scorer\n    weight: 1\n", ""
    )
    without = build_scheduler(parse_picker_config(plain), rng=random.Random(1)).schedule(request, pool)
    assert without.request_headers[PREFILLER_HEADER] == "prefill-b:8000"  # the idle one, across hosts


def test_configs_are_checked() -> None:
    without_extractor = UPSTREAM.replace("- type: topology-extractor\n", "")
    with pytest.raises(ConfigError, match=r"plugins\[topology-affinity-filter\]: needs a topology-extractor"):
        build_scheduler(parse_picker_config(without_extractor))
    named = UPSTREAM.replace(
        "- type: topology-affinity-scorer\n",
        "- type: topology-affinity-scorer\n  parameters: {topologyProducerName: other}\n",
    )
    with pytest.raises(ConfigError, match="topologyProducerName 'other' names no topology-extractor"):
        build_scheduler(parse_picker_config(named))
    floor = UPSTREAM.replace(
        "- type: topology-affinity-filter\n",
        "- type: topology-affinity-filter\n  parameters: {minAffinity: pod}\n",
    )
    with pytest.raises(ConfigError, match="minAffinity"):
        build_scheduler(parse_picker_config(floor))
