# ruff: noqa: E501 (upstream's values.yaml below is kept verbatim, its long Envoy lines included)
"""llm-d-router's ``llm-d-router-standalone`` values install infergate: the standalone layout.

Its values (``router.proxy.enabled: true``: the picker with an Envoy sidecar in front, no Gateway)
render one Deployment running ``infergate serve`` (the picker and its built-in proxy in one
process) for the Pods ``router.modelServers.matchLabels`` selects, a Service with the proxy's
``http`` port and the metrics port, and RBAC for Pods only; no InferencePool, HTTPRoute or provider
object. The rendered args parse with the real CLI, every refusal fails ``helm template`` naming
its key, what has no meaning here is listed in NOTES.txt, and the rendered Deployment's command
runs as a real process against tests/k8s_apiserver.py's stand-in, routing OpenAI requests to
simulator Pods. Rendered with the real helm binary (see test_deploy_chart.py).
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import typer
import yaml
from openai import AsyncOpenAI
from typer.testing import CliRunner

from infergate.app.core import metrics_source
from infergate.cli import app
from infergate.config.picker import parse_picker_config
from infergate.scheduling import build_scheduler
from tests.e2e.test_deploy_chart import (
    CHART,
    by_kind,
    container,
    one,
    render,
    render_error,
    run_helm,
    validate_all,
)
from tests.e2e.test_epp_cluster import MODEL, READER_TOKEN, Cluster, cluster, get  # noqa: F401 (a fixture)
from tests.support import async_wait_for, free_port, granted_rules, start_infergate

SERVE = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
RELEASE = "qwen-router"
PICKER = f"{RELEASE}-epp"

# config/charts/llm-d-router-standalone/values.yaml of llm-d/llm-d-router (Apache-2.0), commit
# ebab687927f5331c1b39defcb579a07951bce56c, verbatim.
UPSTREAM_STANDALONE_VALUES = r"""
router:
  modelServers:
    # matchLabels: # REQUIRED
    #   app: vllm-qwen3-32b

  extraServicePorts:
    - name: http
      port: 8081
      protocol: TCP
      targetPort: 8081

  proxy:
    enabled: true
    proxyType: envoy

    # Deployment mode for the proxy:
    #   sidecar - proxy runs as a container in the EPP pod (default).
    #   service - proxy runs as its own horizontally scalable Deployment and
    #             Service, reaching EPP over the EPP Service. Envoy only.
    mode: sidecar

    # Replica count for the proxy Deployment when mode=service.
    replicas: 2

    # Whether the proxy passes traffic through (fail-open) when EPP is
    # unreachable, for active/passive resiliency.
    failOpen: true

    resources:
      requests:
        cpu: "4"
        memory: 8Gi
      limits:
        memory: 16Gi



    # Built-in standalone proxy presets. The selected preset is merged with the
    # top-level proxy.* fields below, so explicit user overrides still win.
    presets:
      envoy:
        configMap:
          name: envoy
          data:
            envoy.yaml: |
              admin:
                address:
                  socket_address:
                    address: 127.0.0.1
                    port_value: 19000
                access_log:
                  - name: envoy.access_loggers.file
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
                      path: /dev/null
              static_resources:
                listeners:
                  - name: envoy-proxy-ready-0.0.0.0-19001
                    address:
                      socket_address:
                        address: 0.0.0.0
                        port_value: 19001
                    additional_addresses:
                    - address:
                        socket_address:
                          address: "::"
                          port_value: 19001
                    filter_chains:
                      - filters:
                          - name: envoy.filters.network.http_connection_manager
                            typed_config:
                              "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                              stat_prefix: envoy-ready-http
                              route_config:
                                name: local_route
                                virtual_hosts:
                                  - name: prometheus_stats
                                    domains: ["*"]
                                    routes:
                                      - match:
                                          prefix: "/stats/prometheus"
                                        route:
                                          cluster: "prometheus_stats"
                              http_filters:
                                - name: envoy.filters.http.health_check
                                  typed_config:
                                    "@type": type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck
                                    pass_through_mode: false
                                    headers:
                                      - name: ":path"
                                        string_match:
                                          exact: "/ready"
                                - name: envoy.filters.http.router
                                  typed_config:
                                    "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
                  - name: vllm
                    address:
                      socket_address:
                        address: 0.0.0.0
                        port_value: 8081
                    additional_addresses:
                    - address:
                        socket_address:
                          address: "::"
                          port_value: 8081
                    per_connection_buffer_limit_bytes: 32768
                    access_log:
                      - name: envoy.access_loggers.file
                        filter:
                          response_flag_filter:
                            flags: ["NR"]
                        typed_config:
                          "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
                          path: /dev/stdout
                          log_format:
                            text_format_source:
                              inline_string: "{\"start_time\":\"%START_TIME%\",\"method\":\"%REQ(:METHOD)%\",...}\n"
                    filter_chains:
                      - name: vllm
                        filters:
                          - name: envoy.filters.network.http_connection_manager
                            typed_config:
                              "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                              stat_prefix: http-8081
                              route_config:
                                name: vllm
                                virtual_hosts:
                                  - name: vllm-default
                                    domains: ["*"]
                                    routes:
                                      - match:
                                          prefix: "/"
                                        route:
                                          cluster: original_destination_cluster
                                          timeout: 86400s
                                          idle_timeout: 86400s
                                          upgrade_configs:
                                            - upgrade_type: websocket
                                        typed_per_filter_config:
                                          envoy.filters.http.ext_proc:
                                            "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                                            config: {}
                              http_filters:
                                - name: envoy.filters.http.ext_proc
                                  typed_config:
                                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
                                    failure_mode_allow: {{ include "llm-d-router.proxy.failOpen" . }}
                                    grpc_service:
                                      envoy_grpc:
                                        cluster_name: ext_proc
                                        authority: localhost:9002
                                      timeout: 10s
                                    processing_mode:
                                      request_header_mode: SEND
                                      response_header_mode: SEND
                                      request_body_mode: FULL_DUPLEX_STREAMED
                                      response_body_mode: FULL_DUPLEX_STREAMED
                                      request_trailer_mode: SEND
                                      response_trailer_mode: SEND
                                    message_timeout: 1000s
                                - name: envoy.filters.http.router
                                  typed_config:
                                    "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
                                    suppress_envoy_headers: true
                              http2_protocol_options:
                                max_concurrent_streams: 100
                                initial_stream_window_size: 65536
                                initial_connection_window_size: 1048576
                              use_remote_address: true
                              normalize_path: true
                              merge_slashes: true
                              server_header_transformation: PASS_THROUGH
                              common_http_protocol_options:
                                headers_with_underscores_action: REJECT_REQUEST
                              path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT
                              access_log:
                                - name: envoy.access_loggers.file
                                  typed_config:
                                    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
                                    path: /dev/stdout
                                    log_format:
                                      text_format_source:
                                        inline_string: "{\"start_time\":\"%START_TIME%\",\"method\":\"%REQ(:METHOD)%\",...}\n"
                clusters:
                  - name: prometheus_stats
                    type: STATIC
                    connect_timeout: 0.250s
                    load_assignment:
                      cluster_name: prometheus_stats
                      endpoints:
                        - lb_endpoints:
                            - endpoint:
                                address:
                                  socket_address:
                                    address: 127.0.0.1
                                    port_value: 19000
                  - name: original_destination_cluster
                    type: ORIGINAL_DST
                    connect_timeout: 1000s
                    lb_policy: CLUSTER_PROVIDED
                    circuit_breakers:
                      thresholds:
                        - max_connections: 40000
                          max_pending_requests: 40000
                          max_requests: 40000
                    original_dst_lb_config:
                      use_http_header: true
                      http_header_name: x-gateway-destination-endpoint
                  - name: ext_proc
                    type: {{ include "llm-d-router.proxy.extProcClusterType" . }}
                    connect_timeout: 86400s
                    lb_policy: LEAST_REQUEST
                    circuit_breakers:
                      thresholds:
                        - max_connections: 40000
                          max_pending_requests: 40000
                          max_requests: 40000
                          max_retries: 1024
                    health_checks:
                      - timeout: 2s
                        interval: 10s
                        unhealthy_threshold: 3
                        healthy_threshold: 2
                        reuse_connection: true
                        grpc_health_check:
                          service_name: "envoy.service.ext_proc.v3.ExternalProcessor"
              {{ include "llm-d-router.proxy.envoyExtProcTLSOptions" . | indent 10 }}
              {{ include "llm-d-router.proxy.envoyExtProcTransportSocket" . | indent 6 }}
                    typed_extension_protocol_options:
                      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
                        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
                        explicit_http_config:
                          http2_protocol_options:
                            initial_stream_window_size: 65536
                            initial_connection_window_size: 1048576
                    load_assignment:
                      cluster_name: ext_proc
                      endpoints:
                        - locality:
                            region: ext_proc/e2e/0
                          lb_endpoints:
                            - endpoint:
                                address:
                                  socket_address:
                                    address: {{ include "llm-d-router.proxy.extProcHost" . }}
                                    port_value: 9002
                              load_balancing_weight: 1
        name: envoy-proxy
        image: docker.io/envoyproxy/envoy:distroless-v1.33.2
        command: "envoy"
        args:
          - "--service-node"
          - "envoy-proxy"
          - "--log-level"
          - "warn"
          - "--cpuset-threads"
          - "--drain-strategy"
          - "immediate"
          - "--drain-time-s"
          - "60"
          - "-c"
          - "/etc/envoy/envoy.yaml"
        env:
          - name: NS_NAME
            valueFrom:
              fieldRef:
                fieldPath: metadata.namespace
          - name: POD_NAME
            valueFrom:
              fieldRef:
                fieldPath: metadata.name
        ports:
          - containerPort: 8081
            name: http-8081
          - containerPort: 19001
            name: metrics-19001
        readinessProbe:
          failureThreshold: 1
          httpGet:
            path: /ready
            port: 19001
            scheme: HTTP
          periodSeconds: 5
          successThreshold: 1
          timeoutSeconds: 1
        volumeMounts:
          - name: config
            mountPath: /etc/envoy
            readOnly: true
        volumes:
          - name: config
            configMap:
              name: envoy
              items:
                - key: envoy.yaml
                  path: envoy.yaml
      agentgateway:
        configMap:
          name: agentgateway
        name: agentgateway-proxy
        # Keep main on latest-dev; release tooling rewrites this to a stable tag.
        image: cr.agentgateway.dev/agentgateway:latest-dev
        args:
          - "-f"
          - "/config/config.yaml"
        ports:
          - containerPort: 8081
            name: http
          - containerPort: 15020
            name: metrics-15020
          - containerPort: 15021
            name: readiness-15021
        readinessProbe:
          failureThreshold: 1
          httpGet:
            path: /healthz/ready
            port: 15021
            scheme: HTTP
          periodSeconds: 5
          successThreshold: 1
          timeoutSeconds: 1
        startupProbe:
          failureThreshold: 60
          httpGet:
            path: /healthz/ready
            port: 15021
            scheme: HTTP
          periodSeconds: 1
          successThreshold: 1
          timeoutSeconds: 2

    # Optional explicit proxy overrides applied on top of the selected
    # preset. For example, set proxy.image to replace the preset image.


