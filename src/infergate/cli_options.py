"""The command-line options several ``infergate`` commands share, declared once (typer's
``Annotated`` form), so that ``serve``, ``up`` and ``epp`` spell and explain each the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = [
    "AdminPortOpt",
    "ApiKeysOpt",
    "DebugOpt",
    "FlowOpt",
    "GraceOpt",
    "HostOpt",
    "LogFormatOpt",
    "LogOpt",
    "MaxMessagesOpt",
    "MaxTokensOpt",
    "MetricsCertDirOpt",
    "MetricsClientCaOpt",
    "PickerOpt",
    "PlaneOpt",
    "PoolOpt",
    "PortOpt",
    "PrintSettingsOpt",
    "SettingsFileOpt",
    "TokenFileOpt",
    "WorkersOpt",
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
