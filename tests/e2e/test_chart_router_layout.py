"""Values written for llm-d-router v0.10's ``llm-d-router-gateway`` chart (everything under
``router``, and ``httpRoute``) install infergate unchanged: each key lands where the chart's own
(GIE ``inferencepool``) key would put it, the picker starts with the flags rendered, and what
infergate does not honour fails at ``helm template`` naming the router.* key. Rendered with the
real helm binary (see test_deploy_chart.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from infergate.cli import app
from tests.e2e.test_deploy_chart import (
    CHART,
    EXAMPLES,
    RELEASE,
    by_kind,
    container,
    flags,
    one,
    render,
    render_error,
    run_helm,
    validate_all,
)

EPP = typer.main.get_command(app).commands["epp"]  # type: ignore[attr-defined]

# Written from llm-d-router v0.10's documented values (config/charts/README.md and routerlib's
# values.yaml): a gateway-mode install with most keys set.
ROUTER_VALUES = """
router:
  epp:
    replicas: 2
    image: {registry: my-registry.io, repository: team/infergate, tag: v1.2.3, pullPolicy: IfNotPresent}
    extProcPort: 9002
    grpcHealthPort: 9003
    parsers: [openai-parser, anthropic-parser]
    metricsDataSource: {scheme: http, path: /metrics, insecureSkipVerify: true}
    flags: {v: 3, tracing: true}
    env:
      - {name: FEATURE_FLAG_ENABLED, value: "true"}
    pluginsConfigFile: custom-plugins.yaml
    pluginsCustomConfig:
      custom-plugins.yaml: |
        apiVersion: llm-d.ai/v1alpha1
        kind: EndpointPickerConfig
        plugins:
        - type: queue-scorer
        - type: kv-cache-utilization-scorer
        - type: prefix-cache-scorer
        schedulingProfiles:
        - name: default
          plugins:
          - pluginRef: queue-scorer
            weight: 2
          - pluginRef: kv-cache-utilization-scorer
            weight: 2
          - pluginRef: prefix-cache-scorer
            weight: 3
    extraContainerPorts: [{name: debug, containerPort: 9999, protocol: TCP}]
    resources: {requests: {cpu: "8", memory: 16Gi}, limits: {memory: 32Gi}}
    affinity: {}
    tolerations: [{key: nvidia.com/gpu, operator: Exists}]
    podAnnotations: {prometheus.io/scrape: "true"}
    volumes: [{name: extra, emptyDir: {}}]
    volumeMounts: [{name: extra, mountPath: /extra}]
  extraServicePorts: [{name: debug, port: 9999, targetPort: 9999, protocol: TCP}]
  clusterDomain: corp.internal
  proxy: {enabled: false}
  tokenizer: {enabled: false, modelName: ""}
  monitoring:
    interval: 15s
    provider: {name: prometheusoperator}
    prometheus:
      enabled: true
      auth: {enabled: true, secretName: my-reader-token}
      extraLabels: {team: ml}
  tracing:
    enabled: true
    otelExporterEndpoint: http://otel-collector.observability:4317
    sampling: {sampler: parentbased_traceidratio, samplerArg: "0.5"}
  inferencePool: {create: true, failureMode: FailClose}
  inferenceObjectives:
    - {name: high-priority, priority: 5}
  modelServers:
    type: vllm
    protocol: http
    targetPorts: [{number: 8000}]
    matchLabels: {app: vllm-qwen3-32b}
  latencyPredictor: {enabled: false}
provider:
  name: istio
  istio: {destinationRule: {host: "", trafficPolicy: {}}}
httpRoute:
  create: true
  inferenceGatewayName: inference-gateway
  inferenceGatewayNamespace: gateways
  requestTimeout: 600s
  headerMatches: {x-my-custom-route-header: route-name}
