"""The chart takes values in the reference ``inferencepool`` chart's shape and renders a picker
that starts: every flag it renders parses with ``infergate epp``'s own option parser, reference
flags and keys are mapped or refused by ``helm template`` naming them, and the values schema
refuses unknown keys. Rendered with the real helm binary (see test_deploy_chart.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
import yaml

from infergate.app.core import metrics_source
from infergate.cli import app
from infergate.config.picker import parse_picker_config
from infergate.scheduling.engine.scheduler import build_scheduler
from tests.e2e.test_deploy_chart import (
    TUTORIAL,
    by_kind,
    container,
    flags,
    one,
    render,
    render_error,
    validate_all,
)

EPP = typer.main.get_command(app).commands["epp"]  # type: ignore[attr-defined]

# Written from the reference chart's documented values (GIE v1.5 config/charts/inferencepool).
REFERENCE_VALUES = """
inferenceExtension:
  replicas: 2
  image: {registry: registry.example, repository: team/infergate, tag: "1.0", pullPolicy: Always}
  extProcPort: 9002
  failureMode: FailOpen
  env: []
  pluginsConfigFile: default-plugins.yaml
  pluginsCustomConfig: {}
  extraContainerPorts: [{name: debug, containerPort: 9999, protocol: TCP}]
  extraServicePorts: [{name: debug, port: 9999, targetPort: 9999, protocol: TCP}]
  flags: {v: 1}
  affinity: {}
  tolerations: []
  resources: {requests: {cpu: "4", memory: 8Gi}, limits: {memory: 16Gi}}
  sidecar: {enabled: false}
  monitoring:
    interval: 10s
    prometheus:
      enabled: true
      auth: {enabled: true, secretName: my-reader-token}
      extraLabels: {team: ml}
  tracing:
    enabled: false
    otelExporterEndpoint: http://localhost:4317
    sampling: {sampler: parentbased_traceidratio, samplerArg: "0.1"}
  latencyPredictor: {enabled: false}
  metricsDataSource: {scheme: http, path: /metrics, insecureSkipVerify: true}
inferencePool:
  targetPorts: [{number: 8000}]
  modelServerType: vllm
  modelServerProtocol: http
  parser: ""
  apiVersion: inference.networking.k8s.io/v1
  modelServers: {matchLabels: {app: vllm-qwen3-32b}}
provider:
  name: istio
  gke: {autopilot: false}
  istio: {destinationRule: {host: epp.example.svc, trafficPolicy: {tls: {mode: DISABLE}}}}
