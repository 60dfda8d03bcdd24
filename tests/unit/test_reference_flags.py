"""``infergate epp`` takes the reference picker's flags in their own spelling, so swapping only the
image in a Deployment written for llm-d-router v0.10 gives a picker that starts: each flag is
rewritten into infergate's, or refused by name when it asks for something infergate lacks."""

from __future__ import annotations

import pytest
import typer

from infergate.cli import app
from infergate.config.reference_flags import rewrite_argv, translate
from infergate.errors import ConfigError

EPP = typer.main.get_command(app).commands["epp"]  # type: ignore[attr-defined]

# The container args of llm-d-router v0.10's own EPP Deployment
# (deploy/components/inference-gateway/deployment.yaml), its variables filled in.
LLM_D_ARGS = [
    "--pool-name", "qwen-pool",
    "--pool-namespace", "llm-d",
    "--v", "4",
    "--zap-encoder", "json",
    "--grpc-port", "9002",
    "--grpc-health-port", "9003",
    "--config-file", "/etc/epp/epp-config.yaml",
    "--allow-experimental-plugins=true",
    "--metrics-endpoint-auth=false",
    "--ha-enable-leader-election=false",
]  # fmt: skip


def test_the_reference_deployment_args_parse_as_infergates() -> None:
    env: dict[str, str] = {}
    args, notes = translate(LLM_D_ARGS, env)
    params = dict(EPP.make_context("epp", args).params)
    assert params["pool_name"] == "qwen-pool" and params["pool_namespace"] == "llm-d"
    assert params["log_level"] == "debug" and params["log_format"] == "json"
    assert params["metrics_auth"] == "disabled"
    assert str(params["config"]) == "/etc/epp/epp-config.yaml"
    assert params["grpc_port"] == 9002 and params["grpc_health_port"] == 9003
    assert env == {}
    assert "--zap-encoder=json → --log-format json" in notes
    assert "--ha-enable-leader-election=false → nothing to do" in notes


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (["--v=1"], ["--log-level", "info"]),
        (["-v", "5"], ["--log-level", "debug"]),
        (["--zap-log-level=warn"], ["--log-level", "warning"]),
        (["--zap-encoder=console"], ["--log-format", "text"]),
        (["--metrics-endpoint-auth"], ["--metrics-auth", "kubernetes"]),
        (["-metrics-endpoint-auth=false"], ["--metrics-auth", "disabled"]),
        (["--drain-timeout", "45s"], ["--grace", "45"]),
        (["--drain-timeout=7.5"], ["--grace", "7.5"]),
        (["--enable-pprof=false", "--pool-name", "p"], ["--pool-name", "p"]),
        (["-f", "pool.yaml", "--", "--v=9"], ["-f", "pool.yaml", "--", "--v=9"]),
        (["--secure-serving=false"], ["--no-secure-serving"]),
        (["--secure-serving"], ["--secure-serving"]),
        (["--disable-endpoint-subset-filter=true"], ["--disable-endpoint-subset-filter"]),
        (["--disable-endpoint-subset-filter=false"], []),
        (["--enable-grpc-stream-metrics"], ["--enable-grpc-stream-metrics"]),
        (["--enable-grpc-stream-metrics=false"], []),
        (["--health-checking=true"], []),
        (["--health-checking=false"], []),
        (["--grpc-max-recv-msg-size", "10MiB"], ["--grpc-max-recv-msg-size", "10MiB"]),
    ],
)
def test_each_reference_flag_maps(given: list[str], expected: list[str]) -> None:
    assert translate(given, {})[0] == expected


@pytest.mark.parametrize(
    ("given", "named"),
    [
        (
            ["--ha-enable-leader-election"],
            "--ha-enable-leader-election: infergate's picker replicas need no leader",
        ),
        (["--enable-pprof=true"], "--enable-pprof: infergate has no pprof"),
        (["--v=debug"], "--v: 'debug' is not a verbosity level"),
        (["--zap-encoder", "logfmt"], "--zap-encoder: 'logfmt'"),
        (["--drain-timeout=1m"], "--drain-timeout: '1m' must be seconds"),
        (["--metrics-endpoint-auth=maybe"], "--metrics-endpoint-auth: must be true or false"),
        (["--health-checking=sometimes"], "--health-checking: must be true or false"),
        (["--zap-log-level"], "--zap-log-level: needs a value"),
    ],
)
def test_what_infergate_cannot_honour_is_refused_by_name(given: list[str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        translate(given, {})
    assert str(info.value).startswith(named)


def test_tracing_on_exports_to_the_default_collector_and_off_silences_a_named_one() -> None:
    env: dict[str, str] = {}
    assert translate(["--tracing"], env)[0] == []
    assert env == {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4317"}  # OpenTelemetry's default
    named = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
    translate(["--tracing=true"], named)
    assert named == {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
    off = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
    _, notes = translate(["--tracing=false"], off)
    assert off["OTEL_TRACES_EXPORTER"] == "none" and notes == ["--tracing=false → OTEL_TRACES_EXPORTER=none"]


def test_main_rewrites_only_the_epp_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["infergate", "epp", "--pool-name", "p", "--zap-encoder=json"]
    rewrite_argv(argv)
    assert argv == ["infergate", "epp", "--pool-name", "p", "--log-format", "json"]
    assert "reference flags mapped: --zap-encoder=json → --log-format json" in capsys.readouterr().err
    serve = ["infergate", "serve", "-f", "x", "--v=4"]
    rewrite_argv(serve)
    assert serve == ["infergate", "serve", "-f", "x", "--v=4"]  # left to the parser, which refuses it
    with pytest.raises(SystemExit) as info:
        rewrite_argv(["infergate", "epp", "--enable-pprof"])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("error: infergate epp: --enable-pprof")