"""


def values_file(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "values.yaml"
    path.write_text(text)
    return ["-f", str(path)]


def router_values(tmp_path: Path, **changes: Any) -> list[str]:
    """ROUTER_VALUES with dotted keys replaced (None deletes)."""
    values = yaml.safe_load(ROUTER_VALUES)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return values_file(tmp_path, yaml.safe_dump(values))


def test_router_values_render_a_picker_that_starts(tmp_path: Path) -> None:
    docs = render(*values_file(tmp_path, ROUTER_VALUES))
    validate_all(docs)
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert {"name": "extra", "emptyDir": {}} in pod["spec"]["volumes"]
    assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    c = container(docs)
    assert c["image"] == "my-registry.io/team/infergate:v1.2.3"
    assert c["resources"]["requests"]["cpu"] == "8"
    assert {"name": "extra", "mountPath": "/extra"} in c["volumeMounts"]
    assert {"name": "debug", "containerPort": 9999, "protocol": "TCP"} in c["ports"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FEATURE_FLAG_ENABLED"] == "true"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"
    assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.5"
    params = dict(EPP.make_context("epp", list(c["args"])).params)
    assert params["pool_name"] == RELEASE and params["log_level"] == "info"  # v: 3
    assert str(params["config"]) == "/config/custom-plugins.yaml"
    assert params["metrics_auth"] == "kubernetes"
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["custom-plugins.yaml"])
    assert config["apiVersion"] == "llm-d.ai/v1alpha1"

    pool = one(docs, "InferencePool")["spec"]
    assert pool["selector"]["matchLabels"] == {"app": "vllm-qwen3-32b"}
    assert pool["targetPorts"] == [{"number": 8000}] and pool["appProtocol"] == "http"
    assert pool["endpointPickerRef"]["failureMode"] == "FailClose"
    assert one(docs, "Service")["spec"]["ports"][-1]["name"] == "debug"

    objective = one(docs, "InferenceObjective")
    assert objective["apiVersion"] == "llm-d.ai/v1alpha2"  # llm-d-router's group, as its chart writes
    assert (objective["metadata"]["name"], objective["spec"]["priority"]) == ("high-priority", 5)

    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    assert monitor["spec"]["endpoints"][0]["authorization"]["credentials"]["name"] == "my-reader-token"
    assert monitor["metadata"]["labels"]["team"] == "ml"
    secrets = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"] == "my-reader-token"]
    assert len(secrets) == 1, "the chart creates the token the ServiceMonitor reads, as llm-d-router's does"

    rule = one(docs, "DestinationRule")["spec"]
    assert rule["host"] == f"{RELEASE.replace('.', '-')}-epp.default.svc.corp.internal"

    route = one(docs, "HTTPRoute")["spec"]
    assert route["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "inference-gateway",
            "namespace": "gateways",
        }
    ]
    rule0 = route["rules"][0]
    assert rule0["backendRefs"][0]["kind"] == "InferencePool" and rule0["backendRefs"][0]["name"] == RELEASE
    assert rule0["matches"][0]["headers"] == [
        {"type": "Exact", "name": "x-my-custom-route-header", "value": "route-name"}
    ]
    assert rule0["timeouts"] == {"request": "600s"}


# The same settings in the chart's own (GIE inferencepool) layout.
GIE_EQUIVALENT = """
inferenceExtension:
  replicas: 3
  image: {registry: reg.example, repository: infergate, tag: "2.0"}
  flags: {log-level: debug}
  pluginsConfigFile: default-plugins.yaml
  extraServicePorts: [{name: debug, port: 9999, targetPort: 9999, protocol: TCP}]
  failureMode: FailClose
  monitoring: {gke: {enabled: false}}  # llm-d-router scrapes with GMP only when its monitoring says so
inferencePool:
  modelServers: {matchLabels: {app: qwen}}
  targetPorts: [{number: 8000}, {number: 8001}]
  modelServerType: sglang
provider: {name: gke}
experimentalHttpRoute: {enabled: true, inferenceGatewayName: gw, baseModel: qwen3}
"""
ROUTER_EQUIVALENT = """
router:
  epp:
    replicas: 3
    image: {registry: reg.example, repository: infergate, tag: "2.0"}
    flags: {log-level: debug}
  extraServicePorts: [{name: debug, port: 9999, targetPort: 9999, protocol: TCP}]
  inferencePool: {failureMode: FailClose}
  modelServers:
    matchLabels: {app: qwen}
    targetPorts: [{number: 8000}, {number: 8001}]
    type: sglang
