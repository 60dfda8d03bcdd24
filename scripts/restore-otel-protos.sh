#!/bin/sh
# Usage: restore-otel-protos.sh PYTHON
#
# xds-protos (Envoy's API, a dependency of infergate) ships its own, older copies of the
# opentelemetry/proto/ modules, and pip writes whichever package it installs last over the other's
# files. When xds-protos' copies win, OpenTelemetry's OTLP exporter (the [otel] extra) fails to
# import and tracing cannot start. infergate imports none of Envoy's OpenTelemetry messages, so
# opentelemetry-proto's files are the ones to keep: reinstall that package, same version, alone.
# Does nothing when opentelemetry-proto is not installed (no [otel] extra).
set -eu
PY=${1:?usage: restore-otel-protos.sh PYTHON}
version=$("$PY" -c 'import importlib.metadata as m
try:
    print(m.version("opentelemetry-proto"))
except m.PackageNotFoundError:
    pass')
[ -n "$version" ] || exit 0
"$PY" -m pip install --quiet --no-deps --force-reinstall "opentelemetry-proto==$version"
