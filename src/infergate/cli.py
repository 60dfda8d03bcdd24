"""The ``infergate`` command line: a thin translation from flags to the programmatic entry points.

Commands that must accept a foreign tool's flags verbatim (``simulate`` takes vLLM's) hand their
arguments to the owning package's own parser, which also answers ``--help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
) -> object:
    from infergate.app.gateway import GatewayConfig
    from infergate.config.picker import load_picker_config

    picker = load_picker_config(config) if config is not None else None
    return GatewayConfig(
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
) -> None:
    from infergate.app.gateway import GatewayConfig
    from infergate.app.run import run_serve
    from infergate.errors import ConfigError

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
        )
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    assert isinstance(cfg, GatewayConfig)
    raise typer.Exit(run_serve(filename, cfg, log_level=log_level or "INFO"))


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
        )
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    assert isinstance(cfg, GatewayConfig)
    level = log_level or ("INFO" if quiet else "WARNING")
    raise typer.Exit(
        run_up(directory, cfg, replicas=replicas, quiet=quiet, log_level=level, simulate_args=list(ctx.args))
    )


@app.command("epp", help="Run only the endpoint picker (Envoy ext_proc gRPC) for a Gateway that speaks it.")
def epp(
    filename: Annotated[list[Path], typer.Option("--filename", "-f", help="Manifest file or directory.")],
    grpc_port: Annotated[int, typer.Option("--grpc-port", help="ext_proc gRPC port.")] = 9002,
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="Admin port (/metrics).")] = 9090,
    host: HostOpt = "0.0.0.0",
    config: PickerOpt = None,
    pool: PoolOpt = None,
    flow_control: FlowOpt = True,
    secure_serving: Annotated[
        bool, typer.Option("--secure-serving/--no-secure-serving", help="TLS (self-signed) on gRPC.")
    ] = True,
    grace: GraceOpt = 10.0,
    log_level: LogOpt = None,
) -> None:
    from infergate.app.gateway import GatewayConfig
    from infergate.app.run import run_serve
    from infergate.errors import ConfigError

    try:
        cfg = _gateway_config(
            port=None,
            admin_port=metrics_port,
            host=host,
            config=config,
            pool=pool,
            flow_control=flow_control,
            debug_headers=False,
            grace=grace,
            data_plane="epp",
            grpc_port=grpc_port,
            picker_tls=secure_serving,
        )
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    assert isinstance(cfg, GatewayConfig)
    raise typer.Exit(run_serve(filename, cfg, log_level=log_level or "INFO"))


def main() -> None:
    """Console-script entry point."""
    app(prog_name="infergate")


if __name__ == "__main__":  # pragma: no cover
    main()