provider: {name: gke}
httpRoute: {create: true, inferenceGatewayName: gw, baseModel: qwen3}
"""


def test_the_two_layouts_render_the_same_objects(tmp_path: Path) -> None:
    gie = render(*values_file(tmp_path, GIE_EQUIVALENT))
    router = render(*values_file(tmp_path, ROUTER_EQUIVALENT))
    assert gie == router
    kinds = {d["kind"] for d in gie}
    assert {"HTTPRoute", "HealthCheckPolicy", "GCPBackendPolicy"} <= kinds
    route = one(gie, "HTTPRoute")["spec"]["rules"][0]
    assert "timeouts" not in route  # on GKE the GCPBackendPolicy sets it
    assert route["matches"][0]["headers"] == [
        {"type": "Exact", "name": "X-Gateway-Base-Model-Name", "value": "qwen3"}
    ]
    assert one(gie, "InferencePool")["metadata"]["annotations"]["infergate.dev/model-server-type"] == "sglang"


def test_google_managed_prometheus_from_the_router_monitoring_provider(tmp_path: Path) -> None:
    docs = render(
        *router_values(
            tmp_path,
            router__monitoring={
                "provider": {"name": "gmp", "gmp": {"autopilot": True}},
                "prometheus": {"enabled": True, "auth": {"enabled": True, "secretName": "reader"}},
            },
            provider={"name": "none"},
        )
    )
    validate_all(docs)
    assert not by_kind(docs, "ServiceMonitor")
    endpoint = one(docs, "ClusterPodMonitoring")["spec"]["endpoints"][0]
    assert endpoint["authorization"]["credentials"]["secret"]["name"] == "reader"
    binding = next(b for b in by_kind(docs, "RoleBinding") if b["subjects"][0]["name"] == "collector")
    assert binding["subjects"][0]["namespace"] == "gke-gmp-system"  # autopilot
    assert [s["metadata"]["name"] for s in by_kind(docs, "Secret")] == ["reader"]


def test_router_values_with_monitoring_off_render_no_monitor(tmp_path: Path) -> None:
    docs = render(
        *router_values(tmp_path, router__monitoring=None, router__tracing=None, router__epp__flags=None)
    )
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "ClusterPodMonitoring", "Secret"}
    assert not [e for e in container(docs)["env"] if e["name"].startswith("OTEL_")]
    assert flags(docs)["metrics-auth"] == "kubernetes"


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"router__inferencePool__create": False}, "router.inferencePool.create"),
        ({"router__proxy": {"enabled": True, "proxyType": "envoy"}}, "router.proxy.enabled"),
        ({"router__tokenizer": {"enabled": True, "modelName": "qwen"}}, "router.tokenizer.enabled"),
        ({"router__latencyPredictor": {"enabled": True}}, "router.latencyPredictor.enabled"),
        ({"router__modelServers__type": "triton"}, "router.modelServers.type"),
        ({"router__modelServers__type": "tgi"}, "router.modelServers.type"),
        ({"router__modelServers__protocol": "grpc"}, "router.modelServers.protocol"),
        ({"router__modelServers__matchLabels": None}, "router.modelServers.matchLabels is required"),
        ({"router__epp__parsers": ["openai-parser", "vllmgrpc-parser"]}, "router.epp.parsers[1]"),
        ({"router__epp__flags": {"lora-info-metric": "x"}}, "router.epp.flags.lora-info-metric"),
        (
            {"router__epp__flags": {"ha-enable-leader-election": True}},
            "router.epp.flags.ha-enable-leader-election",
        ),
        ({"router__epp__flags": {"tracing": False}}, "router.epp.flags.tracing"),
        ({"router__epp__pluginsConfigFile": "payload-agnostic.yaml"}, "router.epp.pluginsConfigFile"),
        (
            {"router__epp__metricsDataSource": {"scheme": "https"}},  # with the custom-plugins.yaml above
            "router.epp.metricsDataSource: applies to the chart's default-plugins.yaml only",
        ),
        (
            {"router__tracing": {"enabled": True, "otelExporterEndpoint": ""}},
            "router.tracing.otelExporterEndpoint",
        ),
        ({"router__monitoring": {"provider": {"name": "datadog"}}}, "router.monitoring.provider.name"),
        ({"provider": {"name": "gke", "gke": {"preferredBackends": {"enabled": True}}}}, "preferredBackends"),
    ],
)
def test_what_infergate_does_not_honour_fails_naming_the_router_key(
    tmp_path: Path, changes: dict[str, Any], named: str
) -> None:
    assert named in render_error(*router_values(tmp_path, **changes))


@pytest.mark.parametrize(
    "key", ["router.epp.replica=2", "router.modelServers.typ=vllm", "httpRoute.enable=true"]
)
def test_the_schema_refuses_unknown_router_keys(key: str) -> None:
    error = render_error("--set", "router.modelServers.matchLabels.app=x", "--set", key)
    assert "Additional property" in error and key.split("=")[0].rsplit(".", 1)[-1] in error


def test_set_flags_in_the_router_layout_alone(tmp_path: Path) -> None:
    """The quick start of llm-d-router's README: one --set, everything else defaulted."""
    docs = render("--set", "router.modelServers.matchLabels.app=vllm-qwen3-32b")
    validate_all(docs)
    assert one(docs, "InferencePool")["spec"]["selector"]["matchLabels"] == {"app": "vllm-qwen3-32b"}
    assert flags(docs)["config-file"] == "/config/default-plugins.yaml"
    assert not by_kind(docs, "HTTPRoute")


def test_helm_lint_strict_passes_router_values(tmp_path: Path) -> None:
    proc = run_helm("lint", "--strict", str(CHART), *values_file(tmp_path, ROUTER_VALUES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_tutorial_in_llm_d_router_layout_makes_the_tutorial_pool_and_picker() -> None:
    ours = render("-f", str(EXAMPLES / "values-tutorial.yaml"))
    theirs = render("-f", str(EXAMPLES / "values-tutorial-llm-d-router.yaml"))
    for kind in ("Deployment", "Service", "ConfigMap", "GCPBackendPolicy"):
        assert one(theirs, kind) == one(ours, kind), kind
    assert one(theirs, "InferencePool") == one(ours, "InferencePool")
