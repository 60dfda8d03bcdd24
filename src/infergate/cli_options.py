"""The command-line options several ``infergate`` commands share, declared once (typer's
``Annotated`` form), so that ``serve``, ``up`` and ``epp`` spell and explain each the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = [
    "POOL_GROUP",
    "AdminPortOpt",
    "ApiKeysOpt",
    "DebugOpt",
    "EndpointSelectorOpt",
    "EndpointTargetPortsOpt",
    "FlowOpt",
    "GraceOpt",
    "HostOpt",
    "KubeconfigOpt",
    "LogFormatOpt",
    "LogOpt",
    "MaxMessagesOpt",
    "MaxTokensOpt",
    "MetricsCertDirOpt",
    "MetricsClientCaOpt",
    "PickerOpt",
    "PlaneOpt",
    "PoolNameOpt",
    "PoolNamespaceOpt",
    "PoolOpt",
    "PortOpt",
    "PrintSettingsOpt",
    "SettingsFileOpt",
    "TokenFileOpt",
    "WorkersOpt",
    "auth_mode",
    "cluster_flags",
    "common_flags",
    "lower",
]

SettingsFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--settings",
        help="YAML file of settings (docs/configuration.md); INFERGATE_* variables and flags win over it.",
    ),
]
PrintSettingsOpt = Annotated[
    bool,
    typer.Option("--print-settings", help="Print the effective settings and where each came from; exit."),
]
PortOpt = Annotated[
    int | None,
    typer.Option("--port", "-p", help="Listener port (default: the Gateway's; 8080 if 80 fails)."),
]
AdminPortOpt = Annotated[int | None, typer.Option("--admin-port", help="Admin port (/metrics, /readyz).")]
HostOpt = Annotated[str | None, typer.Option("--host", help="Bind address of both listeners.")]
PickerOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="EndpointPickerConfig YAML file."),
]
PoolOpt = Annotated[str | None, typer.Option("--pool", help="InferencePool name, if several.")]
FlowOpt = Annotated[
    bool | None, typer.Option("--flow-control/--no-flow-control", help="Queue when saturated.")
]
DebugOpt = Annotated[
    bool | None,
    typer.Option("--debug-headers", help="Add x-gateway-destination-endpoint-served to responses."),
]
GraceOpt = Annotated[float | None, typer.Option("--grace", help="Drain time on SIGTERM (s).")]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", help="Processes serving requests (the proxy or the picker; default 1)."),
]
PlaneOpt = Annotated[
    str | None,
    typer.Option("--data-plane", help="builtin (asyncio proxy) or envoy (Envoy + ext_proc picker)."),
]
LogOpt = Annotated[str | None, typer.Option("--log-level", help="debug, info, warning or error.")]
LogFormatOpt = Annotated[
    str | None,
    typer.Option("--log-format", help="text (control characters escaped) or json (one object per line)."),
]
ApiKeysOpt = Annotated[
    Path | None,
    typer.Option(
        "--api-keys",
        help="Require API keys on the inference listener: YAML/JSON file of key → allowed objectives "
        '("*" = all), or Secret manifests. Off by default.',
    ),
]
MaxMessagesOpt = Annotated[
    int | None, typer.Option("--max-messages", help="Most chat messages per request (default 2048).")
]
MaxTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--max-tokens-ceiling",
        help="Reject max_tokens above this (400); per objective: annotation infergate.dev/max-tokens.",
    ),
]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option("--metrics-token-file", help="Bearer tokens (one a line) for --metrics-auth=token."),
]
MetricsCertDirOpt = Annotated[
    Path | None,
    typer.Option("--metrics-cert-dir", help="HTTPS on the metrics port: directory with tls.crt, tls.key."),
]
MetricsClientCaOpt = Annotated[
    Path | None,
    typer.Option("--metrics-client-ca-file", help="Metrics clients need a certificate this CA signed."),
]


# --- where the pool comes from, in a cluster (``epp`` and ``serve``)

#: The InferencePool API group infergate watches.
POOL_GROUP = "inference.networking.k8s.io"

PoolNameOpt = Annotated[
    str | None, typer.Option("--pool-name", help="InferencePool to serve, watched in the cluster.")
]
PoolNamespaceOpt = Annotated[
    str | None,
    typer.Option("--pool-namespace", help="Its namespace (default: $NAMESPACE, else default)."),
]
EndpointSelectorOpt = Annotated[
    str | None,
    typer.Option(
        "--endpoint-selector",
        help="Standalone (no InferencePool): label selector of the model-server Pods, e.g. app=vllm.",
    ),
]
EndpointTargetPortsOpt = Annotated[
    str | None,
    typer.Option("--endpoint-target-ports", help="Standalone: their ports, comma-separated (1 to 8)."),
]
KubeconfigOpt = Annotated[
    Path | None,
    typer.Option("--kubeconfig", help="Kubeconfig file (default: in-cluster, else ~/.kube)."),
]


def cluster_flags(
    *,
    files: bool,
    pool_name: str | None,
    pool_namespace: str | None,
    endpoint_selector: str | None,
    endpoint_target_ports: str | None,
    kubeconfig: Path | None,
) -> dict[str, Any] | None:
    """The ``kubernetes.*`` settings (and ``pool``) for a pool watched in a cluster, or None for
    manifest files; ValueError naming the flags when not exactly one source is given."""
    from infergate.sources.label_selector import standalone_args

    if sum((pool_name is not None, endpoint_selector is not None, files)) != 1:
        raise ValueError(
            "give one of --pool-name (in-cluster), --endpoint-selector (in-cluster, no InferencePool) "
            "or -f/--filename (manifest files)"
        )
    if endpoint_target_ports is not None and endpoint_selector is None:
        raise ValueError("--endpoint-target-ports goes with --endpoint-selector")
    if files:
        for flag, value in (("--pool-namespace", pool_namespace), ("--kubeconfig", kubeconfig)):
            if value is not None:
                raise ValueError(f"{flag} goes with --pool-name or --endpoint-selector, not with -f")
        return None
    ports = standalone_args(endpoint_selector, endpoint_target_ports) if endpoint_selector is not None else ()
    return {
        "pool": pool_name,
        "kubernetes.pool_namespace": pool_namespace,
        "kubernetes.kubeconfig": kubeconfig,
        "kubernetes.endpoint_selector": endpoint_selector,
        "kubernetes.endpoint_target_ports": ports or None,
    }


# --- flags every serving command shares

_AUTH_MODES = {"true": "token", "on": "token", "false": "disabled", "off": "disabled", "none": "disabled"}


def lower(value: str | None) -> str | None:
    return value.strip().lower() if value is not None else None


def auth_mode(value: str | None) -> str | None:
    mode = lower(value)
    return _AUTH_MODES.get(mode, mode) if mode is not None else None


def common_flags(
    *,
    port: int | None,
    admin_port: int | None,
    host: str | None,
    flow_control: bool | None,
    debug_headers: bool | None,
    grace: float | None,
    data_plane: str | None,
    log_level: str | None,
    log_format: str | None,
    metrics_auth: str | None,
    api_keys: Path | None,
    max_messages: int | None,
    max_tokens_ceiling: int | None,
    workers: int | None = None,
) -> dict[str, Any]:
    return {
        "listeners.port": port,
        "listeners.admin_port": admin_port,
        "listeners.host": host,
        "flow_control.enabled": flow_control,
        "proxy.served_header": debug_headers,
        "proxy.shutdown_grace": grace,
        "data_plane": lower(data_plane),
        "logging.level": lower(log_level),
        "logging.format": lower(log_format),
        "auth.metrics_auth": auth_mode(metrics_auth),
        "auth.api_keys": api_keys,
        "limits.max_messages": max_messages,
        "limits.max_tokens_ceiling": max_tokens_ceiling,
        "proxy.workers": workers,
    }