experimentalHttpRoute: {enabled: false, inferenceGatewayName: inference-gateway, requestTimeout: 300s}
inferenceObjectives: [{name: food-review, priority: 10}]
"""


def _values(tmp_path: Path, text: str = REFERENCE_VALUES) -> list[str]:
    path = tmp_path / "values.yaml"
    path.write_text(text)
    return ["-f", str(path)]


def _parses(args: list[str]) -> dict[str, object]:
    """What ``infergate epp`` makes of ``args`` (click raises on any unknown or malformed flag)."""
    ctx = EPP.make_context("epp", list(args))
    return dict(ctx.params)


def test_reference_shaped_values_render_a_picker_that_starts(tmp_path: Path) -> None:
    docs = render(*_values(tmp_path))
    validate_all(docs)
    c = container(docs)
    params = _parses(c["args"])
    assert params["log_level"] == "info"  # flags: {v: 1}
    assert params["pool_name"] == "vllm-llama3.1-8b-instruct" and params["secure_serving"] is True
    assert c["image"] == "registry.example/team/infergate:1.0"
    assert {"name": "debug", "containerPort": 9999, "protocol": "TCP"} in c["ports"]
    service = one(docs, "Service")
    assert "debug" in {p["name"] for p in service["spec"]["ports"]}
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["authorization"]["credentials"]["name"] == "my-reader-token"
    assert monitor["metadata"]["labels"]["team"] == "ml"
    rule = one(docs, "DestinationRule")["spec"]
    assert rule == {"host": "epp.example.svc", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("v", "5", {"log_level": "debug"}),
        ("zap-log-level", "error", {"log_level": "error"}),
        ("zap-encoder", "json", {"log_format": "json"}),
        ("zap-encoder", "console", {"log_format": "text"}),
        ("allow-experimental-plugins", "true", {}),
        ("metrics-endpoint-auth", "false", {"metrics_auth": "disabled"}),
        ("drain-timeout", "30s", {"grace": 30.0}),
        ("enable-pprof", "false", {}),
        ("tracing", "false", {}),
        ("secure-serving", "false", {"secure_serving": False}),
        ("flow-control", "false", {"flow_control": False}),
        ("disable-endpoint-subset-filter", "true", {"disable_endpoint_subset_filter": True}),
        ("disable-endpoint-subset-filter", "false", {"disable_endpoint_subset_filter": False}),
        ("refresh-metrics-interval", "100ms", {"refresh_metrics_interval": "100ms"}),
        ("health-checking", "true", {}),
        ("health-checking", "false", {}),
        ("enable-grpc-stream-metrics", "true", {"stream_metrics": True}),
        ("enable-grpc-stream-metrics", "false", {"stream_metrics": False}),
        ("emit-endpoint-scores", "true", {"emit_endpoint_scores": True}),
        ("grpc-max-recv-msg-size", "10MiB", {"grpc_max_recv": "10MiB"}),
        ("grpc-max-send-msg-size", "25MB", {"grpc_max_send": "25MB"}),
    ],
)
def test_reference_flags_map_onto_epp_options(flag: str, value: str, expected: dict[str, object]) -> None:
    docs = render(*TUTORIAL, "--set-string", f"inferenceExtension.flags.{flag}={value}")
    params = _parses(container(docs)["args"])
    assert {k: params[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--set", "inferenceExtension.flags.zap-encoder=logfmt"], "inferenceExtension.flags.zap-encoder"),
        (["--set", "inferenceExtension.flags.enable-pprof=true"], "inferenceExtension.flags.enable-pprof"),
        (["--set", "inferenceExtension.flags.ha-enable-leader-election=true"], "ha-enable-leader-election"),
        (["--set", "inferenceExtension.flags.v=debug"], "inferenceExtension.flags.v"),
        (["--set", "inferenceExtension.flags.health-checking=maybe"], "flags.health-checking"),
        (["--set", "inferenceExtension.flags.lora-info-metric=x"], "flags.lora-info-metric"),
        (["--set", "inferenceExtension.flags.drain-timeout=1m"], "inferenceExtension.flags.drain-timeout"),
        (
            ["--set", "inferenceExtension.flags.secure-serving=maybe"],
            "inferenceExtension.flags.secure-serving",
        ),
        (["--set-string", "inferenceExtension.flags.tracing=true"], "inferenceExtension.flags.tracing"),
        (
            [
                "--set",
                "inferenceExtension.tracing.enabled=true",
                "--set-string",
                "inferenceExtension.flags.tracing=false",
            ],
            "inferenceExtension.flags.tracing",
        ),
        (
            [
                "--set",
                "inferenceExtension.tracing.enabled=true",
                "--set",
                "inferenceExtension.tracing.otelExporterEndpoint=",
            ],
            "inferenceExtension.tracing.otelExporterEndpoint",
        ),
        (["--set", "inferenceExtension.sidecar.enabled=true"], "inferenceExtension.sidecar.enabled"),
        (
            ["--set", "inferenceExtension.latencyPredictor.enabled=true"],
            "inferenceExtension.latencyPredictor",
        ),
        (
            [
                "--set",
                "inferenceExtension.metricsDataSource.scheme=https",
                "--set",
                "inferenceExtension.pluginsConfigFile=mine.yaml",
                "--set-string",
                "inferenceExtension.pluginsCustomConfig.mine\\.yaml=plugins: []",
            ],
            "inferenceExtension.metricsDataSource: applies to the chart's default-plugins.yaml only",
        ),
        (["--set", "inferencePool.modelServerProtocol=grpc"], "inferencePool.modelServerProtocol"),
        (["--set", "inferencePool.parser=passthrough-parser"], "inferencePool.parser"),
    ],
)
def test_unsupported_reference_values_fail_at_template_time(args: list[str], named: str) -> None:
    assert named in render_error(*TUTORIAL, *args)


@pytest.mark.parametrize(
    "key",
    [
        "inferenceExtension.replica=2",
        "inferencePool.targetPort=8000",
        "provider.gke.autoPilot=true",
        "extra=1",
    ],
)
def test_schema_rejects_unknown_keys(key: str) -> None:
    error = render_error(*TUTORIAL, "--set", key)
    assert "Additional property" in error and key.split("=")[0].rsplit(".", 1)[-1] in error


def test_every_epp_option_is_accepted_by_the_chart() -> None:
    """Keeps the chart's list of pass-through flags equal to the CLI's cluster-mode options."""
    file_mode = {"filename", "pool", "config", "no-metrics-auth", "metrics-token-file"}
    # standalone mode (no InferencePool): refused by name, the chart creates the pool
    standalone = {"endpoint-selector", "endpoint-target-ports"}
    for name in standalone:
        error = render_error(*TUTORIAL, "--set-string", f"inferenceExtension.flags.{name}=app=x")
        assert f"inferenceExtension.flags.{name}: standalone mode" in error
    # --print-settings exits instead of serving: refused at template time, naming why
    error = render_error(*TUTORIAL, "--set-string", "inferenceExtension.flags.print-settings=true")
    assert "inferenceExtension.flags.print-settings: prints the settings and exits" in error
    sample = {"grace": "5", "log-level": "debug", "log-format": "json", "metrics-auth": "disabled"}
    # flags that need another one beside them (and no monitor, which cannot present a client cert)
    beside = {
        "metrics-client-ca-file": ["--set-string", "inferenceExtension.flags.metrics-cert-dir=/certs"],
        "metrics-cert-dir": ["--set-string", "inferenceExtension.flags.metrics-auth=kubernetes"],
    }
    for param in EPP.params:
        names = [o[2:] for o in param.opts if o.startswith("--")]
        name = names[0]
        if name in file_mode | standalone or name in ("help", "print-settings"):  # exit, or refused above
            continue
        value = "true" if getattr(param, "is_flag", False) else sample.get(name, "1")
        docs = render(
            *TUTORIAL, *beside.get(name, []), "--set-string", f"inferenceExtension.flags.{name}={value}"
        )
        _parses(container(docs)["args"])


@pytest.mark.parametrize("kind", ["ServiceMonitor", "PodMonitor"])
def test_metrics_over_https_are_scraped_over_https(kind: str) -> None:
    """``flags.metrics-cert-dir``: the picker serves /metrics over TLS (its pair mounted by the
    operator through ``volumes``), so the monitor scrapes with ``scheme: https``."""
    docs = render(
        *TUTORIAL,
        "--set-string", "inferenceExtension.flags.metrics-cert-dir=/etc/metrics-certs",
        "--set", "inferenceExtension.monitoring.prometheus.enabled=true",
        "--set", f"inferenceExtension.monitoring.prometheus.kind={kind}",
    )  # fmt: skip
    if kind == "ServiceMonitor":  # the schemas checked know no PodMonitor
        validate_all(docs)
    params = _parses(container(docs)["args"])
    assert str(params["metrics_cert_dir"]) == "/etc/metrics-certs"
    spec = one(docs, kind)["spec"]
    (endpoint,) = spec["podMetricsEndpoints" if kind == "PodMonitor" else "endpoints"]
    assert endpoint["scheme"] == "https" and endpoint["tlsConfig"] == {"insecureSkipVerify": True}
    assert endpoint["authorization"]["type"] == "Bearer"  # TLS adds to the token, not instead


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (
            ["--set-string", "inferenceExtension.flags.metrics-client-ca-file=/ca.pem"],
            "inferenceExtension.flags.metrics-client-ca-file needs inferenceExtension.flags.metrics-cert-dir",
        ),
        (
            [
                "--set-string", "inferenceExtension.flags.metrics-cert-dir=/certs",
                "--set-string", "inferenceExtension.flags.metrics-endpoint-auth=false",
            ],
            "inferenceExtension.flags.metrics-cert-dir enables TLS on /metrics without authentication",
        ),
        (
            [
                "--set-string", "inferenceExtension.flags.metrics-cert-dir=/certs",
                "--set-string", "inferenceExtension.flags.metrics-client-ca-file=/ca.pem",
                "--set", "inferenceExtension.monitoring.prometheus.enabled=true",
            ],
            "inferenceExtension.flags.metrics-client-ca-file: a monitor from this chart cannot present",
        ),
    ],
)  # fmt: skip
def test_metrics_tls_that_cannot_work_fails_at_template_time(args: list[str], named: str) -> None:
    assert named in render_error(*TUTORIAL, *args)


def test_metrics_mtls_without_a_monitor_renders() -> None:
    docs = render(
        *TUTORIAL,
        "--set-string", "inferenceExtension.flags.metrics-cert-dir=/certs",
        "--set-string", "inferenceExtension.flags.metrics-client-ca-file=/ca/ca.pem",
        "--set-string", "inferenceExtension.flags.metrics-endpoint-auth=false",
    )  # fmt: skip
    params = _parses(container(docs)["args"])
    assert (str(params["metrics_cert_dir"]), str(params["metrics_client_ca_file"])) == (
        "/certs",
        "/ca/ca.pem",
    )
    assert params["metrics_auth"] == "disabled"


def test_metrics_data_source_values_reach_the_default_config() -> None:
    """``metricsDataSource`` (the reference chart's keys) become the metrics-data-source plugin's
    parameters in default-plugins.yaml, which infergate loads into its scraper's source."""
    docs = render(
        *TUTORIAL,
        "--set", "inferenceExtension.metricsDataSource.scheme=https",
        "--set", "inferenceExtension.metricsDataSource.path=/exporter/metrics",
    )  # fmt: skip
    config = parse_picker_config(one(docs, "ConfigMap")["data"]["default-plugins.yaml"], source="chart")
    build_scheduler(config)
    source = metrics_source(config)
    assert source is not None and source.path == "/exporter/metrics" and source.tls is not None
    default = render(*TUTORIAL)
    text = one(default, "ConfigMap")["data"]["default-plugins.yaml"]
    assert metrics_source(parse_picker_config(text, source="chart")) is None


def test_pod_monitor_option(tmp_path: Path) -> None:
    docs = render(
        *TUTORIAL,
        "--set", "inferenceExtension.monitoring.prometheus.enabled=true",
        "--set", "inferenceExtension.monitoring.prometheus.kind=PodMonitor",
    )  # fmt: skip
    assert not by_kind(docs, "ServiceMonitor")
    monitor = one(docs, "PodMonitor")
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"]["key"] == "token"
    assert (
        monitor["spec"]["selector"]["matchLabels"]
        == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    )
    ports = {p["name"] for p in container(docs)["ports"]}
    assert endpoint["port"] in ports
    assert yaml.safe_dump(monitor)  # a plain mapping
    assert flags(docs)["metrics-auth"] == "kubernetes"
