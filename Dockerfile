# syntax=docker/dockerfile:1
# The infergate endpoint picker image: `infergate epp` as a non-root user.
#
#   docker build -t infergate:dev .
#   docker run --rm infergate:dev --help
#
# Stage 1 builds a wheel of the package and installs it (with its runtime dependencies only)
# into a virtualenv; stage 2 copies that virtualenv onto a clean python:3.11-slim, so no build
# tools, sources or tests end up in the image.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY scripts/restore-otel-protos.sh ./scripts/
# With the [otel] extra, so that the chart's inferenceExtension.tracing (OTEL_* variables) works;
# the script keeps OpenTelemetry's protobuf modules over xds-protos' older copies of them.
RUN python -m venv /opt/infergate \
 && /opt/infergate/bin/pip install --upgrade pip \
 && /opt/infergate/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/infergate/bin/pip install "$(ls /wheels/*.whl)[otel]" \
 && sh scripts/restore-otel-protos.sh /opt/infergate/bin/python

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="infergate" \
      org.opencontainers.image.description="infergate endpoint picker (Envoy ext_proc) for InferencePools" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/infergate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 65532 infergate \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin infergate
COPY --from=build /opt/infergate /opt/infergate
USER 65532:65532
WORKDIR /tmp
# ext_proc gRPC, gRPC health, Prometheus /metrics
EXPOSE 9002 9003 9090
ENTRYPOINT ["infergate", "epp"]
