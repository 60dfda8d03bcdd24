"""The ``infergate`` command line: a thin translation from flags to the programmatic entry points.

Commands that must accept a foreign tool's flags verbatim (``simulate`` takes vLLM's) hand their
arguments to the owning package's own parser, which also answers ``--help``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from infergate.cli_options import (
    POOL_GROUP,
    AdminPortOpt,
    ApiKeysOpt,
    DebugOpt,
    EndpointSelectorOpt,
    EndpointTargetPortsOpt,
    FlowOpt,
    GraceOpt,
    HostOpt,
    KubeconfigOpt,
    LogFormatOpt,
    LogOpt,
    MaxMessagesOpt,
    MaxTokensOpt,
    MetricsCertDirOpt,
    MetricsClientCaOpt,
    PickerOpt,
    PlaneOpt,
    PoolNameOpt,
    PoolNamespaceOpt,
    PoolOpt,
    PortOpt,
    PrintSettingsOpt,
    SettingsFileOpt,
    TokenFileOpt,
    WorkersOpt,
    auth_mode,
    cluster_flags,
    common_flags,
    lower,
)

if TYPE_CHECKING:
    from infergate.config.picker import EndpointPickerConfig
    from infergate.config.settings import Settings

app = typer.Typer(
    name="infergate",
    help="An inference gateway for fleets of OpenAI-compatible LLM servers.",
    no_args_is_help=True,
    add_completion=False,
)

"""The one InferencePool API group ``epp --pool-name`` watches (``--pool-group`` must name it)."""

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


def _settings(
    flags: dict[str, Any], file: Path | None, *, print_settings: bool, defaults: dict[str, Any] | None = None
) -> Settings:
    """Merge defaults < ``--settings`` file < ``INFERGATE_*`` < flags; ``--print-settings`` exits here."""
    from infergate.config.layers import load_settings
    from infergate.errors import ConfigError

    try:
        loaded = load_settings(flags=flags, file=file, defaults=defaults)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if print_settings:
        typer.echo(loaded.render())
        raise typer.Exit(0)
    return loaded.settings


def _picker(path: Path | None, text: str | None = None) -> EndpointPickerConfig | None:
    from infergate.config.picker import load_picker_config, parse_picker_config

    if path is not None:
        return load_picker_config(path)
    if text is not None:
        return parse_picker_config(text, source="--config-text")
    return None


@app.command(
    "serve",
    help="Run the endpoint picker and built-in proxy for model servers that already run: described "
    "by manifest files (-f), or found in a cluster (--pool-name, --endpoint-selector).",
)
def serve(
    filename: Annotated[
        list[Path] | None, typer.Option("--filename", "-f", help="Manifest file or directory (repeatable).")
    ] = None,
    pool_name: PoolNameOpt = None,
    pool_namespace: PoolNamespaceOpt = None,
    endpoint_selector: EndpointSelectorOpt = None,
    endpoint_target_ports: EndpointTargetPortsOpt = None,
    kubeconfig: KubeconfigOpt = None,
    port: PortOpt = None,
    admin_port: AdminPortOpt = None,
    host: HostOpt = None,
    config: PickerOpt = None,
    pool: PoolOpt = None,
    flow_control: FlowOpt = None,
    debug_headers: DebugOpt = None,
    grace: GraceOpt = None,
    data_plane: PlaneOpt = None,
    workers: WorkersOpt = None,
    log_level: LogOpt = None,
    log_format: LogFormatOpt = None,
    metrics_auth: Annotated[
        str | None,
        typer.Option(
            "--metrics-auth",
            help="Protect the admin /metrics and /debug: token (--metrics-token-file, or a token "
            "generated and printed) or disabled.",
        ),
    ] = None,
    metrics_token_file: TokenFileOpt = None,
    api_keys: ApiKeysOpt = None,
    max_messages: MaxMessagesOpt = None,
    max_tokens_ceiling: MaxTokensOpt = None,
    settings_file: SettingsFileOpt = None,
    print_settings: PrintSettingsOpt = False,
) -> None:
    from infergate.app.epp import run_epp
    from infergate.app.run import run_serve
    from infergate.errors import ConfigError

    try:
        cluster = cluster_flags(
            files=bool(filename),
            pool_name=pool_name,
            pool_namespace=pool_namespace,
            endpoint_selector=endpoint_selector,
            endpoint_target_ports=endpoint_target_ports,
            kubeconfig=kubeconfig,
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if cluster is not None and lower(data_plane) not in (None, "builtin"):
        typer.echo(
            "error: --data-plane: in a cluster `serve` runs the built-in proxy; to put Envoy (or a "
            "Gateway) in front, run `infergate epp` as its ext_proc picker",
            err=True,
        )
        raise typer.Exit(2)
    flags = common_flags(
        port=port,
        admin_port=admin_port,
        host=host,
        flow_control=flow_control,
        debug_headers=debug_headers,
        grace=grace,
        data_plane=data_plane,
        log_level=log_level,
        log_format=log_format,
        metrics_auth=metrics_auth,
        api_keys=api_keys,
        max_messages=max_messages,
        max_tokens_ceiling=max_tokens_ceiling,
        workers=workers,
    )
    flags.update({"pool": pool, "auth.metrics_token_file": metrics_token_file, **(cluster or {})})
    if cluster is not None and pool_name is None:
        flags["pool"] = pool
    # in a cluster: the reference's metrics protection, and a port when no Gateway manifest gives one
    defaults = {"auth.metrics_auth": "kubernetes", "listeners.port": 8080} if cluster is not None else {}
    settings = _settings(flags, settings_file, print_settings=print_settings, defaults=defaults)
    try:
        picker = _picker(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if cluster is not None:
        raise typer.Exit(run_epp(settings, picker=picker))
    assert filename is not None
    raise typer.Exit(run_serve(filename, settings, picker=picker))


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
    admin_port: AdminPortOpt = None,
    host: HostOpt = None,
    replicas: Annotated[int | None, typer.Option("--replicas", help="Replicas per Deployment.")] = None,
    replica_ports: Annotated[
        str | None,
        typer.Option(
            "--replica-ports",
            help="Ports of the simulated replicas: one per replica (8001,8002,8003) or the first of a "
            "consecutive run (8001). Default: free ports, printed at start.",
        ),
    ] = None,
    grpc_port: Annotated[
        int | None,
        typer.Option("--grpc-port", help="Envoy data plane: the picker's ext_proc port (0: a free one)."),
    ] = None,
    envoy_admin_port: Annotated[
        int | None,
        typer.Option("--envoy-admin-port", help="Envoy data plane: Envoy's admin port (0: a free one)."),
    ] = None,
    config: PickerOpt = None,
    flow_control: FlowOpt = None,
    debug_headers: DebugOpt = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No live summary table; only errors are logged.")
    ] = False,
    grace: GraceOpt = None,
    data_plane: PlaneOpt = None,
    workers: WorkersOpt = None,
    log_level: LogOpt = None,
    log_format: LogFormatOpt = None,
    metrics_auth: Annotated[
        str | None,
        typer.Option(
            "--metrics-auth",
            help="token: the admin /metrics and /debug need a bearer token generated and printed "
            "at start; disabled: open.",
        ),
    ] = None,
    api_keys: ApiKeysOpt = None,
    max_messages: MaxMessagesOpt = None,
    max_tokens_ceiling: MaxTokensOpt = None,
    settings_file: SettingsFileOpt = None,
    print_settings: PrintSettingsOpt = False,
) -> None:
    from infergate.app.run import parse_replica_ports, run_up
    from infergate.dataplanes import check_runs_under_up
    from infergate.errors import ConfigError

    flags = common_flags(
        port=port,
        admin_port=admin_port,
        host=host,
        flow_control=flow_control,
        debug_headers=debug_headers,
        grace=grace,
        data_plane=data_plane,
        log_level=log_level,
        log_format=log_format,
        metrics_auth=metrics_auth,
        api_keys=api_keys,
        max_messages=max_messages,
        max_tokens_ceiling=max_tokens_ceiling,
        workers=workers,
    )
    flags["listeners.envoy_picker_port"] = grpc_port
    flags["listeners.envoy_admin_port"] = envoy_admin_port
    defaults = {
        "listeners.host": "127.0.0.1",
        "auth.metrics_auth": "token",
        "logging.level": "error" if quiet else "warning",
    }
    settings = _settings(flags, settings_file, print_settings=print_settings, defaults=defaults)
    if settings.auth.metrics_auth == "kubernetes":
        typer.echo("error: --metrics-auth must be token or disabled for `up`", err=True)
        raise typer.Exit(2)
    try:
        check_runs_under_up(settings.data_plane)  # the data-plane map knows which planes `up` runs
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        picker = _picker(config)
        ports = parse_replica_ports(replica_ports)
    except (ConfigError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(
        run_up(
            directory,
            settings,
            picker=picker,
            replicas=replicas,
            replica_ports=ports,
            quiet=quiet,
            simulate_args=list(ctx.args),
        )
    )


@app.command(
    "epp",
    help="Run only the endpoint picker (Envoy ext_proc gRPC) for a Gateway that speaks it: in a cluster "
    "with --pool-name (watches the Kubernetes API) or --endpoint-selector (pods, no InferencePool), or "
    "from manifest files with -f.",
)
def epp(
    filename: Annotated[
        list[Path] | None, typer.Option("--filename", "-f", help="Manifest file or directory (file mode).")
    ] = None,
    pool_name: PoolNameOpt = None,
    pool_namespace: PoolNamespaceOpt = None,
    pool_group: Annotated[
        str,
        typer.Option("--pool-group", help="The InferencePool API group (only this one is watched)."),
    ] = POOL_GROUP,
    endpoint_selector: EndpointSelectorOpt = None,
    endpoint_target_ports: EndpointTargetPortsOpt = None,
    kubeconfig: KubeconfigOpt = None,
    grpc_port: Annotated[int | None, typer.Option("--grpc-port", help="ext_proc gRPC port (9002).")] = None,
    grpc_health_port: Annotated[
        int | None,
        typer.Option("--grpc-health-port", help="Plaintext gRPC health port (liveness, readiness; 9003)."),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Admin port (/metrics; 9090).")
    ] = None,
    host: HostOpt = None,
    config: Annotated[
        Path | None, typer.Option("--config-file", "--config", "-c", help="EndpointPickerConfig YAML file.")
    ] = None,
    config_text: Annotated[
        str | None, typer.Option("--config-text", help="EndpointPickerConfig YAML given inline.")
    ] = None,
    pool: PoolOpt = None,
    flow_control: FlowOpt = None,
    secure_serving: Annotated[
        bool | None,
        typer.Option("--secure-serving/--no-secure-serving", help="TLS on the ext_proc port (on)."),
    ] = None,
    cert_path: Annotated[
        Path | None,
        typer.Option("--cert-path", help="Directory with tls.crt and tls.key (default: self-signed)."),
    ] = None,
    cert_reload: Annotated[
        bool, typer.Option("--enable-cert-reload", help="Load --cert-path's pair again when it changes.")
    ] = False,
    tls_min_version: Annotated[
        str | None, typer.Option("--tls-min-version", help="VersionTLS12 (default) or VersionTLS13.")
    ] = None,
    tls_cipher_suites: Annotated[
        str | None, typer.Option("--tls-cipher-suites", help="TLS 1.2 suites, Go names, comma-separated.")
    ] = None,
    metrics_cert_dir: MetricsCertDirOpt = None,
    metrics_client_ca_file: MetricsClientCaOpt = None,
    grpc_max_recv: Annotated[
        str | None, typer.Option("--grpc-max-recv-msg-size", help="Largest ext_proc message taken (16MiB).")
    ] = None,
    grpc_max_send: Annotated[
        str | None, typer.Option("--grpc-max-send-msg-size", help="Largest ext_proc message sent (no limit).")
    ] = None,
    stream_metrics: Annotated[
        bool, typer.Option("--enable-grpc-stream-metrics", help="Export the ext_proc stream metrics.")
    ] = False,
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
        str | None, typer.Option("--refresh-metrics-interval", help="Model-server scrape interval (50ms).")
    ] = None,
    refresh_prometheus_metrics_interval: Annotated[
        str | None,
        typer.Option(
            "--refresh-prometheus-metrics-interval", help="Update of the inference_pool_* gauges (5s)."
        ),
    ] = None,
    metrics_staleness_threshold: Annotated[
        str | None,
        typer.Option("--metrics-staleness-threshold", help="Metrics older than this: not a candidate (2s)."),
    ] = None,
    emit_endpoint_scores: Annotated[
        bool, typer.Option("--emit-endpoint-scores", help="Send each candidate's score to Envoy (metadata).")
    ] = False,
    disable_endpoint_subset_filter: Annotated[
        bool,
        typer.Option(
            "--disable-endpoint-subset-filter", help="Ignore the data plane's endpoint subset hint."
        ),
    ] = False,
    grace: GraceOpt = None,
    workers: WorkersOpt = None,
    log_level: LogOpt = None,
    log_format: LogFormatOpt = None,
    settings_file: SettingsFileOpt = None,
    print_settings: PrintSettingsOpt = False,
) -> None:
    from infergate.app.epp import run_epp
    from infergate.app.run import run_serve
    from infergate.errors import ConfigError

    def fail(message: str) -> typer.Exit:
        typer.echo(f"error: {message}", err=True)
        return typer.Exit(2)

    try:
        cluster = cluster_flags(
            files=bool(filename),
            pool_name=pool_name,
            pool_namespace=pool_namespace,
            endpoint_selector=endpoint_selector,
            endpoint_target_ports=endpoint_target_ports,
            kubeconfig=kubeconfig,
        )
    except ValueError as exc:
        raise fail(str(exc)) from None
    if config is not None and config_text is not None:
        raise fail("--config-file and --config-text are exclusive")
    if pool_group != POOL_GROUP:
        raise fail(f"--pool-group: only {POOL_GROUP} (v1) InferencePools are supported (got {pool_group!r})")
    flags: dict[str, Any] = {
        "data_plane": "epp",
        **(cluster or {}),
        "listeners.host": host,
        "listeners.grpc_port": grpc_port,
        "listeners.grpc_health_port": grpc_health_port,
        "listeners.admin_port": metrics_port,
        "listeners.secure_serving": secure_serving,
        "listeners.cert_path": cert_path,
        "listeners.cert_reload": True if cert_reload else None,
        "listeners.tls_min_version": tls_min_version,
        "listeners.tls_cipher_suites": tuple(c.strip() for c in tls_cipher_suites.split(",") if c.strip())
        if tls_cipher_suites
        else None,
        "auth.metrics_cert_dir": metrics_cert_dir,
        "auth.metrics_client_ca_file": metrics_client_ca_file,
        "listeners.grpc_max_recv_msg_size": grpc_max_recv,
        "listeners.grpc_max_send_msg_size": grpc_max_send,
        "listeners.grpc_stream_metrics": True if stream_metrics else None,
        "auth.metrics_auth": "disabled" if no_metrics_auth else auth_mode(metrics_auth),
        "auth.metrics_token_file": metrics_token_file,
        "scrape.interval": refresh_metrics_interval,
        "scrape.pool_metrics_interval": refresh_prometheus_metrics_interval,
        "scrape.staleness": metrics_staleness_threshold,
        "subset_filter": False if disable_endpoint_subset_filter else None,
        "emit_endpoint_scores": True if emit_endpoint_scores else None,
        "flow_control.enabled": flow_control,
        "proxy.shutdown_grace": grace,
        "proxy.workers": workers,
        "logging.level": lower(log_level),
        "logging.format": lower(log_format),
    }
    if cluster is None or pool_name is None:
        flags["pool"] = pool  # file mode's choice among several pools (standalone: the Deployment's name)
    in_cluster = cluster is not None
    defaults = {"auth.metrics_auth": "kubernetes"} if in_cluster else {}
    settings = _settings(flags, settings_file, print_settings=print_settings, defaults=defaults)
    try:
        picker = _picker(config, config_text)
    except (ConfigError, ValueError) as exc:
        raise fail(str(exc)) from None

    if in_cluster:
        raise typer.Exit(run_epp(settings, picker=picker))
    assert filename is not None
    raise typer.Exit(run_serve(filename, settings, picker=picker))


def _version(value: bool) -> None:
    if value:
        from infergate import __version__

        typer.echo(f"infergate {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """An inference gateway for fleets of OpenAI-compatible LLM servers."""


def main() -> None:
    """Console-script entry point.

    Usage errors (an unknown flag, a value of the wrong type) are one ``error:`` line and exit code
    2, like every other startup error, instead of a boxed panel an operator has to read around.
    """
    from infergate.config.reference_flags import rewrite_argv

    rewrite_argv(sys.argv)
    try:
        code = app(prog_name="infergate", standalone_mode=False)
    except typer.TyperException as exc:  # typer's own parser errors (it vendors click)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if type(exc).__name__ == "NoArgsIsHelpError":
            typer.echo(message)
            raise SystemExit(0) from None
        ctx = getattr(exc, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None else ""
        typer.echo(f"error: {where}{message}", err=True)
        raise SystemExit(int(getattr(exc, "exit_code", 2))) from None
    except typer.Abort:
        raise SystemExit(130) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
