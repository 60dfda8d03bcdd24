"""Request tracing with OpenTelemetry: one trace per request, a span per phase the gateway owns.

Metrics say how long requests take; a trace says where one request spent its time: ``parse``
(body to request), ``admission`` (model rewrite, objective, limits), ``queue`` (waiting in flow
control), ``tokenize`` (the model server rendering the prompt, with a ``token-producer``),
``burst`` (the ``burst-prefix-cache-producer``'s batch window), ``schedule`` (the scheduling
cycle) and ``upstream`` (from the pick to the last response byte), all under one
``infergate.request`` span that carries the request id (``infergate.request_id``, the
``x-request-id`` sent to the model server) so a trace can be found from a log line.

Tracing is optional (``pip install 'infergate[otel]'``) and off unless the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set, in which case
spans are batched to that OTLP/gRPC collector; the other ``OTEL_*`` variables (service name,
resource attributes, sampler, headers) apply as the OpenTelemetry SDK defines them, and
``OTEL_TRACES_EXPORTER`` may be ``otlp`` (the default) or ``none`` (off); any other exporter is an
error naming it, since only OTLP is wired. Set without the extra installed, it
is an error naming the extra, not silently nothing. This module imports nothing from infergate but
its errors, and imports OpenTelemetry only when tracing is on.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from infergate.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

__all__ = ["NULL_TRACE", "RequestTrace", "RequestTracer", "tracer_from_env"]

REQUEST_ID = "infergate.request_id"
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


# nullcontext keeps no state between uses: one serves every phase of every untraced request.
_NO_SPAN: contextlib.AbstractContextManager[None] = contextlib.nullcontext()


class RequestTrace:
    """The spans of one request. The base class records nothing (tracing off)."""

    def phase(self, name: str) -> contextlib.AbstractContextManager[None]:
        """A child span around one phase (``parse``, ``admission``, ``queue``, ``schedule``)."""
        return _NO_SPAN

    def set(self, **attributes: str | int | float) -> None:
        """Attributes of the request span (model, priority, endpoint...)."""

    def start_upstream(self, endpoint: str) -> None:
        """The request leaves for ``endpoint``: the ``upstream`` span starts."""

    def end(self, status: int | None, error: str | None = None) -> None:
        """The last byte went out (or the request failed): every open span ends."""


NULL_TRACE = RequestTrace()


class _OtelTrace(RequestTrace):
    __slots__ = ("_request_id", "_root", "_tracer", "_upstream")

    def __init__(self, tracer: Tracer, request_id: str, path: str) -> None:
        self._tracer = tracer
        self._request_id = request_id
        self._root: Span = tracer.start_span(
            "infergate.request", attributes={REQUEST_ID: request_id, "url.path": path}
        )
        self._upstream: Span | None = None

    def _child(self, name: str, attributes: Mapping[str, str | int | float] | None = None) -> Span:
        from opentelemetry.trace import set_span_in_context

        attrs = {REQUEST_ID: self._request_id, **(attributes or {})}
        return self._tracer.start_span(name, context=set_span_in_context(self._root), attributes=attrs)

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        span = self._child(name)
        try:
            yield
        except BaseException as exc:
            span.record_exception(exc)
            _set_error(span, str(exc))
            raise
        finally:
            span.end()

    def phase(self, name: str) -> contextlib.AbstractContextManager[None]:
        return self._phase(name)

    def set(self, **attributes: str | int | float) -> None:
        self._root.set_attributes({f"infergate.{k}": v for k, v in attributes.items()})

    def start_upstream(self, endpoint: str) -> None:
        if self._upstream is not None:  # a retry: the first attempt's span ends here
            self._upstream.end()
        self._upstream = self._child("upstream", {"infergate.endpoint": endpoint})

    def end(self, status: int | None, error: str | None = None) -> None:
        for span in (self._upstream, self._root):
            if span is None:
                continue
            if status is not None:
                span.set_attribute("http.response.status_code", status)
            if error is not None or (status is not None and status >= 500):
                _set_error(span, error or f"status {status}")
            span.end()
        self._upstream = None


def _set_error(span: Span, message: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, message))


class RequestTracer:
    """Starts a :class:`RequestTrace` per request on an OpenTelemetry tracer."""

    def __init__(self, tracer: Tracer, provider: TracerProvider | None = None) -> None:
        self._tracer = tracer
        self._provider = provider

    def start(self, request_id: str, path: str) -> RequestTrace:
        return _OtelTrace(self._tracer, request_id, path)

    def shutdown(self) -> None:
        """Export what is still batched (called when the gateway stops)."""
        if self._provider is not None:
            self._provider.shutdown()


def tracer_from_env(environ: Mapping[str, str] | None = None) -> RequestTracer | None:
    """A tracer exporting to the OTLP endpoint the environment names; None when none is named."""
    env = os.environ if environ is None else environ
    exporter = (env.get("OTEL_TRACES_EXPORTER") or "otlp").strip().lower()
    if exporter == "none" or not any(env.get(v) for v in ENDPOINT_VARS):
        return None
    if exporter != "otlp":
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER={env.get('OTEL_TRACES_EXPORTER')!r}: infergate exports traces "
            "over OTLP/gRPC only ('otlp', or 'none' to turn tracing off)"
        )
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigError(_import_problem(next(v for v in ENDPOINT_VARS if env.get(v)), exc)) from None
    resource: Any = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or "infergate"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return RequestTracer(provider.get_tracer("infergate"), provider)


def _import_problem(variable: str, exc: ImportError) -> str:
    """Why the exporter does not import. xds-protos (Envoy's API, which infergate needs) ships its
    own, older copies of ``opentelemetry/proto/``; when pip writes them after opentelemetry-proto's
    (it installs in one pass, in no order either package controls), the exporter finds modules
    without the messages it needs. Telling that apart from a missing extra saves a reinstall of the
    wrong thing."""
    if (exc.name or "").startswith("opentelemetry.proto"):
        return (
            f"{variable} is set but OpenTelemetry's OTLP exporter does not import ({exc}): "
            "xds-protos' older copies of opentelemetry/proto/ replaced opentelemetry-proto's; "
            "restore them with: pip install --force-reinstall --no-deps opentelemetry-proto"
        )
    return f"{variable} is set but OpenTelemetry is not installed: pip install 'infergate[otel]'"
