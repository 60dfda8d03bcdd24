"""Manifest loading: the bundled tutorial, multi-document files, folders, and precise error messages."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import pytest

from infergate.api import load_manifests
from infergate.api.loader import ManifestSet
from infergate.api.workloads import vllm_flags
from infergate.dataplanes.extproc.bootstrap import (
    EXTPROC_CLUSTER,
    FALLBACK_CLUSTER,
    ORIGINAL_DST_CLUSTER,
    render_bootstrap,
    settings_from_manifests,
)
from infergate.errors import ConfigError
from infergate.types import H2C, EndpointMeta, PoolSpec, RewriteTarget
from tests.conftest import SEED_DIR

POOL = """\
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata:
  name: pool-a
spec:
  selector:
    matchLabels: {app: a}
  targetPorts: [{number: 8000}]
  endpointPickerRef: {name: epp, port: {number: 9002}}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# ------------------------------------------------------------------------------ the tutorial


def test_tutorial_pool_objectives_route_gateway() -> None:
    m = load_manifests([SEED_DIR])
    pool = m.pool_spec()
    assert pool == PoolSpec(
        name="vllm-llama3.1-8b-instruct",
        selector={"app": "vllm-llama3.1-8b-instruct"},
        target_ports=(8000,),
        failure_mode="FailOpen",
        health_path="/health",
        model_server_type="vllm",
    )
    assert {(o.name, o.priority, o.pool) for o in m.objective_values()} == {
        ("food-review", 10, "vllm-llama3.1-8b-instruct"),
        ("llama3-base-model", 20, "vllm-llama3.1-8b-instruct"),
    }
    deprecations = [w for w in m.warnings if "deprecated" in w]
    assert len(deprecations) == 2
    assert all(
        "inference.networking.k8s.io/v1alpha1" in w and "inferenceobjectives.yaml" in w for w in deprecations
    )
    assert m.listener() == ("0.0.0.0", 80)
    assert m.route_prefixes(pool.name) == ["/"]
    assert m.rewrite_values() == []