"""

# What its README adds: the model servers' labels (REQUIRED there too) and their port.
OURS = """
router:
  modelServers:
    matchLabels: {app: vllm-llama3}
    targetPorts: [{number: 8000}]
"""


def values(tmp_path: Path, *overlays: str | dict[str, Any]) -> list[str]:
    """``-f`` arguments: upstream's values.yaml as it is, OURS, then each overlay (helm merges them
    in order, as `helm install -f upstream.yaml -f mine.yaml` would)."""
    args = []
    for i, text in enumerate((UPSTREAM_STANDALONE_VALUES, OURS, *overlays)):
        path = tmp_path / f"values-{i}.yaml"
        path.write_text(text if isinstance(text, str) else yaml.safe_dump(text))
        args += ["-f", str(path)]
    return args


def serve_args(docs: list[dict[str, Any]]) -> list[str]:
    """The Deployment's command line after the executable: ``serve`` and its flags."""
    c = container(docs)
    assert c["command"] == ["infergate"]  # the image's entrypoint is `infergate epp`
    args = list(c["args"])
    assert args[0] == "serve"
    return args


def settings_of(args: list[str]) -> dict[str, str]:
    """What the real ``infergate serve`` makes of ``args`` (``--print-settings``: key → value)."""
    result = CliRunner().invoke(app, [*args, "--print-settings"])
    assert result.exit_code == 0, result.output
    out = {}
    for line in result.output.splitlines():
        key, eq, rest = line.partition(" = ")
        if eq:
            out[key.strip()] = rest.split("#")[0].strip()
    return out


