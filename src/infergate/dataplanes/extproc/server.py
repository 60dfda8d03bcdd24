"""The ext_proc endpoint picker: Envoy's ``ExternalProcessor.Process`` stream driven by the Director.

This module owns the per-stream protocol state machine (which message may be answered when, in
which body mode) and the gRPC server around it (health service, TLS, graceful stop). Everything
about a request's meaning - parsing, rewrite, objective, admission, scheduling, usage, metrics - is
delegated to :class:`infergate.requestcontrol.director.Director`, the same object the built-in
proxy drives, so the two data planes cannot drift apart.

Ordering (GIE reference §1.2/§2.1, FULL_DUPLEX_STREAMED): request headers are not answered until the
body's end of stream, then the headers reply (destination, Content-Length, clear_route_cache,
``envoy.lb`` metadata) is followed by the body as streamed chunks. The request policy
(:func:`~infergate.requestcontrol.access.classify_request`, API keys) is applied to the request
headers: ``/v1/models`` and ``/health`` are answered by the picker, every other path outside the
inference API, and every request without a valid key, gets an immediate OpenAI-shaped error before
Envoy sends one body byte; a bodiless inference call goes to the Director (400). In BUFFERED
request-body mode the headers are acknowledged at once and the routing mutation rides on the body
reply. When responses are not full-duplex, the response-headers reply tells Envoy (``mode_override``)
how much of this response's body the picker needs, since every message exchanged costs a gRPC read
and write; chunks the Director left unchanged are acknowledged, not copied back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import grpc
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2

from infergate.config.settings import ListenerSettings, Settings
from infergate.dataplanes.extproc import messages as msg
from infergate.dataplanes.extproc.health import (
    EXTPROC_SERVICE,
    HEALTH_SERVICES,
    PickerHealthServicer,
    health_methods,
)
from infergate.errors import (
    ClientDisconnectedError,
    InternalError,
    RequestError,
    RequestTooLargeError,
)
from infergate.requestcontrol import headers as H
from infergate.requestcontrol.access import Route, classify_request, model_entry, requested_model_id
from infergate.servers.grpc_http2 import CallObserver, GrpcMethod, GrpcServer
from infergate.servers.tls import CertificateWatcher

if TYPE_CHECKING:
    from infergate.requestcontrol.director import Director, RequestContext
    from infergate.telemetry import GatewayMetrics

__all__ = [
    "EXTPROC_SERVICE",
    "HEALTH_SERVICES",
    "ExtProcServer",
    "ExternalProcessor",
    "PickerHealthServicer",
    "TlsSettings",
    "health_methods",
    "serve_extproc",
]

log = logging.getLogger("infergate.extproc")


_DEFAULT_MAX_RECV = 16 << 20  # above gRPC's 4 MiB: a buffered request body rides in one message
_Mode = processing_mode_pb2.ProcessingMode
_FULL_DUPLEX = _Mode.BodySendMode.FULL_DUPLEX_STREAMED
_STREAMED: int = _Mode.BodySendMode.STREAMED
_BUFFERED_PARTIAL: int = _Mode.BodySendMode.BUFFERED_PARTIAL
_NO_BODY: int = _Mode.BodySendMode.NONE
_BUFFERED_MODES = frozenset({_Mode.BodySendMode.BUFFERED, _BUFFERED_PARTIAL})
# Client-sent headers that would steer routing; dropped before the Director sees the request.
_UNTRUSTED = H.ROUTING_OUTPUTS
# the control inputs in a fixed order, so the header mutation Envoy gets is the same every run
_CONSUMED = tuple(sorted(H.CONTROL_INPUTS))


class EndpointSource(Protocol):
    """What the pool serves, for ``GET /v1/models`` answered by the picker itself."""

    def served_models(self) -> frozenset[str]: ...


@dataclass(kw_only=True)
class _Stream:
    """State of one ext_proc stream (one HTTP request through Envoy)."""

    request_mode: int = _FULL_DUPLEX
    response_mode: int = _FULL_DUPLEX
    headers: dict[str, str] = field(default_factory=dict)
    path: str = "/"
    generated_request_id: str | None = None
    subset: list[str] | None = None
    body: bytearray = field(default_factory=bytearray)
    request_done: bool = False
    ctx: RequestContext | None = None
    response_done: bool = False
    response_partial: bool = False
    """Envoy sent the first part of a BUFFERED_PARTIAL response body: the rest passes by unseen
    and the stream's end is the response's end."""


class ExternalProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """``ExternalProcessor.Process``: translate one Envoy stream to Director calls and back.

    ``max_endpoints`` is how many of the scheduler's targets (primary first, then fallbacks) go
    into ``x-gateway-destination-endpoint``. The default 1 matches the reference picker's
    ``maxNumOfEndpoints`` and is what Envoy's ORIGINAL_DST cluster understands: it rejects a
    comma-separated list. Raise it only for gateways that walk the list on retry.
    """

    def __init__(
        self,
        director: Director,
        *,
        endpoints: EndpointSource | None = None,
        rng: random.Random | None = None,
        default_request_mode: int = _FULL_DUPLEX,
        default_response_mode: int = _FULL_DUPLEX,
        max_endpoints: int = 1,
        max_body_bytes: int = 32 << 20,
        emit_scores: bool = False,
    ) -> None:
        self._director = director
        self._emit_scores = emit_scores
        self._max_body_bytes = max_body_bytes
        self._max_endpoints = max(1, max_endpoints)
        self._endpoints = endpoints
        if endpoints is None:
            log.warning("ext_proc picker has no endpoint source: GET /v1/models will list no model")
        self._rng = rng or random.Random()
        self._default_request_mode = default_request_mode
        self._default_response_mode = default_response_mode
        self.active_streams = 0

    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> None:
        """One HTTP request's stream. Uses the reader/writer API (cheaper than an async generator)."""
        st = _Stream(request_mode=self._default_request_mode, response_mode=self._default_response_mode)
        first = True
        error: BaseException | None = None
        self.active_streams += 1
        try:
            while True:
                req = await context.read()
                if req is grpc.aio.EOF:
                    break
                if first and req.HasField("protocol_config"):
                    st.request_mode = req.protocol_config.request_body_mode or st.request_mode
                    st.response_mode = req.protocol_config.response_body_mode or st.response_mode
                first = False
                replies = self._on_message(st, req)
                if replies is None:  # the request is complete: schedule it (the only await)
                    replies = await self._route(st)
                    if req.HasField("request_trailers"):
                        replies.append(msg.trailers_response(request=True))
                for reply in replies:
                    await context.write(reply)
        except asyncio.CancelledError:
            # Envoy reset the stream: its client went away (not a gateway error)
            error = ClientDisconnectedError("the client disconnected")
            raise
        except Exception as exc:
            error = exc
            log.exception("ext_proc stream failed path=%s", st.path)
            raise
        finally:
            self.active_streams -= 1
            if st.ctx is not None:
                if error is None and not st.response_done and not st.response_partial:
                    # Envoy closes the stream early when the client leaves (Envoy's own failures
                    # still pass through the response phase as a local reply)
                    error = ClientDisconnectedError("ext_proc stream ended before the response completed")
                self._director.handle_response_complete(st.ctx, error=error)

    # ------------------------------------------------------------------ dispatch
    def _on_message(self, st: _Stream, req: pb.ProcessingRequest) -> list[pb.ProcessingResponse] | None:
        """Replies to one message, or None when the request is complete and must be routed.

        Synchronous on purpose: most messages need no await, and a coroutine per message is
        measurable at thousands of messages a second. Only :meth:`_route` awaits the Director.
        """
        kind = req.WhichOneof("request")
        if kind == "response_body":
            return self._on_response_body(st, req.response_body)
        if kind == "request_body":
            return self._on_request_body(st, req.request_body)
        if kind == "request_headers":
            return self._on_request_headers(st, req)
        if kind == "response_headers":
            return self._on_response_headers(st, req.response_headers)
        if kind == "request_trailers":
            return None if not st.request_done else [msg.trailers_response(request=True)]
        if kind == "response_trailers":
            self._finish_response(st)
            return [msg.trailers_response(request=False)]
        return []

    def _on_request_headers(
        self, st: _Stream, req: pb.ProcessingRequest
    ) -> list[pb.ProcessingResponse] | None:
        raw = msg.read_headers(req.request_headers)
        st.path = raw.get(":path") or raw.get("x-original-path") or raw.get("x-forwarded-path") or "/"
        st.headers = {k: v for k, v in raw.items() if k[:1] != ":" and k not in _UNTRUSTED}
        if not st.headers.get(H.REQUEST_ID):
            st.generated_request_id = H.new_request_id()
            st.headers[H.REQUEST_ID] = st.generated_request_id
        if req.HasField("metadata_context"):
            st.subset = msg.subset_hint(req.metadata_context)
            if st.subset is not None:
                st.headers[H.DESTINATION_ENDPOINT_SUBSET] = ",".join(st.subset)
        try:
            # The request policy, on headers alone: the path must exist and the key be valid
            # before Envoy hands over one byte of the body (bodiless requests included).
            route = classify_request(raw.get(":method", "GET"), st.path, self._director.passthrough_paths)
            if route is Route.HEALTH:
                st.request_done = True
                return [msg.json_immediate_response(200, b'{"status": "ok"}')]
            self._director.authenticate(st.headers)
            if route is Route.MODELS:
                st.request_done = True
                return [msg.json_immediate_response(200, self._model_list(requested_model_id(st.path)))]
        except RequestError as exc:
            st.request_done = True
            return [msg.error_response(exc)]
        if req.request_headers.end_of_stream:
            return None  # an inference call without a body: the Director answers it (400)
        if st.request_mode in _BUFFERED_MODES:
            # Envoy waits for this answer before sending the buffered body.
            return [msg.headers_response(request=True)]
        return []

    def _on_request_body(self, st: _Stream, body: pb.HttpBody) -> list[pb.ProcessingResponse] | None:
        if st.request_done:
            return []
        data = body.body
        if data:
            st.body += data
            if len(st.body) > self._max_body_bytes:
                st.request_done = True
                st.body = bytearray()
                too_large = RequestTooLargeError(f"request body exceeds {self._max_body_bytes} bytes")
                return [msg.error_response(too_large)]
        return None if body.end_of_stream else []

    # ------------------------------------------------------------------ routing
    def _extra_headers(self, st: _Stream) -> list[tuple[str, str]]:
        return [(H.REQUEST_ID, st.generated_request_id)] if st.generated_request_id else []

    def _model_list(self, model_id: str | None = None) -> bytes:
        """``GET /v1/models`` answered by the picker: the models the pool's ready endpoints serve;
        ``GET /v1/models/{id}``: that model's entry, or OpenAI's 404."""
        names = self._endpoints.served_models() if self._endpoints is not None else frozenset()
        data = [{"id": n, "object": "model", "owned_by": "infergate"} for n in sorted(names)]
        if model_id is not None:
            return json.dumps(model_entry({str(d["id"]): d for d in data}, model_id)).encode()
        return json.dumps({"object": "list", "data": data}).encode()

    @staticmethod
    def _consumed(headers: Mapping[str, str], *, prefiller_routed: bool) -> list[str]:
        """Client headers the model server must not see, as the built-in proxy drops them: the
        control inputs the gateway consumed (objective, fairness, rewrite, SLO bounds) and a
        prefiller only the picker may name."""
        remove = [name for name in _CONSUMED if name in headers]
        if H.PREFILLER_HOST_PORT in headers and not prefiller_routed:
            remove.append(H.PREFILLER_HOST_PORT)
        return remove

    async def _route(self, st: _Stream) -> list[pb.ProcessingResponse]:
        """Hand the whole request to the Director and turn its decision into Envoy replies."""
        st.request_done = True
        body = bytes(st.body)
        st.body = bytearray()
        try:
            ctx = await self._director.handle_request(path=st.path, headers=st.headers, body=body)
        except RequestError as exc:
            return [msg.error_response(exc)]
        except Exception as exc:
            log.exception("director failed path=%s", st.path)
            return [msg.error_response(InternalError(f"internal error: {type(exc).__name__}"))]
        st.ctx = ctx
        buffered = st.request_mode in _BUFFERED_MODES
        # Envoy holds a buffered body: send it back only when the Director changed it
        changed = not buffered or ctx.body != body
        dest = msg.destination_value([t.key for t in ctx.result.targets[: self._max_endpoints]])
        routed = dict(ctx.result.request_headers)  # P/D: x-prefiller-host-port
        mutation = msg.request_route_mutation(
            dest,
            body_length=len(ctx.body) if changed else None,
            extra=[*self._extra_headers(st), *routed.items()],
            remove=self._consumed(st.headers, prefiller_routed=bool(routed)),
        )
        metadata = msg.route_metadata(dest, ctx.result.scores if self._emit_scores else None)
        if buffered:
            return [
                msg.buffered_body_response(
                    ctx.body if changed else None,
                    request=True,
                    mutation=mutation,
                    clear_route_cache=True,
                    dynamic_metadata=metadata,
                )
            ]
        head = msg.headers_response(
            request=True, mutation=mutation, clear_route_cache=True, dynamic_metadata=metadata
        )
        return [head, *msg.streamed_body_responses(ctx.body, request=True, end_of_stream=True)]

    # ------------------------------------------------------------------ response path
    def _on_response_headers(self, st: _Stream, headers: pb.HttpHeaders) -> list[pb.ProcessingResponse]:
        raw = msg.read_headers(headers)
        mutation: pb.HeaderMutation | None = None
        modes: tuple[int, int] | None = None
        ctx = st.ctx
        if ctx is not None:
            try:
                status = int(raw.get(":status", raw.get("status", "200")))
            except ValueError:
                status = 502
            self._director.handle_response_headers(ctx, status, raw)
            rewrite = ctx.request.model != ctx.request.target_model
            remove: list[str] = []
            if rewrite and "content-length" in raw:
                # The model name is put back in the body, which changes its length.
                remove.append("content-length")
            extra = self._director.response_headers(ctx)
            if remove or extra:
                mutation = pb.HeaderMutation(
                    remove_headers=remove, set_headers=[msg.header_option(k, v) for k, v in extra.items()]
                )
            if st.response_mode != _FULL_DUPLEX and not headers.end_of_stream:
                st.response_mode = self._response_body_mode(status, streaming=ctx.streaming, rewrite=rewrite)
                modes = (st.request_mode, st.response_mode)
        if headers.end_of_stream or st.response_mode == _NO_BODY:
            self._finish_response(st)
        return [msg.headers_response(request=False, mutation=mutation, body_modes=modes)]

    @staticmethod
    def _response_body_mode(status: int, *, streaming: bool, rewrite: bool) -> int:
        """How much of this response's body the picker needs, as an Envoy body mode.

        Every chunk (STREAMED) when the client's model name goes back in, or for an event stream
        (first-token time, usage at its end); one message with the whole body (BUFFERED_PARTIAL)
        for a JSON answer, whose usage is at its end; nothing for an error, which the status
        alone counts. Envoy honours it when its filter allows mode overrides and neither body
        mode is full-duplex; otherwise it sends what it is configured to, which is handled too.
        """
        if rewrite or streaming:
            return _STREAMED
        return _NO_BODY if status >= 400 else _BUFFERED_PARTIAL

    def _on_response_body(self, st: _Stream, body: pb.HttpBody) -> list[pb.ProcessingResponse]:
        eos = body.end_of_stream
        data = original = body.body
        if st.ctx is not None and not st.response_done:
            data = self._director.handle_response_chunk(st.ctx, data, end_of_stream=eos)
        if eos:
            self._finish_response(st)
        elif st.response_mode == _BUFFERED_PARTIAL:
            st.response_partial = True  # Envoy's buffer filled: the rest is not sent to the picker
        if st.response_mode != _FULL_DUPLEX:
            # STREAMED/BUFFERED: a chunk is acknowledged as is, or replaced when it changed.
            return [msg.buffered_body_response(None if data is original else data, request=False)]
        if not data and not eos:
            return []  # held back by the director (e.g. a model name split across chunks)
        return msg.streamed_body_responses(data, request=False, end_of_stream=eos)

    def _finish_response(self, st: _Stream) -> None:
        if st.ctx is not None and not st.response_done:
            st.response_done = True
            self._director.handle_response_complete(st.ctx)