def test_tutorial_deployment_and_lora_config() -> None:
    m = load_manifests([SEED_DIR])
    (dep,) = m.deployments
    assert dep.replicas == 3
    assert dep.pod_labels == {"app": "vllm-llama3.1-8b-instruct"}
    assert dep.vllm_argv() == [
        "--model", "meta-llama/Llama-3.1-8B-Instruct",
        "--tensor-parallel-size", "1",
        "--port", "8000",
        "--enable-lora",
        "--max-loras", "2",
        "--max-cpu-loras", "12",
    ]  # fmt: skip
    assert dep.vllm_env() == {"VLLM_USE_V1": "1", "PORT": "8000", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"}
    assert dep.container_port == 8000
    assert dep.lora_configmap() == "vllm-llama3.1-8b-adapters"
    assert dep.lora_config_key() == "configmap.yaml"
    lora = m.lora_configs["vllm-llama3.1-8b-adapters"]
    assert (lora.host, lora.port, lora.name) == ("localhost", 8000, "vllm-llama3.1-8b-instruct")
    assert [(a.id, a.source, a.base_model) for a in lora.ensure_exist] == [
        ("food-review", "Kawon/llama3.1-food-finetune_v14_r8", "meta-llama/Llama-3.1-8B-Instruct"),
        ("cad-fabricator", "redcathode/fabricator", "meta-llama/Llama-3.1-8B-Instruct"),
    ]
    assert lora.ensure_not_exist == []
    assert "vLLMLoRAConfig" in lora.text
    assert dep.lora_syncer_argv("/tmp/l.yaml", port=8101) == [
        "lora-syncer", "--config", "/tmp/l.yaml", "--host", "127.0.0.1", "--port", "8101",
    ]  # fmt: skip


def test_tutorial_ignored_kinds_are_listed() -> None:
    m = load_manifests([SEED_DIR])
    kinds = sorted(entry.split(": ", 1)[1].split("/", 1)[0] for entry in m.ignored)
    assert kinds == [
        "ClusterRole",
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterRoleBinding",
        "Secret",
        "ServiceAccount",
    ]
    assert all(entry.startswith(str(SEED_DIR / "metrics-auth.yaml") + ": ") for entry in m.ignored)
    assert (
        f"{SEED_DIR / 'metrics-auth.yaml'}: ServiceAccount/inference-gateway-sa-metrics-reader" in m.ignored
    )
    assert len(m.health_policies) == 1
    assert len(m.gateways) == 1 and len(m.routes) == 1


# ------------------------------------------------------------------------------ shapes of input


def test_a_pools_app_protocol_reaches_the_envoy_clusters(tmp_path: Path) -> None:
    """``appProtocol: kubernetes.io/h2c`` is not only validated: the pool carries it, and the local
    Envoy's model-server clusters (chosen and fail-open) speak HTTP/2 and health-check over it."""
    plain = load_manifests([write(tmp_path, "a.yaml", POOL)])
    assert plain.pool_spec().app_protocol == "http"
    h2c_text = POOL.replace("  targetPorts:", "  appProtocol: kubernetes.io/h2c\n  targetPorts:")
    h2c = load_manifests([write(tmp_path, "b.yaml", h2c_text)])
    assert h2c.pool_spec().app_protocol == H2C

    def clusters(m: ManifestSet) -> dict[str, Any]:
        s = settings_from_manifests(
            m, picker_port=9002, fallback_endpoints=["127.0.0.1:8000"], listen=("127.0.0.1", 8080)
        )
        s = dataclasses.replace(s, failure_mode="FailOpen")
        return {c["name"]: c for c in render_bootstrap(s)["static_resources"]["clusters"]}

    for name, cluster in clusters(plain).items():
        if name != EXTPROC_CLUSTER:  # the picker is always reached over HTTP/2 (gRPC)
            assert "typed_extension_protocol_options" not in cluster, name
    spoken = clusters(h2c)
    for name in (ORIGINAL_DST_CLUSTER, FALLBACK_CLUSTER):
        options = spoken[name]["typed_extension_protocol_options"]
        assert "http2_protocol_options" in str(options), name
    assert spoken[FALLBACK_CLUSTER]["health_checks"][0]["http_health_check"]["codec_client_type"] == "HTTP2"


def test_gateway_api_parts_infergate_does_not_apply_are_named_in_warnings(tmp_path: Path) -> None:
    """Locally infergate is the Gateway: what a Gateway or HTTPRoute says that it does not apply
    (TLS, host names, header matches, filters, timeouts, other backends, other listeners) is a
    warning naming the field, not silence; what it applies gives none."""
    gateway = """\
    apiVersion: gateway.networking.k8s.io/v1
    kind: Gateway
    metadata: {name: gw}
    spec:
      gatewayClassName: any
      listeners:
      - {name: tcp, port: 9000, protocol: TCP}
      - name: https
        port: 443
        protocol: HTTPS
        hostname: api.example.com
        tls: {certificateRefs: [{name: cert}]}
      - {name: http, port: 80, protocol: HTTP}
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: Gateway
    metadata: {name: other}
    spec:
      listeners: [{name: http, port: 8080, protocol: HTTP}]
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: r}
    spec:
      parentRefs: [{name: gw}]
      hostnames: [api.example.com]
      rules:
      - matches:
        - path: {type: PathPrefix, value: /v1}
          headers: [{name: x-tenant, value: a}]
        filters: [{type: RequestHeaderModifier}]
        timeouts: {request: 10s}
        backendRefs:
        - {name: pool-a, group: inference.networking.k8s.io, kind: InferencePool}
        - {name: web, port: 80}
    """
    m = load_manifests([write(tmp_path, "pool.yaml", POOL), write(tmp_path, "gw.yaml", gateway)])
    assert m.listener() == ("0.0.0.0", 443)  # the first HTTP(S) listener of the Gateway the route names
    served = "infergate serves one listener, Gateway/gw spec.listeners[1]"
    assert m.warnings == [
        f"Gateway/gw: spec.listeners[0] (port 9000): not served; {served}",
        "Gateway/gw: spec.listeners[1].protocol: HTTPS is served as plain HTTP: "
        "infergate does not terminate TLS",
        "Gateway/gw: spec.listeners[1].hostname: not applied; requests for every host name are served",
        "Gateway/gw: spec.listeners[1].tls: not applied",
        f"Gateway/gw: spec.listeners[2] (port 80): not served; {served}",
        f"Gateway/other: spec.listeners[0] (port 8080): not served; {served}",
        "HTTPRoute/r: spec.hostnames: not applied; requests for every host name are routed",
        "HTTPRoute/r: spec.rules[0].filters: not applied",
        "HTTPRoute/r: spec.rules[0].timeouts: not applied; the gateway's proxy timeouts apply",
        "HTTPRoute/r: spec.rules[0].matches[0].headers: not applied; routes match by path only",
        "HTTPRoute/r: spec.rules[0].backendRefs[1]: Service/web is not served; infergate routes to "
        "InferencePools only",
    ]
    # the tutorial's Gateway and HTTPRoute say nothing infergate leaves out
    assert [w for w in load_manifests([SEED_DIR]).warnings if "is deprecated" not in w] == []


def test_multi_document_file_and_directory(tmp_path: Path) -> None:
    write(
        tmp_path,
        "b.yml",
        """\
        ---
        # only a comment: an empty document
        ---
        apiVersion: inference.networking.x-k8s.io/v1alpha2
        kind: InferenceObjective
        metadata: {name: batch}
        spec: {priority: -1, poolRef: {name: pool-a}}
        ---
        apiVersion: inference.networking.x-k8s.io/v1alpha2
        kind: InferenceObjective
        metadata: {name: unset}
        spec: {poolRef: {name: pool-a}}
        """,
    )
    write(tmp_path, "a.yaml", POOL)
    write(tmp_path, "notes.txt", "not: [yaml")
    m = load_manifests([tmp_path])
    assert [p.name for p in m.files] == ["a.yaml", "b.yml"]
    assert [(o.name, o.priority) for o in m.objective_values()] == [("batch", -1), ("unset", 0)]
    assert m.warnings == []  # v1alpha2 is current, and the pool exists
    twice = load_manifests([tmp_path, tmp_path / "a.yaml"])  # one file named twice is read once
    assert [p.name for p in twice.files] == ["a.yaml", "b.yml"]
    single = load_manifests([tmp_path / "a.yaml"])
    assert single.pool_spec().name == "pool-a" and single.objectives == []


def test_pods_and_static_endpoints_select_like_kubernetes(tmp_path: Path) -> None:
    write(tmp_path, "pool.yaml", POOL)
    write(
        tmp_path,
        "pods.yaml",
        """\
        apiVersion: v1
        kind: Pod
        metadata: {name: a-1, labels: {app: a, tier: x}}
        status: {phase: Running, podIP: 10.0.0.1}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: a-pending, labels: {app: a}}
        status: {phase: Pending, podIP: 10.0.0.2}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: a-unready, labels: {app: a}}
        status: {phase: Running, podIP: 10.0.0.3, conditions: [{type: Ready, status: "False"}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: a-terminating, labels: {app: a}, deletionTimestamp: "2026-01-01T00:00:00Z"}
        status: {phase: Running, podIP: 10.0.0.5}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: b-1, labels: {app: b}}
        status: {phase: Running, podIP: 10.0.0.4}
        ---
        apiVersion: infergate.dev/v1alpha1
        kind: EndpointList
        metadata: {name: vms}
        spec:
          poolName: pool-a
          endpoints:
          - {name: vm1, address: "127.0.0.1:9001", labels: {app: a}}
          - {address: "127.0.0.1:9002"}
          - {name: other, address: "127.0.0.1:9003", labels: {app: b}}
          - {name: v6, address: "[::1]:9004", labels: {app: a}}
        ---
        apiVersion: infergate.dev/v1alpha1
        kind: EndpointList
        metadata: {name: by-label}
        spec:
          endpoints:
          - {name: bare, address: "gpu-host", labels: {app: a}}
          - {name: unlabelled, address: "gpu-host-2:8000"}
        """,
    )
    m = load_manifests([tmp_path])
    eps = m.endpoints_for(m.pool_spec())
    assert [(e.name, e.key) for e in eps] == [
        ("a-1", "10.0.0.1:8000"),
        ("vm1", "127.0.0.1:9001"),
        ("vms-1", "127.0.0.1:9002"),
        ("v6", "[::1]:9004"),
        ("bare", "gpu-host:8000"),  # no port: the pool's target port
    ]
    assert eps[0] == EndpointMeta(
        name="a-1", address="10.0.0.1", port=8000, pool="pool-a", labels={"app": "a", "tier": "x"}, pod="a-1"
    )
    assert [e.pod for e in eps[1:]] == [""] * 4  # static endpoints are no pod's


def test_rewrites_routes_health_and_listener(tmp_path: Path) -> None:
    write(tmp_path, "pool.yaml", POOL)
    write(
        tmp_path,
        "more.yaml",
        """\
        apiVersion: inference.networking.x-k8s.io/v1alpha2
        kind: InferenceModelRewrite
        metadata: {name: newer, creationTimestamp: "2026-02-01T00:00:00Z"}
        spec:
          poolRef: {name: pool-a}
          rules:
          - targets: [{modelRewrite: base}]
        ---
        apiVersion: inference.networking.x-k8s.io/v1alpha2
        kind: InferenceModelRewrite
        metadata: {name: older, creationTimestamp: "2026-01-01T00:00:00Z"}
        spec:
          poolRef: {name: pool-a}
          rules:
          - matches: [{model: {value: food-review}}]
            targets: [{modelRewrite: food-review-v1, weight: 90}, {modelRewrite: food-review-v2, weight: 10}]
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata: {name: gw}
        spec:
          gatewayClassName: x
          listeners: [{name: tcp, port: 7000, protocol: TCP}, {name: http, port: 8080, protocol: HTTP}]
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: r}
        spec:
          parentRefs: [{name: gw}]
          rules:
          - matches: [{path: {type: PathPrefix, value: /v1}}, {path: {value: /openai/v1}}]
            backendRefs: [{name: pool-a, group: inference.networking.k8s.io, kind: InferencePool}]
          - matches: [{path: {value: /other}}]
            backendRefs: [{name: some-service}]
        ---
        kind: HealthCheckPolicy
        apiVersion: networking.gke.io/v1
        metadata: {name: hc}
        spec:
          targetRef: {group: inference.networking.k8s.io, kind: InferencePool, name: pool-a}
          default: {config: {type: HTTP, httpHealthCheck: {requestPath: /ready, port: 8000}}}
        ---
        apiVersion: networking.istio.io/v1beta1
        kind: Gateway
        metadata: {name: istio-gw}
        spec: {selector: {istio: ingressgateway}}
        """,
    )
    m = load_manifests([tmp_path])
    older, newer = m.rewrite_values()
    assert (older.name, newer.name) == ("older", "newer")
    assert older.rules[0].match_models == ("food-review",)
    assert older.rules[0].targets == (
        RewriteTarget(model="food-review-v1", weight=90),
        RewriteTarget(model="food-review-v2", weight=10),
    )
    assert newer.rules[0].match_models == () and newer.rules[0].targets == (
        RewriteTarget(model="base", weight=1),
    )
    assert m.route_prefixes("pool-a") == ["/openai/v1", "/v1"]
    assert m.route_prefixes("unrouted-pool") == ["/"]
    assert m.listener() == ("0.0.0.0", 8080)
    assert m.pool_spec("pool-a").health_path == "/ready"
    assert any("Gateway/istio-gw" in entry for entry in m.ignored)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["vllm", "serve", "m/x", "--port", "9000"], ["--model", "m/x", "--port", "9000"]),
        (["--model", "m/x", "--enable-lora"], ["--model", "m/x", "--enable-lora"]),
        (["/bin/bash", "-c", "pip list && exec python3 -m vllm.entrypoints.openai.api_server --model m"],
         ["--model", "m"]),
        (["sh", "-c", "A=1 B='x y' vllm serve m --max-loras 2 # comment"],
         ["--model", "m", "--max-loras", "2"]),
    ],
)  # fmt: skip
def test_vllm_flags_variants(argv: list[str], expected: list[str]) -> None:
    assert vllm_flags(argv) == expected


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (POOL.replace("targetPorts: [{number: 8000}]", "targetPort: [{number: 8000}]"),
         ["InferencePool/pool-a: spec.targetPort: Extra inputs are not permitted",
          "InferencePool/pool-a: spec.targetPorts: Field required"]),
        (POOL.replace("{number: 8000}", "{number: 8000}, {number: 8000}"),
         ["InferencePool/pool-a: spec.targetPorts: port number must be unique"]),
        (POOL.replace("{number: 8000}", "{number: 70000}"),
         ["InferencePool/pool-a: spec.targetPorts[0].number: Input should be less than or equal to 65535"]),
        (POOL.replace("port: {number: 9002}", "port: {number: 9002}, failureMode: Open"),
         ["InferencePool/pool-a: spec.endpointPickerRef.failureMode: Input should be 'FailOpen' or "
          "'FailClose'"]),
        (POOL.replace("matchLabels: {app: a}", "matchLabels: {}"),
         ["InferencePool/pool-a: spec.selector.matchLabels: Dictionary should have at least 1 item"]),
        ("apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceObjective\n"
         "metadata: {name: o}\nspec: {priority: high, poolRef: {name: p}}\n",
         ["InferenceObjective/o: spec.priority: Input should be a valid integer"]),
        ("apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceObjective\n"
         "metadata: {name: o}\nspec: {priority: 1}\n",
         ["InferenceObjective/o: spec.poolRef: Field required"]),
        ("apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceModelRewrite\n"
         "metadata: {name: rw}\nspec: {poolRef: {name: p}, rules: [{targets: "
         "[{modelRewrite: a, weight: 1}, {modelRewrite: b}]}]}\n",
         ["InferenceModelRewrite/rw: spec.rules[0].targets: weights should be set for all targets"]),
        ("apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferencePool\nmetadata: {name: old}\n"
         "spec: {selector: {app: a}, targetPortNumber: 8000}\n",
         ["InferencePool/old: apiVersion: inference.networking.x-k8s.io/v1alpha2 InferencePool "
          "is not supported"]),
        ("apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceModel\nmetadata: {name: m}\n",
         ["InferenceModel/m: apiVersion: inference.networking.x-k8s.io/v1alpha2 InferenceModel "
          "is not supported: InferenceModel was replaced by InferenceObjective"]),
        ("apiVersion: inference.networking.k8s.io/v2\nkind: InferencePool\nmetadata: {name: future}\n",
         ["InferencePool/future: apiVersion: 'inference.networking.k8s.io/v2' is not supported "
          "for InferencePool"]),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: loras}\ndata:\n  configmap.yaml: |\n"
         "    vLLMLoRAConfig:\n      ensureExist:\n        models:\n        - id: x\n",
         ["ConfigMap/loras: data.configmap.yaml.vLLMLoRAConfig.ensureExist.models[0].source: "
          "Field required"]),
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"
         "spec: {replicas: -1, template: {spec: {containers: [{name: c}]}}}\n",
         ["Deployment/d: spec.replicas: Input should be greater than or equal to 0"]),
        ("apiVersion: v1\nkind: Pod\nmetadata: {labels: {app: a}}\n",
         ["Pod/(document 1): metadata.name: Field required"]),
        ("apiVersion: infergate.dev/v1alpha1\nkind: EndpointList\nmetadata: {name: l}\n"
         "spec: {endpoints: [{address: 'h:99999'}]}\n",
         ["EndpointList/l: spec.endpoints[0].address: invalid port '99999'"]),
        ("metadata: {name: nokind}\n", ["(no kind)/nokind: kind: Field required"]),
        ("- just\n- a list\n", ["document 1: expected a mapping"]),
        ("kind: [unclosed\n", ["line 2 column 1: invalid YAML"]),
    ],
)  # fmt: skip
def test_invalid_input_names_file_object_and_field(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_manifests([path])
    message = str(info.value)
    for fragment in expected:
        assert f"{path}: {fragment}" in message, message


def test_all_invalid_objects_are_reported_and_duplicates_rejected(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", POOL + "---\n" + POOL.replace("{app: a}", "{}"))
    write(tmp_path, "b.yaml", POOL)
    with pytest.raises(ConfigError) as info:
        load_manifests([tmp_path])
    lines = str(info.value).splitlines()
    assert len(lines) == 2, lines  # both problems at once: the invalid second pool and the duplicate
    assert lines[0].startswith(f"{tmp_path / 'a.yaml'}: InferencePool/pool-a: spec.selector.matchLabels: ")
    assert lines[1] == (
        f"{tmp_path / 'b.yaml'}: InferencePool/pool-a: metadata.name: duplicate InferencePool "
        f"(also defined in {tmp_path / 'a.yaml'})"
    )


def test_missing_path_and_pool_lookup_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file or directory"):
        load_manifests([tmp_path / "absent.yaml"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no \*\.yaml or \*\.yml files"):
        load_manifests([tmp_path / "empty"])
    write(tmp_path, "p.yaml", POOL + "---\n" + POOL.replace("pool-a", "pool-b"))
    m = load_manifests([tmp_path / "p.yaml"])
    with pytest.raises(ConfigError, match="several InferencePools"):
        m.pool_spec()
    with pytest.raises(ConfigError, match="no InferencePool 'nope'"):
        m.pool_spec("nope")
    assert m.pool_spec("pool-b").name == "pool-b"