def notes(tmp_path: Path, *args: str) -> str:
    """NOTES.txt (not rendered by `helm template`), via a copy of the chart that wraps it."""
    chart = tmp_path / "chart" / "infergate"
    shutil.copytree(CHART, chart, dirs_exist_ok=True)
    text = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes_copy.tpl").write_text('{{- define "notes-copy" -}}' + text + "{{- end -}}")
    (chart / "templates" / "notes-copy.yaml").write_text('notes: {{ include "notes-copy" . | toJson }}\n')
    proc = run_helm(
        "template", RELEASE, str(chart), "-n", "llm", *args, "--show-only", "templates/notes-copy.yaml"
    )
    assert proc.returncode == 0, proc.stderr
    return str(yaml.safe_load(proc.stdout)["notes"])


# ----------------------------------------------------------------------------------- rendering


def test_upstream_standalone_values_render_infergate_serve(tmp_path: Path) -> None:
    docs = render(*values(tmp_path), release=RELEASE, namespace="llm")
    validate_all(docs)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ]
    ), "no InferencePool, objective, HTTPRoute or provider object in the standalone layout"

    args = serve_args(docs)
    assert args[1:] == [
        "--admin-port=9090",
        "--config=/config/default-plugins.yaml",
        "--endpoint-selector=app=vllm-llama3",
        "--endpoint-target-ports=8000",
        "--host=0.0.0.0",
        "--metrics-auth=kubernetes",
        "--pool-namespace=llm",
        "--port=8081",
    ]
    c = container(docs)
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8081, "metrics": 9090}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"] if "valueFrom" in e}
    assert env == {"NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"}
    # upstream's proxy resources, the router.epp ones not being given: one container does both jobs
    assert c["resources"] == {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"memory": "16Gi"}}

    pod = one(docs, "Deployment")["spec"]["template"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    config_map = one(docs, "ConfigMap")
    assert volumes[mounts["/config"]]["configMap"]["name"] == config_map["metadata"]["name"]
    config = parse_picker_config(config_map["data"]["default-plugins.yaml"], source="default-plugins.yaml")
    build_scheduler(config)  # the file --config names is one infergate loads

    service = one(docs, "Service")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {"http", "http-metrics"}  # no ext_proc port: the proxy calls the picker in-process
    assert (ports["http"]["port"], ports["http"]["targetPort"]) == (
        8081,
        8081,
    )  # upstream's extraServicePorts
    assert (ports["http-metrics"]["port"], ports["http-metrics"]["targetPort"]) == (9090, "metrics")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()

    role = one(docs, "Role")
    assert granted_rules(role) == {("", "pods", "get"), ("", "pods", "list"), ("", "pods", "watch")}
    cluster_role = one(docs, "ClusterRole")
    assert granted_rules(cluster_role) == {
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
    }  # --metrics-auth=kubernetes checks /metrics tokens, as the epp RBAC allows
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    assert pod["spec"]["serviceAccountName"] == sa
    for binding, role_doc in (
        (one(docs, "RoleBinding"), role),
        (one(docs, "ClusterRoleBinding"), cluster_role),
    ):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "llm"}]
        assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) == (
            role_doc["kind"],
            role_doc["metadata"]["name"],
        )