@dataclass(frozen=True, kw_only=True)
class TlsSettings:
    """Serve TLS with ``pair`` (certificate, key PEM), else ``cert_path/tls.crt`` + ``tls.key``,
    else a self-signed pair made at start."""

    cert_path: Path | None = None
    common_name: str = "infergate-epp"
    pair: tuple[bytes, bytes] | None = None
    reload: bool = False
    """Watch ``cert_path`` and load the pair again when its files change."""
    reload_interval: float = 5.0
    min_version: str | None = None
    cipher_suites: tuple[str, ...] = ()

    @classmethod
    def from_listeners(cls, lis: ListenerSettings, *, pair: tuple[bytes, bytes] | None = None) -> TlsSettings:
        """The ``listeners`` settings' TLS (``pair``: already loaded by the gateway process)."""
        return cls(
            cert_path=lis.cert_path,
            pair=pair,
            reload=lis.cert_reload,
            min_version=lis.tls_min_version,
            cipher_suites=lis.tls_cipher_suites,
        )


class ExtProcServer:
    """A started-on-demand gRPC server (infergate's own, ``servers/grpc_http2.py``) hosting the
    ExternalProcessor and the health service."""

    def __init__(
        self,
        processor: ExternalProcessor,
        host: str,
        port: int,
        *,
        health_servicer: grpc_health.aio.HealthServicer | None = None,
        tls: TlsSettings | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.processor = processor
        self.reuse_port = reuse_port
        """Bind with SO_REUSEPORT: several worker processes share the port (``proxy.workers``);
        off otherwise, so a second picker on a taken port fails instead of sharing it."""
        self.host = host
        self._requested_port = port
        self.port = port
        self.health = health_servicer or PickerHealthServicer()
        self.tls = tls
        self.certificate_pem: bytes | None = None
        self.cert_watcher: CertificateWatcher | None = None
        self._cert_watch: asyncio.Task[None] | None = None
        self._server: GrpcServer | None = None
        self.max_recv_bytes = _DEFAULT_MAX_RECV
        """Largest message taken from Envoy (a buffered body rides in one); larger: RESOURCE_EXHAUSTED."""
        self.max_send_bytes = 0
        """Largest message sent to Envoy (0: no limit)."""
        self.stream_observer: CallObserver | None = None
        """Told of every ``Process`` stream's start and end (``--enable-grpc-stream-metrics``)."""

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        director: Director,
        *,
        host: str,
        port: int,
        tls: TlsSettings | bool | None,
        health: grpc_health.aio.HealthServicer | None = None,
        endpoints: EndpointSource | None = None,
        rng: random.Random | None = None,
        reuse_port: bool = False,
        metrics: GatewayMetrics | None = None,
    ) -> ExtProcServer:
        """The picker's server buffering at most ``limits.max_body_bytes`` per request, with the
        ``listeners`` settings' gRPC message limits and stream metrics (into ``metrics``)."""
        server = serve_extproc(
            director,
            host,
            port,
            health=health,
            endpoints=endpoints,
            tls=tls,
            rng=rng,
            max_body_bytes=settings.limits.max_body_bytes,
            reuse_port=reuse_port,
            emit_scores=settings.emit_endpoint_scores,
        )
        lis = settings.listeners
        server.max_recv_bytes = lis.grpc_max_recv_msg_size or _DEFAULT_MAX_RECV
        server.max_send_bytes = lis.grpc_max_send_msg_size
        if lis.grpc_stream_metrics and metrics is not None:
            server.stream_observer = metrics.extproc_streams()
        return server

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind, start serving and report SERVING for every health name."""
        context = None
        if self.tls is not None:
            from infergate.servers.tls import load_or_create_pair, server_context

            cert, key = self.tls.pair or load_or_create_pair(
                self.tls.cert_path, common_name=self.tls.common_name, host=self.host
            )
            self.certificate_pem = cert
            context = server_context(
                cert, key, min_version=self.tls.min_version, cipher_suites=self.tls.cipher_suites
            )
            if self.tls.reload and self.tls.cert_path is not None:
                self.cert_watcher = CertificateWatcher(
                    context, self.tls.cert_path, host=self.host, interval=self.tls.reload_interval
                )
                self._cert_watch = asyncio.create_task(self.cert_watcher.run(), name="picker-cert-reload")
        methods = {
            f"/{EXTPROC_SERVICE}/Process": GrpcMethod(
                self.processor.Process,
                pb.ProcessingRequest.FromString,
                pb.ProcessingResponse.SerializeToString,
                client_streaming=True,
                observer=self.stream_observer,
            ),
            **health_methods(self.health),
        }
        server = GrpcServer(
            methods,
            max_message_bytes=self.max_recv_bytes,
            max_send_bytes=self.max_send_bytes,
            ssl_context=context,
        )
        self.port = await server.start(self.host, self._requested_port, reuse_port=self.reuse_port)
        self._server = server
        await self.set_serving(True)
        log.info("ext_proc picker listening on %s tls=%s", self.address, self.tls is not None)

    async def set_serving(self, serving: bool) -> None:
        """Flip every health name; the app sets NOT_SERVING while draining."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in HEALTH_SERVICES:
            await self.health.set(name, status)

    async def stop(self, grace: float | None = 5.0) -> None:
        """Report NOT_SERVING, let open streams finish for ``grace`` seconds, then close."""
        if self._cert_watch is not None:
            self._cert_watch.cancel()
            await asyncio.gather(self._cert_watch, return_exceptions=True)
            self._cert_watch = None
        server, self._server = self._server, None
        if server is None:
            return
        await self.health.enter_graceful_shutdown()
        await server.stop(grace)

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


def serve_extproc(
    director: Director,
    host: str = "0.0.0.0",
    port: int = 9002,
    *,
    health: grpc_health.aio.HealthServicer | None = None,
    endpoints: EndpointSource | None = None,
    tls: TlsSettings | bool | None = None,
    rng: random.Random | None = None,
    max_endpoints: int = 1,
    max_body_bytes: int = 32 << 20,
    reuse_port: bool = False,
    emit_scores: bool = False,
) -> ExtProcServer:
    """Build (not start) the picker's gRPC server; ``await server.start()`` binds it.

    ``endpoints`` (normally the Datastore) answers bodiless requests; ``tls=True`` serves a
    self-signed certificate, a :class:`TlsSettings` may point at ``tls.crt``/``tls.key``.
    ``max_body_bytes`` bounds what is buffered per request (413 above, the ``limits.max_body_bytes`` setting).
    """
    settings = TlsSettings() if tls is True else (tls or None)
    processor = ExternalProcessor(
        director,
        endpoints=endpoints,
        rng=rng,
        max_endpoints=max_endpoints,
        max_body_bytes=max_body_bytes,
        emit_scores=emit_scores,
    )
    return ExtProcServer(processor, host, port, health_servicer=health, tls=settings, reuse_port=reuse_port)
