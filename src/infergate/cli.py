"""The ``infergate`` command line: a thin translation from flags to the programmatic entry points.

Commands that must accept a foreign tool's flags verbatim (``simulate`` takes vLLM's) hand their
arguments to the owning package's own parser, which also answers ``--help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from infergate.servers.metrics_auth import MetricsAuthorizer

app = typer.Typer(
    name="infergate",
    help="An inference gateway for fleets of OpenAI-compatible LLM servers.",
    no_args_is_help=True,
    add_completion=False,
)

_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(
    "simulate",
    context_settings=_PASSTHROUGH,
    add_help_option=False,
    help="Run a vLLM-compatible simulated model server (accepts vLLM's flags; see --help).",
)
def simulate(ctx: typer.Context) -> None:
    from infergate.simulator.cli import main as simulate_main

    raise typer.Exit(simulate_main(list(ctx.args)))


@app.command(
    "lora-syncer",
    context_settings=_PASSTHROUGH,
    add_help_option=False,
    help="Keep LoRA adapters loaded on a model server from a vLLMLoRAConfig file (see --help).",
)
def lora_syncer(ctx: typer.Context) -> None:
    from infergate.lora.cli import main as lora_main

    raise typer.Exit(lora_main(list(ctx.args)))


@app.command(
    "pd-sidecar",
    context_settings=_PASSTHROUGH,
    add_help_option=False,
    help="Run the prefill/decode sidecar in front of a decode model server (see --help).",
)
def pd_sidecar(ctx: typer.Context) -> None:
    from infergate.pdsidecar.cli import main as sidecar_main

    raise typer.Exit(sidecar_main(list(ctx.args)))


@app.command(
    "bench",
    context_settings=_PASSTHROUGH,
    add_help_option=False,
    help="Load a URL with a workload, compare routing strategies, or run the digital twin (see --help).",
)
def bench(ctx: typer.Context) -> None:
    from infergate.bench.cli import main as bench_main

    raise typer.Exit(bench_main(list(ctx.args)))


def _gateway_config(
    *,
    port: int | None,
    admin_port: int,
    host: str,
    config: Path | None,
    pool: str | None,
    flow_control: bool,
    debug_headers: bool,
    grace: float,
    data_plane: str = "builtin",
    grpc_port: int = 9002,
    picker_tls: bool = False,
    api_keys: Path | None = None,
    max_messages: int | None = None,
    max_tokens: int | None = None,
) -> object:
    from infergate.app.gateway import GatewayConfig
    from infergate.config.picker import load_picker_config
    from infergate.config.settings import GatewaySettings
    from infergate.servers.auth import load_api_keys

    picker = load_picker_config(config) if config is not None else None
    settings = GatewaySettings().replace(max_messages=max_messages, max_tokens_ceiling=max_tokens)
    return GatewayConfig(
        settings=settings,
        api_keys=load_api_keys(api_keys) if api_keys is not None else None,
        host=host,
        port=port,
        admin_host=host,
        admin_port=admin_port,
        pool_name=pool,
        picker=picker,
        flow_control=flow_control,
        served_header=debug_headers,
        shutdown_grace=grace,
        data_plane=data_plane,
        grpc_port=grpc_port,
        picker_tls=picker_tls,
    )


PortOpt = Annotated[
    int | None,
    typer.Option("--port", "-p", help="Listener port (default: the Gateway's; 8080 if 80 fails)."),
]
AdminPortOpt = Annotated[int, typer.Option("--admin-port", help="Admin port (/metrics, /readyz).")]
HostOpt = Annotated[str, typer.Option("--host", help="Bind address of both listeners.")]
PickerOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="EndpointPickerConfig YAML file."),
]
PoolOpt = Annotated[str | None, typer.Option("--pool", help="InferencePool name, if several.")]
FlowOpt = Annotated[bool, typer.Option("--flow-control/--no-flow-control", help="Queue when saturated.")]
DebugOpt = Annotated[
    bool, typer.Option("--debug-headers", help="Add x-gateway-destination-endpoint-served to responses.")
]
GraceOpt = Annotated[float, typer.Option("--grace", help="Drain time on SIGTERM (s).")]
PlaneOpt = Annotated[
    str, typer.Option("--data-plane", help="builtin (asyncio proxy) or envoy (Envoy + ext_proc picker).")
]
LogOpt = Annotated[str | None, typer.Option("--log-level", help="debug, info, warning or error.")]
LogFormatOpt = Annotated[
    str,
    typer.Option("--log-format", help="text (control characters escaped) or json (one object per line)."),
]


def _log_format(value: str) -> str:
    fmt = value.strip().lower()
    if fmt not in ("text", "json"):
        typer.echo(f"error: --log-format must be text or json (got {value!r})", err=True)
        raise typer.Exit(2)
    return fmt


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


@app.command("serve", help="Run the endpoint picker and built-in proxy for model servers that already run.")
def serve(
    filename: Annotated[
        list[Path], typer.Option("--filename", "-f", help="Manifest file or directory (repeatable).")
    ],
    port: PortOpt = None,
    admin_port: AdminPortOpt = 9090,
    host: HostOpt = "0.0.0.0",
    config: PickerOpt = None,
    pool: PoolOpt = None,
    flow_control: FlowOpt = True,
    debug_headers: DebugOpt = False,
    grace: GraceOpt = 10.0,
    data_plane: PlaneOpt = "builtin",
    log_level: LogOpt = None,
    log_format: LogFormatOpt = "text",
    metrics_auth: Annotated[
        str,
        typer.Option(
            "--metrics-auth",
            help="Protect the admin /metrics and /debug: token (--metrics-token-file, or a token "
            "generated and printed) or disabled.",
        ),
    ] = "disabled",
    metrics_token_file: TokenFileOpt = None,
    api_keys: ApiKeysOpt = None,
    max_messages: MaxMessagesOpt = None,
    max_tokens_ceiling: MaxTokensOpt = None,
) -> None:
    from dataclasses import replace

    from infergate.app.gateway import GatewayConfig
    from infergate.app.run import run_serve
    from infergate.errors import ConfigError
    from infergate.servers.metrics_auth import StaticTokenAuth, generate_token

    token: str | None = None
    try:
        cfg = _gateway_config(
            port=port,
            admin_port=admin_port,
            host=host,
            config=config,
            pool=pool,
            flow_control=flow_control,
            debug_headers=debug_headers,
            grace=grace,
            data_plane=data_plane,
            api_keys=api_keys,
            max_messages=max_messages,
            max_tokens=max_tokens_ceiling,
        )
        assert isinstance(cfg, GatewayConfig)
        if metrics_auth.strip().lower() == "token" and metrics_token_file is None:
            token = generate_token()
            cfg = replace(cfg, metrics_auth=StaticTokenAuth([token]))
        else:
            cfg = replace(cfg, metrics_auth=_local_metrics_auth(metrics_auth, metrics_token_file))
    except (ConfigError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(
        run_serve(
            filename,
            cfg,
            log_level=log_level or "INFO",
            metrics_token=token,
            log_format=_log_format(log_format),
        )
    )


@app.command(
    "up",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    help="Run the whole tutorial locally: simulated vLLM replicas, LoRA syncers, picker and proxy. "
    "Extra arguments are passed to every `infergate simulate`.",
)
def up(
    ctx: typer.Context,
    directory: Annotated[
        Path | None, typer.Argument(help="Manifest directory (default: the bundled tutorial).")
    ] = None,
    port: PortOpt = None,
    admin_port: AdminPortOpt = 9090,
    host: HostOpt = "127.0.0.1",
    replicas: Annotated[int | None, typer.Option("--replicas", help="Replicas per Deployment.")] = None,
    config: PickerOpt = None,
    flow_control: FlowOpt = True,
    debug_headers: DebugOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live summary.")] = False,
    grace: GraceOpt = 10.0,
    data_plane: PlaneOpt = "builtin",
    log_level: LogOpt = None,
    log_format: LogFormatOpt = "text",
    metrics_auth: Annotated[
        str,
        typer.Option(
            "--metrics-auth",
            help="token: the admin /metrics and /debug need a bearer token generated and printed "
            "at start; disabled: open.",
        ),
    ] = "token",
    api_keys: ApiKeysOpt = None,
    max_messages: MaxMessagesOpt = None,
    max_tokens_ceiling: MaxTokensOpt = None,
) -> None:
    from infergate.app.gateway import GatewayConfig
    from infergate.app.run import run_up
    from infergate.errors import ConfigError

    try:
        cfg = _gateway_config(
            port=port,
            admin_port=admin_port,
            host=host,
            config=config,
            pool=None,
            flow_control=flow_control,
            debug_headers=debug_headers,
            grace=grace,
            data_plane=data_plane,
            api_keys=api_keys,
            max_messages=max_messages,
            max_tokens=max_tokens_ceiling,
        )
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    assert isinstance(cfg, GatewayConfig)
    mode = metrics_auth.strip().lower()
    if mode not in ("token", "disabled", "false", "true"):
        typer.echo("error: --metrics-auth must be token or disabled for `up`", err=True)
        raise typer.Exit(2)
    protect = mode in ("token", "true")
    level = log_level or ("INFO" if quiet else "WARNING")
    raise typer.Exit(
        run_up(
            directory,
            cfg,
            replicas=replicas,
            quiet=quiet,
            log_level=level,
            simulate_args=list(ctx.args),
            protect_metrics=protect,
            log_format=_log_format(log_format),
        )
    )


@app.command(
    "epp",
    help="Run only the endpoint picker (Envoy ext_proc gRPC) for a Gateway that speaks it: in a cluster "
    "with --pool-name (watches the Kubernetes API), or from manifest files with -f.",
)
def epp(
    filename: Annotated[
        list[Path] | None, typer.Option("--filename", "-f", help="Manifest file or directory (file mode).")
    ] = None,
    pool_name: Annotated[
        str | None, typer.Option("--pool-name", help="InferencePool to serve, watched in the cluster.")
    ] = None,
    pool_namespace: Annotated[
        str | None,
        typer.Option("--pool-namespace", help="Its namespace (default: $NAMESPACE, else default)."),
    ] = None,
    pool_group: Annotated[
        str, typer.Option("--pool-group", help="The InferencePool API group.")
    ] = "inference.networking.k8s.io",
    kubeconfig: Annotated[
        str | None, typer.Option("--kubeconfig", help="Kubeconfig file (default: in-cluster, else ~/.kube).")
    ] = None,
    grpc_port: Annotated[int, typer.Option("--grpc-port", help="ext_proc gRPC port.")] = 9002,
    grpc_health_port: Annotated[
        int, typer.Option("--grpc-health-port", help="Plaintext gRPC health port (liveness, readiness).")
    ] = 9003,
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="Admin port (/metrics).")] = 9090,
    host: HostOpt = "0.0.0.0",
    config: Annotated[
        Path | None, typer.Option("--config-file", "--config", "-c", help="EndpointPickerConfig YAML file.")
    ] = None,
    config_text: Annotated[
        str | None, typer.Option("--config-text", help="EndpointPickerConfig YAML given inline.")
    ] = None,
    pool: PoolOpt = None,
    flow_control: FlowOpt = True,
    secure_serving: Annotated[
        bool, typer.Option("--secure-serving/--no-secure-serving", help="TLS on the ext_proc port.")
    ] = True,
    cert_path: Annotated[
        Path | None,
        typer.Option("--cert-path", help="Directory with tls.crt and tls.key (default: self-signed)."),
    ] = None,
    metrics_auth: Annotated[
        str | None,
        typer.Option(
            "--metrics-auth",
            help="Protect /metrics: kubernetes (TokenReview + SubjectAccessReview; default with "
            "--pool-name), token (--metrics-token-file) or disabled (default with -f).",
        ),
    ] = None,
    no_metrics_auth: Annotated[
        bool, typer.Option("--no-metrics-auth", help="Same as --metrics-auth=disabled.")
    ] = False,
    metrics_token_file: Annotated[
        Path | None, typer.Option("--metrics-token-file", help="Bearer tokens for --metrics-auth=token.")
    ] = None,
    refresh_metrics_interval: Annotated[
        str, typer.Option("--refresh-metrics-interval", help="Model-server scrape interval.")
    ] = "50ms",
    refresh_prometheus_metrics_interval: Annotated[
        str,
        typer.Option("--refresh-prometheus-metrics-interval", help="Update of the inference_pool_* gauges."),
    ] = "5s",
    metrics_staleness_threshold: Annotated[
        str, typer.Option("--metrics-staleness-threshold", help="Metrics older than this: not a candidate.")
    ] = "2s",
    disable_endpoint_subset_filter: Annotated[
        bool,
        typer.Option(
            "--disable-endpoint-subset-filter", help="Ignore the data plane's endpoint subset hint."
        ),
    ] = False,
    grace: GraceOpt = 10.0,
    log_level: LogOpt = None,
    log_format: LogFormatOpt = "text",
) -> None:
    from dataclasses import replace

    from infergate.app.epp import EppConfig, parse_duration, run_epp
    from infergate.app.gateway import GatewayConfig
    from infergate.app.run import run_serve
    from infergate.config.picker import load_picker_config, parse_picker_config
    from infergate.config.settings import GatewaySettings
    from infergate.errors import ConfigError
    from infergate.sources.kubernetes_client import default_pool_namespace

    def fail(message: str) -> typer.Exit:
        typer.echo(f"error: {message}", err=True)
        return typer.Exit(2)

    if (pool_name is None) == (not filename):
        raise fail("give either --pool-name (in-cluster) or -f/--filename (manifest files)")
    if config is not None and config_text is not None:
        raise fail("--config-file and --config-text are exclusive")
    auth_mode = "disabled" if no_metrics_auth else metrics_auth
    try:
        settings = replace(
            GatewaySettings(),
            scrape_interval=parse_duration(refresh_metrics_interval),
            staleness=parse_duration(metrics_staleness_threshold),
            pool_metrics_interval=parse_duration(refresh_prometheus_metrics_interval),
        )
        if config is not None:
            picker = load_picker_config(config)
        elif config_text is not None:
            picker = parse_picker_config(config_text, source="--config-text")
        else:
            picker = None
    except (ConfigError, ValueError) as exc:
        raise fail(str(exc)) from None
    level = log_level or "INFO"

    if pool_name is not None:
        cluster = EppConfig(
            pool_name=pool_name,
            pool_namespace=pool_namespace or default_pool_namespace(),
            pool_group=pool_group,
            kubeconfig=kubeconfig,
            host=host,
            grpc_port=grpc_port,
            grpc_health_port=grpc_health_port,
            metrics_port=metrics_port,
            picker=picker,
            secure_serving=secure_serving,
            cert_path=cert_path,
            metrics_auth=auth_mode or "kubernetes",
            metrics_token_file=metrics_token_file,
            settings=settings,
            flow_control=flow_control,
            subset_filter=not disable_endpoint_subset_filter,
            shutdown_grace=grace,
        )
        raise typer.Exit(run_epp(cluster, log_level=level, log_format=_log_format(log_format)))

    try:
        authorizer = _local_metrics_auth(auth_mode or "disabled", metrics_token_file)
    except ValueError as exc:
        raise fail(str(exc)) from None
    cfg = GatewayConfig(
        host=host,
        port=None,
        admin_host=host,
        admin_port=metrics_port,
        pool_name=pool,
        picker=picker,
        settings=settings,
        flow_control=flow_control,
        shutdown_grace=grace,
        data_plane="epp",
        grpc_port=grpc_port,
        grpc_health_port=grpc_health_port,
        picker_tls=secure_serving,
        metrics_auth=authorizer,
    )
    assert filename is not None
    raise typer.Exit(run_serve(filename, cfg, log_level=level, log_format=_log_format(log_format)))


def _local_metrics_auth(mode: str, token_file: Path | None) -> MetricsAuthorizer | None:
    """The authorizer for ``serve``/``epp -f``: ``token`` (a file) or ``disabled``.

    ``kubernetes`` needs the cluster, so it is only offered with ``epp --pool-name``.
    Raises ValueError for anything else.
    """
    from infergate.servers.metrics_auth import build_metrics_auth

    if mode.strip().lower() in ("kubernetes", "true", "on"):
        raise ValueError("--metrics-auth=kubernetes needs the cluster (infergate epp --pool-name)")
    return build_metrics_auth(mode, token_file=token_file)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="infergate")


if __name__ == "__main__":  # pragma: no cover
    main()