def test_the_rendered_args_start_infergate_serve_with_those_settings(tmp_path: Path) -> None:
    settings = settings_of(serve_args(render(*values(tmp_path), release=RELEASE, namespace="llm")))
    assert settings["listeners.port"] == "8081"
    assert settings["listeners.admin_port"] == "9090"
    assert settings["kubernetes.endpoint_selector"] == "app=vllm-llama3"
    assert settings["kubernetes.endpoint_target_ports"] == "[8000]"
    assert settings["kubernetes.pool_namespace"] == "llm"
    assert settings["auth.metrics_auth"] == "kubernetes"
    assert settings["data_plane"] == "builtin"


def test_labels_are_joined_sorted_and_every_target_port_is_passed(tmp_path: Path) -> None:
    overlay = {
        "router": {
            "modelServers": {
                "matchLabels": {"tier": "gpu", "app": "vllm-llama3", "llm-d.ai/role": "decode"},
                "targetPorts": [{"number": 8000}, {"number": 8001}],
            }
        }
    }
    docs = render(*values(tmp_path, overlay), release=RELEASE)
    settings = settings_of(serve_args(docs))
    assert settings["kubernetes.endpoint_selector"] == "app=vllm-llama3,llm-d.ai/role=decode,tier=gpu"
    assert settings["kubernetes.endpoint_target_ports"] == "[8000, 8001]"


