"""The reference picker's command-line flags that ``infergate epp`` takes in their own spelling.

Deployments written for llm-d-router v0.10 or the GIE picker pass flags infergate spells
differently (``--v 4``, ``--zap-encoder json``, ``--metrics-endpoint-auth=false``,
``--drain-timeout 30s``) or that say "nothing to do here" (``--tracing=false``,
``--ha-enable-leader-election=false``, ``--allow-experimental-plugins``). Swapping only the image
in such a Deployment should give a picker that starts, so :func:`translate` rewrites them into
infergate's flags before the command line is parsed, and refuses, naming the flag, the values
infergate cannot honour (a leader, pprof). Flags it does not list reach the parser unchanged, which
refuses unknown ones by name. The Helm chart maps the same flags at template time
(``deploy/charts/infergate``); docs/kubernetes.md has the table.

Go's flag package spells a value ``--flag=value`` or ``--flag value`` and a boolean ``--flag``
(true) or ``--flag=false``; both spellings are read here.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, MutableMapping, Sequence

from infergate.errors import ConfigError

__all__ = ["REFERENCE_FLAGS", "rewrite_argv", "translate"]

_TRUE = {"true", "1", "t"}
_FALSE = {"false", "0", "f"}
_SECONDS = re.compile(r"^(\d+(?:\.\d+)?)s?$")


def _verbosity(value: str, env: MutableMapping[str, str]) -> list[str]:
    if not value.isdigit():
        raise ConfigError(f"--v: {value!r} is not a verbosity level (0, 1, 2, ...)")
    return ["--log-level", "debug" if int(value) >= 4 else "info"]  # klog's 4+ is debug detail


def _zap_level(value: str, env: MutableMapping[str, str]) -> list[str]:
    levels = {"debug": "debug", "info": "info", "warn": "warning", "warning": "warning", "error": "error"}
    level = levels.get(value.lower())
    if level is None:
        raise ConfigError(f"--zap-log-level: {value!r} is not one of debug, info, warn, error")
    return ["--log-level", level]


def _zap_encoder(value: str, env: MutableMapping[str, str]) -> list[str]:
    formats = {"json": "json", "console": "text"}
    if value.lower() not in formats:
        raise ConfigError(f"--zap-encoder: {value!r} is not one of json, console")
    return ["--log-format", formats[value.lower()]]


def _metrics_auth(value: str, env: MutableMapping[str, str]) -> list[str]:
    return ["--metrics-auth", "kubernetes" if _boolean("--metrics-endpoint-auth", value) else "disabled"]


def _drain(value: str, env: MutableMapping[str, str]) -> list[str]:
    match = _SECONDS.match(value)
    if match is None:
        raise ConfigError(f"--drain-timeout: {value!r} must be seconds, e.g. 30s")
    return ["--grace", match.group(1)]


def _tracing(value: str, env: MutableMapping[str, str]) -> list[str]:
    """On: export to the OTLP collector the environment names, else OpenTelemetry's default
    (localhost:4317), as the reference does; off: no traces even if a collector is named."""
    if _boolean("--tracing", value):
        if not (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://localhost:4317"
    else:
        env["OTEL_TRACES_EXPORTER"] = "none"
    return []


def _off_only(flag: str, why: str) -> Callable[[str, MutableMapping[str, str]], list[str]]:
    """A switch for something infergate does not have: off is nothing to do, on is refused."""

    def check(value: str, env: MutableMapping[str, str]) -> list[str]:
        if _boolean(flag, value):
            raise ConfigError(f"{flag}: {why}")
        return []

    return check


def _toggle(flag: str) -> Callable[[str, MutableMapping[str, str]], list[str]]:
    """A Go boolean infergate has as ``--flag``/``--no-flag`` (``--secure-serving=false``)."""

    def rewrite(value: str, env: MutableMapping[str, str]) -> list[str]:
        return [f"--{flag}" if _boolean(f"--{flag}", value) else f"--no-{flag}"]

    return rewrite


def _switch(flag: str) -> Callable[[str, MutableMapping[str, str]], list[str]]:
    """A Go boolean infergate has as a switch: ``=true`` is the switch, ``=false`` nothing."""

    def rewrite(value: str, env: MutableMapping[str, str]) -> list[str]:
        return [f"--{flag}"] if _boolean(f"--{flag}", value) else []

    return rewrite


def _always_on(flag: str) -> Callable[[str, MutableMapping[str, str]], list[str]]:
    """A Go boolean for what infergate always does: either value is nothing to do."""

    def check(value: str, env: MutableMapping[str, str]) -> list[str]:
        _boolean(flag, value)
        return []

    return check


def _boolean(flag: str, value: str) -> bool:
    text = value.lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{flag}: must be true or false (got {value!r})")


# name -> (takes a value: False for Go booleans, which may stand alone; translation)
REFERENCE_FLAGS: dict[str, tuple[bool, Callable[[str, MutableMapping[str, str]], list[str]]]] = {
    "v": (True, _verbosity),
    "zap-log-level": (True, _zap_level),
    "zap-encoder": (True, _zap_encoder),
    "metrics-endpoint-auth": (False, _metrics_auth),
    "drain-timeout": (True, _drain),
    "tracing": (False, _tracing),
    # every plugin infergate knows runs without being unlocked
    "allow-experimental-plugins": (False, _always_on("--allow-experimental-plugins")),
    "secure-serving": (False, _toggle("secure-serving")),
    "enable-cert-reload": (False, _switch("enable-cert-reload")),
    "emit-endpoint-scores": (False, _switch("emit-endpoint-scores")),
    "enable-grpc-stream-metrics": (False, _switch("enable-grpc-stream-metrics")),
    # infergate's ext_proc port always answers grpc.health.v1 (Envoy's checks)
    "health-checking": (False, _always_on("--health-checking")),
    "disable-endpoint-subset-filter": (False, _switch("disable-endpoint-subset-filter")),
    "ha-enable-leader-election": (
        False,
        _off_only(
            "--ha-enable-leader-election",
            "infergate's picker replicas need no leader: each watches the pool and routes on its "
            "own (docs/kubernetes.md, High availability); remove the flag",
        ),
    ),
    "enable-pprof": (False, _off_only("--enable-pprof", "infergate has no pprof endpoints; remove the flag")),
}


def translate(
    args: Sequence[str], env: MutableMapping[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """``args`` with the reference flags rewritten; also what was rewritten, one line each (for the
    log). ``env`` (default ``os.environ``) takes the tracing variables ``--tracing`` implies.

    Raises:
        ConfigError: a reference flag with a value infergate cannot honour, named.
    """
    environ: MutableMapping[str, str] = os.environ if env is None else env
    out: list[str] = []
    notes: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":  # the rest is not flags
            out.extend(args[i - 1 :])
            break
        # Go's flag package reads -name and --name alike
        name, eq, value = arg.lstrip("-").partition("=")
        spec = REFERENCE_FLAGS.get(name) if arg.startswith("-") else None
        if spec is None:
            out.append(arg)
            continue
        takes_value, rewrite = spec
        if not eq:
            if not takes_value:
                value = "true"  # a Go boolean given alone; "--flag false" is not Go's syntax
            elif i < len(args):
                value = args[i]
                i += 1
            else:
                raise ConfigError(f"--{name}: needs a value")
        before = dict(environ)
        rewritten = rewrite(value, environ)
        out.extend(rewritten)
        set_env = [f"{k}={v}" for k, v in environ.items() if before.get(k) != v]
        if rewritten != [arg] or set_env:  # infergate's own spelling is no news
            notes.append(f"--{name}={value} → {' '.join(rewritten + set_env) or 'nothing to do'}")
    return out, notes


def rewrite_argv(argv: list[str]) -> None:
    """``infergate epp``'s command line in the reference's spelling rewritten in place into
    infergate's, what was rewritten said on stderr; a value infergate cannot honour is an
    ``error:`` line and exit code 2 (the CLI's usage errors look the same)."""
    if len(argv) < 2 or argv[1] != "epp":
        return
    try:
        args, notes = translate(argv[2:])
    except ConfigError as exc:
        print(f"error: infergate epp: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    argv[2:] = args
    if notes:
        print(f"infergate epp: reference flags mapped: {'; '.join(notes)}", file=sys.stderr)