@pytest.mark.parametrize(
    ("http", "service_port", "container_port"),
    [
        ({"name": "http", "port": 80, "targetPort": 8000, "protocol": "TCP"}, 80, 8000),
        ({"name": "http", "port": 8080, "targetPort": "http"}, 8080, 8080),
        ({"name": "http", "port": 9000}, 9000, 9000),
    ],
)
def test_the_proxy_listens_where_the_service_port_named_http_points(
    tmp_path: Path, http: dict[str, Any], service_port: int, container_port: int
) -> None:
    extra = {"name": "debug", "port": 9999, "targetPort": 9999}
    docs = render(*values(tmp_path, {"router": {"extraServicePorts": [extra, http]}}), release=RELEASE)
    validate_all(docs)
    assert settings_of(serve_args(docs))["listeners.port"] == str(container_port)
    assert {p["name"]: p["containerPort"] for p in container(docs)["ports"]}["http"] == container_port
    ports = {p["name"]: p for p in one(docs, "Service")["spec"]["ports"]}
    assert ports["http"]["port"] == service_port and "debug" in ports


def test_inference_pool_create_false_alone_is_the_standalone_layout() -> None:
    """llm-d-router's README: `--set router.inferencePool.create=false` with the model servers'
    labels, its standalone chart's proxy defaults not repeated; without a port named http the
    chart gives the Service one (8081, as upstream's values)."""
    docs = render(
        "--set", "router.inferencePool.create=false",
        "--set", "router.modelServers.matchLabels.app=my-vllm-service",
        release=RELEASE,
    )  # fmt: skip
    validate_all(docs)
    assert not by_kind(docs, "InferencePool")
    settings = settings_of(serve_args(docs))
    assert (settings["listeners.port"], settings["kubernetes.endpoint_selector"]) == (
        "8081",
        "app=my-vllm-service",
    )
    assert settings["kubernetes.endpoint_target_ports"] == "[8000]"  # the chart's default port
    ports = {p["name"]: p for p in one(docs, "Service")["spec"]["ports"]}
    assert (ports["http"]["port"], ports["http"]["targetPort"]) == (8081, "http")
    assert container(docs)["resources"]["requests"]["cpu"] == "1"  # no proxy resources: the chart's


def test_epp_resources_win_over_the_proxys(tmp_path: Path) -> None:
    overlay = {"router": {"epp": {"resources": {"requests": {"cpu": "2", "memory": "2Gi"}}}}}
    docs = render(*values(tmp_path, overlay), release=RELEASE)
    assert container(docs)["resources"] == {"requests": {"cpu": "2", "memory": "2Gi"}}


def test_monitoring_tracing_and_flags_are_the_chart_s_own(tmp_path: Path) -> None:
    """The chart's ServiceMonitor, metrics reader and tracing environment serve this layout too;
    router.epp.flags map onto serve's flags (reference ones included)."""
    overlay = {
        "router": {
            "monitoring": {
                "prometheus": {"enabled": True, "auth": {"enabled": True, "secretName": "reader"}}
            },
            "tracing": {"enabled": True, "otelExporterEndpoint": "http://otel:4317"},
            "epp": {
                "flags": {"v": 4, "zap-encoder": "json", "workers": 2, "debug-headers": True, "tracing": True}
            },
        }
    }
    docs = render(*values(tmp_path, overlay), release=RELEASE)
    validate_all(docs)
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] in {
        p["name"] for p in one(docs, "Service")["spec"]["ports"]
    }
    assert monitor["spec"]["endpoints"][0]["authorization"]["credentials"]["name"] == "reader"
    assert [s["metadata"]["name"] for s in by_kind(docs, "Secret")] == ["reader"]
    env = {e["name"]: e.get("value") for e in container(docs)["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel:4317"
    params = dict(SERVE.make_context("serve", serve_args(docs)[1:]).params)
    assert (params["log_level"], params["log_format"], params["workers"]) == ("debug", "json", 2)
    assert params["debug_headers"] is True

    off = {"router": {"monitoring": {"prometheus": {"auth": {"enabled": False}}}}}
    docs = render(*values(tmp_path, off), release=RELEASE)
    assert settings_of(serve_args(docs))["auth.metrics_auth"] == "disabled"
    assert not by_kind(docs, "ClusterRole")  # no tokens to review


def test_every_serve_option_is_accepted_through_router_epp_flags(tmp_path: Path) -> None:
    """Keeps the chart's list of serve flags equal to the CLI's: each option either renders a flag
    `infergate serve` parses, or is refused naming why (set by the chart, or no meaning here)."""
    owned = {"endpoint-selector", "endpoint-target-ports", "port", "admin-port", "config"}
    refused = {"filename", "pool-name", "pool"}
    sample = {"log-level": "debug", "log-format": "json", "metrics-auth": "disabled", "data-plane": "builtin"}
    for param in SERVE.params:
        name = next(o[2:] for o in param.opts if o.startswith("--"))
        if name in ("help", "print-settings"):
            continue
        value = "true" if getattr(param, "is_flag", False) else sample.get(name, "1")
        args = [*values(tmp_path), "--set-string", f"router.epp.flags.{name}={value}"]
        if name in owned:
            assert f"router.epp.flags.{name}: set by the chart" in render_error(*args)
        elif name in refused:
            assert f"router.epp.flags.{name}: not supported in the standalone layout" in render_error(*args)
        else:
            params = dict(SERVE.make_context("serve", serve_args(render(*args))[1:]).params)
            assert params[param.name] is not None, name


def test_helm_lint_strict_passes_upstream_standalone_values(tmp_path: Path) -> None:
    proc = run_helm("lint", "--strict", str(CHART), *values(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_notes_list_what_is_not_used(tmp_path: Path) -> None:
    text = notes(tmp_path, *values(tmp_path))
    assert f"Service {PICKER}:8081" in text and "infergate serve" in text
    assert "get inferencepool" not in text
    for key in ("router.proxy.failOpen (true)", "router.proxy.presets", "router.proxy.replicas (2)"):
        assert f"  - {key}: not used, because " in text, key
    text = notes(
        tmp_path,
        *values(
            tmp_path,
            {"router": {"epp": {"extProcPort": 9002}, "inferencePool": {"failureMode": "FailClose"}}},
        ),
    )
    assert "router.epp.extProcPort (9002): not used, because" in text
    assert "router.inferencePool.failureMode (FailClose): not used, because" in text


# ------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("overlay", "named"),
    [
        ({"router": {"proxy": {"mode": "service"}}}, 'router.proxy.mode: "service" is not supported'),
        ({"router": {"proxy": {"mode": "daemonset"}}}, "router.proxy.mode"),
        ({"router": {"proxy": {"proxyType": "agentgateway"}}}, 'router.proxy.proxyType: "agentgateway"'),
        ({"router": {"proxy": {"proxyType": "nginx"}}}, "router.proxy.proxyType"),
        ({"router": {"proxy": {"image": "envoyproxy/envoy:v1.34.0"}}}, "router.proxy.image: not supported"),
        ({"router": {"proxy": {"args": ["--log-level", "debug"]}}}, "router.proxy.args: not supported"),
        ({"router": {"proxy": {"failOpen": "sometimes"}}}, "failOpen"),
        ({"router": {"proxy": {"envoy": {}}}}, "Additional property envoy"),
        (
            {"router": {"inferencePool": {"create": True}}},
            "router.inferencePool.create: true with router.proxy.enabled: true",
        ),
        (
            {"router": {"proxy": {"enabled": False}, "inferencePool": {"create": False}}},
            "router.inferencePool.create: false with router.proxy.enabled: false",
        ),
        (
            {"router": {"inferenceObjectives": [{"name": "chat", "priority": 5}]}},
            "router.inferenceObjectives",
        ),
        ({"httpRoute": {"create": True}}, "httpRoute.create"),
        ({"provider": {"name": "gke"}}, 'provider.name: "gke"'),
        ({"provider": {"name": "istio"}}, 'provider.name: "istio"'),
        (
            {
                "router": {
                    "modelServers": {"type": "sglang"},
                    "epp": {
                        "pluginsConfigFile": "mine.yaml",
                        "pluginsCustomConfig": {"mine.yaml": "plugins: []"},
                    },
                }
            },
            'router.modelServers.type: "sglang" with a config of your own',
        ),
        ({"router": {"modelServers": {"protocol": "grpc"}}}, "router.modelServers.protocol"),
        ({"router": {"tokenizer": {"enabled": True, "modelName": "qwen"}}}, "router.tokenizer.enabled"),
        (
            {"router": {"epp": {"flags": {"secure-serving": False}}}},
            "router.epp.flags.secure-serving: a flag of infergate epp",
        ),
        (
            {"router": {"epp": {"flags": {"grpc-port": 9002}}}},
            "router.epp.flags.grpc-port: a flag of infergate epp",
        ),
        (
            {"router": {"epp": {"flags": {"endpoint-selector": "app=x"}}}},
            "router.epp.flags.endpoint-selector: set by the chart",
        ),
        (
            {"router": {"epp": {"flags": {"metrics-port": 9091}}}},
            "router.epp.flags.metrics-port: set by the chart",
        ),
        ({"router": {"epp": {"flags": {"data-plane": "envoy"}}}}, "router.epp.flags.data-plane"),
        ({"router": {"epp": {"flags": {"lora-info-metric": "x"}}}}, "not a flag of infergate serve"),
        (
            {
                "router": {
                    "extraServicePorts": [{"name": "http", "port": 8081}, {"name": "http", "port": 8082}]
                }
            },
            "router.extraServicePorts: more than one port is named",
        ),
        (
            {"router": {"extraServicePorts": [{"name": "http", "port": 8081, "targetPort": "proxy"}]}},
            "router.extraServicePorts[0].targetPort",
        ),
    ],
)
def test_what_cannot_apply_fails_naming_the_key(tmp_path: Path, overlay: dict[str, Any], named: str) -> None:
    assert named in render_error(*values(tmp_path, overlay))


@pytest.mark.parametrize("engine", ["sglang", "trtllm-serve", "triton-tensorrt-llm"])
def test_another_engine_becomes_the_extractors_default_engine(tmp_path: Path, engine: str) -> None:
    """No InferencePool carries the engine annotation here: the chart's default config names it."""
    docs = render(*values(tmp_path, {"router": {"modelServers": {"type": engine}}}))
    text = one(docs, "ConfigMap")["data"]["default-plugins.yaml"]
    config = parse_picker_config(text, source="default-plugins.yaml")
    build_scheduler(config)
    source = metrics_source(config)
    assert source is not None and source.default_engine == engine
    vllm = one(render(*values(tmp_path)), "ConfigMap")["data"]["default-plugins.yaml"]
    assert "core-metrics-extractor" not in vllm


def test_upstream_values_alone_ask_for_the_model_servers_labels(tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(UPSTREAM_STANDALONE_VALUES)
    assert "router.modelServers.matchLabels is required" in render_error("-f", str(path))


# ------------------------------------------------------------------------------- end to end


def _needed(request: str) -> tuple[str, str, str]:
    """(apiGroup, resource, verb) an API request needs, from "VERB /path?query"."""
    method, _, target = request.partition(" ")
    url = urlsplit(target)
    parts = url.path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    if rest[0] == "namespaces":
        assert rest[1] == "default", f"{request}: outside the release namespace"
        rest = rest[2:]
    if method == "POST":
        return group, rest[0], "create"
    assert method == "GET", request
    verb = "get" if len(rest) >= 2 else ("watch" if "watch=true" in url.query.lower() else "list")
    return group, rest[0], verb


async def test_the_rendered_deployment_routes_openai_requests_to_the_pods(
    cluster: Cluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The rendered container (its command, args, env, config file, probes) as a real process: the
    only changes are loopback ports and the stand-in API server for the in-cluster credentials."""
    overlay = {
        "router": {
            "modelServers": {"matchLabels": {"app": "vllm"}, "targetPorts": [{"number": cluster.sim_port}]}
        }
    }
    docs = render(*values(tmp_path, overlay), release=RELEASE, namespace="default")
    c = container(docs)
    port, admin = free_port(), free_port()
    config_dir = tmp_path / "config"  # the ConfigMap mounted at /config
    config_dir.mkdir()
    for name, text in one(docs, "ConfigMap")["data"].items():
        (config_dir / name).write_text(text)
    loopback = {
        "--port=8081": f"--port={port}",
        "--admin-port=9090": f"--admin-port={admin}",
        "--host=0.0.0.0": "--host=127.0.0.1",
    }
    args = [
        loopback.get(a, a).replace("--config=/config/", f"--config={config_dir}/") for a in serve_args(docs)
    ]
    assert len(set(args) - set(serve_args(docs))) == 4
    args += ["--kubeconfig", str(cluster.kubeconfig)]  # in a pod: the ServiceAccount's credentials
    pod_name = f"{PICKER}-7d9f8b6c5-x2x4q"  # <deployment>-<replica set>-<pod>
    downward = {"metadata.namespace": "default", "metadata.name": pod_name}
    env = {e["name"]: downward[e["valueFrom"]["fieldRef"]["fieldPath"]] for e in c["env"] if "valueFrom" in e}

    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    local = {named["http"]: port, named["metrics"]: admin}
    probes = {
        probe: f"http://127.0.0.1:{local[named[c[probe]['httpGet']['port']]]}{c[probe]['httpGet']['path']}"
        for probe in ("livenessProbe", "readinessProbe")
    }
    child = start_infergate(args, cluster.log_dir, env=env)
    try:

        async def probe_ok(url: str) -> bool:
            assert child.alive(), child.output()
            try:
                return (await get(url))[0] == 200
            except aiohttp.ClientConnectionError:
                return False

        await async_wait_for(lambda: probe_ok(probes["livenessProbe"]), timeout=30, what="liveness probe")
        await async_wait_for(lambda: probe_ok(probes["readinessProbe"]), timeout=30, what="readiness probe")

        client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        for _ in range(4):
            reply = await client.completions.create(model=MODEL, prompt="Say hello.", max_tokens=3)
            assert reply.choices[0].text
        chat = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=3
        )
        assert chat.choices[0].message.content
        await client.close()

        # /metrics as the chart protects it: a reader's token (TokenReview + SubjectAccessReview)
        status, _ = await get(f"http://127.0.0.1:{admin}/metrics")
        assert status in (401, 403)
        status, text = await get(f"http://127.0.0.1:{admin}/metrics", token=READER_TOKEN)
        assert status == 200 and "llm_d_epp_request_total" in text
        assert f'"{PICKER}"' in text  # the pool is named after the Deployment ($POD_NAME)
    finally:
        assert child.stop(signal.SIGTERM, timeout=30) == 0, child.output()

    allowed = granted_rules(one(docs, "Role")) | granted_rules(one(docs, "ClusterRole"))
    made = {_needed(r) for r in cluster.api.requests}
    assert ("", "pods", "watch") in made and ("authentication.k8s.io", "tokenreviews", "create") in made
    missing = made - allowed
    assert not missing, f"the chart's RBAC does not allow what infergate serve does: {sorted(missing)}"
