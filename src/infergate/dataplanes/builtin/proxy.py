"""The built-in data plane: a reverse proxy driven by the request-control Director.

It owns the HTTP side only: route matching (HTTPRoute path prefixes), body limits, header hygiene
(hop-by-hop and client-sent routing headers are dropped, never obeyed), the pooled upstream
session, retries before the first response byte, chunk-by-chunk streaming with backpressure, and
OpenAI-shaped error bodies. Which endpoint to use, and all accounting, is the Director's job.

It also withdraws requests from endpoints that go down: the scraper declares an endpoint down
after ``evict_after_failed_probes`` failed health probes in a row (:meth:`ProxyServer.endpoint_down`),
and a datastore listener sees endpoints removed from the pool. One exchange that has not sent a
byte to its client yet is retried elsewhere like a connection error; one already relaying is cut
as soon as its upstream stays silent for the eviction window (``evicted_idle_timeout``, or
``evicted_idle_factor`` times the stream's longest gap so far), and ends like any mid-stream
failure, while a replica that is merely slow to answer its probe keeps streaming.

Retry budget: a request is retried at most ``retries`` times (1), and never once two endpoints
went down while serving it - such a request is likely what stalls them (a "poison" request). It is
failed with ``code: retry_refused`` and counted in ``infergate_request_retry_refused_total``.
Client-visible error messages never name a backend address; the logs do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from infergate.config.settings import Settings
from infergate.errors import (
    BadRequestError,
    ClientDisconnectedError,
    InternalError,
    RequestError,
    RequestTimeoutError,
    RequestTooLargeError,
    UpstreamError,
    UpstreamTimeoutError,
)
from infergate.net.http1_client import (
    Exchange,
    UpstreamAborted,
    UpstreamConnectionError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
)
from infergate.requestcontrol import headers as H
from infergate.requestcontrol.access import (
    MethodNotAllowedError,
    PathNotFoundError,
    Route,
    classify_request,
    model_entry,
    requested_model_id,
)
from infergate.requestcontrol.director import Director, RequestContext
from infergate.servers.http1 import BodyTooLarge, Http1Server, HttpRequest, MalformedBody
from infergate.servers.http1_response import Response
from infergate.servers.listener import LimitedListener, client_connection_budget
from infergate.telemetry import GatewayMetrics
from infergate.types import Endpoint

__all__ = ["ProxyOptions", "ProxyServer", "error_response"]

log = logging.getLogger("infergate.proxy")

# aiohttp's request headers are already case-insensitive: the Director reads them without a copy.
H.CaseInsensitiveHeaders.register(CIMultiDict)
H.CaseInsensitiveHeaders.register(CIMultiDictProxy)

# Non-streamed upstream bodies up to this size are read whole and answered in one write.
_BUFFER_LIMIT = 1 << 20
# A request is never retried again once this many endpoints went down while serving it.
_MAX_STRIKES = 2
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyOptions:
    """Limits and timeouts of the built-in proxy (built from the settings by :meth:`from_settings`)."""

    route_prefixes: tuple[str, ...] = ("/",)
    max_body_bytes: int = 8 << 20
    max_header_bytes: int = 16 << 10
    connect_timeout: float = 5.0
    read_timeout: float = 300.0
    keepalive_timeout: float = 75.0
    body_timeout: float = 75.0
    """A client that has sent its headers gets this long to send the whole body, then 408."""
    shutdown_grace: float = 10.0
    served_header: bool = False
    models_timeout: float = 1.0
    max_connections_per_endpoint: int = 256
    stream_idle_timeout: float = 60.0
    """Once the upstream's response head arrived, a body that gets no byte for this long fails
    like a broken connection (SSE error event, or a cut plain body)."""
    evicted_idle_timeout: float = 1.0
    """A response already relaying when its endpoint goes down is cut after this long without a
    byte (or ``evicted_idle_factor`` times the stream's longest gap so far, if longer); 0 cuts it
    at once. Exchanges that sent nothing to the client are always withdrawn at once and retried."""
    evicted_idle_factor: float = 4.0
    max_client_connections: int = 10000
    """Client connections open at once; more are closed at accept (the admin port has its own)."""

    @classmethod
    def from_settings(cls, settings: Settings, *, route_prefixes: Sequence[str] = ("/",)) -> ProxyOptions:
        """The ``proxy``, ``limits`` and ``listeners`` settings the built-in proxy reads."""
        p, lim, lis = settings.proxy, settings.limits, settings.listeners
        return cls(
            route_prefixes=tuple(route_prefixes),
            max_body_bytes=lim.max_body_bytes,
            max_header_bytes=lim.max_header_bytes,
            connect_timeout=p.connect_timeout,
            read_timeout=min(p.request_timeout, p.first_byte_timeout or p.request_timeout),
            keepalive_timeout=lis.idle_timeout,
            body_timeout=lis.idle_timeout,
            shutdown_grace=p.shutdown_grace,
            served_header=p.served_header,
            max_connections_per_endpoint=p.max_connections_per_endpoint,
            stream_idle_timeout=p.stream_idle_timeout,
            evicted_idle_timeout=p.evicted_idle_timeout,
            evicted_idle_factor=p.evicted_idle_factor,
            max_client_connections=client_connection_budget(
                lis.max_client_connections, reserved=lis.admin_max_connections
            ),
        )


class EndpointSource(Protocol):
    def endpoints(self) -> list[Endpoint]: ...
    def endpoint(self, key: str) -> Endpoint | None: ...
    def served_models(self) -> frozenset[str]: ...
    def add_listener(self, fn: Callable[[], None], *, in_flight: bool = True) -> Callable[[], None]: ...
    @property
    def membership_version(self) -> int: ...


def error_response(exc: RequestError) -> Response:
    """An OpenAI-shaped error body; 429/503 carry Retry-After when the error knows one."""
    headers: dict[str, str] = dict(exc.headers)
    if isinstance(exc, MethodNotAllowedError):
        headers["Allow"] = exc.allow
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    elif exc.status == 429:
        headers["Retry-After"] = "1"
    return Response(exc.status, json.dumps(exc.to_openai()).encode(), headers.items(), content_type=_JSON)


class _ClientGone(Exception):
    """Writing to the client failed: its connection is closed."""


def _sse_error(exc: RequestError) -> bytes:
    return b"data: " + json.dumps(exc.to_openai()).encode() + b"\n\ndata: [DONE]\n\n"


class ProxyServer:
    """One listener forwarding OpenAI requests to the pool chosen by the Director."""

    def __init__(
        self,
        director: Director,
        endpoints: EndpointSource,
        options: ProxyOptions | None = None,
        *,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._director = director
        self._metrics = metrics
        self._endpoints = endpoints
        self._opts = options or ProxyOptions()
        self._session: aiohttp.ClientSession | None = None
        self._http: Http1Server | None = None
        self._listener: LimitedListener | None = None
        self._port = 0
        self._in_flight = 0
        self.draining = False
        self._upstream: UpstreamPool | None = None
        # endpoint key -> exchanges in flight there; emptied sets are removed
        self._flights: dict[str, set[Exchange]] = {}
        self._membership_seen = -1
        self._unsubscribe: Callable[[], None] | None = None
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self._opts.connect_timeout,
            sock_connect=self._opts.connect_timeout,
            sock_read=self._opts.read_timeout,
        )

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        return self._port

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def start(self, host: str, port: int, *, sock: socket.socket | None = None) -> None:
        """Bind and serve; ``port`` 0 picks a free port (see :attr:`port`); or serve on ``sock``,
        a listening socket shared with other worker processes."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0, limit_per_host=self._opts.max_connections_per_endpoint, keepalive_timeout=30.0
            ),
            auto_decompress=False,
            # one session serves every client: never store an upstream's cookies in it
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            timeout=self._timeout,
        )
        self._upstream = UpstreamPool(
            connect_timeout=self._opts.connect_timeout,
            read_timeout=self._opts.read_timeout,
            idle_timeout=self._opts.stream_idle_timeout,
            max_per_host=self._opts.max_connections_per_endpoint,
        )
        self._unsubscribe = self._endpoints.add_listener(self._on_pool_change, in_flight=False)
        self._http = Http1Server(
            self._handle,
            idle_timeout=self._opts.keepalive_timeout,
            max_field_size=self._opts.max_header_bytes,
            max_body_bytes=self._opts.max_body_bytes,
        )
        self._listener = LimitedListener(self._http, self._opts.max_client_connections, name="proxy")
        await self._listener.start(host, port, sock=sock)
        self._port = self._listener.port
        log.info("proxy listening on %s:%d", host, self._port)

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within the grace period, then close."""
        self.draining = True
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self._http is not None:
            # draining requests are still withdrawn from departed endpoints
            await self._http.shutdown(self._opts.shutdown_grace)
            self._http = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._upstream is not None:
            await self._upstream.close()
            self._upstream = None

    # ------------------------------------------------------------------ routing
    def _routed(self, path: str) -> bool:
        for prefix in self._opts.route_prefixes:
            p = prefix.rstrip("/")
            if not p or path == p or path.startswith(p + "/"):
                return True
        return False

    async def _handle(self, request: HttpRequest) -> Response | None:
        """Answer one request: a whole :class:`Response`, or None once a stream was relayed."""
        path = request.path
        try:
            if not self._routed(path):
                raise PathNotFoundError("no such path on this gateway")
            route = classify_request(request.method, path, self._director.passthrough_paths)
            if route is Route.HEALTH:
                return Response(503 if self.draining else 200, b"ok\n", content_type=_TEXT)
            # The key is checked on the headers, before one byte of the body is read, for every
            # method and body size (a bodiless POST too).
            self._director.authenticate(request.headers)
            if route is Route.MODELS:
                return await self._models(requested_model_id(path))
            body = await self._read_body(request)
        except RequestError as exc:
            return error_response(exc)
        self._in_flight += 1
        try:
            return await self._forward(request, body)
        except RequestError as exc:
            return error_response(exc)
        except Exception:  # a bug: answer 500 and keep serving
            log.exception("unexpected error while proxying %s", path)
            return error_response(InternalError("internal error in the gateway"))
        finally:
            self._in_flight -= 1

    async def _read_body(self, request: HttpRequest) -> bytes:
        limit = self._opts.max_body_bytes
        length = request.content_length
        if length is not None and length > limit:
            raise RequestTooLargeError(f"request body of {length} bytes exceeds {limit}")
        try:
            return await request.read_body(limit, self._opts.body_timeout)
        except BodyTooLarge:
            raise RequestTooLargeError(f"request body exceeds {limit} bytes") from None
        except TimeoutError:
            raise RequestTimeoutError(
                f"request body not received within {self._opts.body_timeout:g}s"
            ) from None
        except MalformedBody as exc:
            raise BadRequestError(str(exc)) from None

    # ------------------------------------------------------------------ /v1/models
    async def _models(self, model_id: str | None = None) -> Response:
        """The union of the ``/v1/models`` lists of the pool's healthy endpoints, or the entry of
        ``model_id`` in it (``GET /v1/models/{id}``, what the SDKs' ``models.retrieve`` calls)."""
        assert self._session is not None
        session = self._session
        eps = [e for e in self._endpoints.endpoints() if e.healthy]
        timeout = aiohttp.ClientTimeout(total=self._opts.models_timeout)

        async def fetch(ep: Endpoint) -> list[dict[str, object]]:
            try:
                async with session.get(f"http://{ep.key}/v1/models", timeout=timeout) as resp:
                    if resp.status != 200:
                        return []
                    data = json.loads(await resp.read())
                    items = data.get("data") if isinstance(data, dict) else None
                    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
            except (aiohttp.ClientError, TimeoutError, ValueError, OSError):
                return []

        merged: dict[str, dict[str, object]] = {}
        for items in await asyncio.gather(*(fetch(e) for e in eps)):
            for item in items:
                mid = item.get("id")
                if isinstance(mid, str):
                    merged.setdefault(mid, item)
        for name in sorted(self._endpoints.served_models()):
            merged.setdefault(name, {"id": name, "object": "model", "owned_by": "infergate"})
        if model_id is not None:
            entry = model_entry(merged, model_id)
            return Response(200, json.dumps(entry).encode(), content_type=_JSON)
        body = {"object": "list", "data": list(merged.values())}
        return Response(200, json.dumps(body).encode(), content_type=_JSON)

    # ------------------------------------------------------------------ forwarding
    def _upstream_headers(self, request: HttpRequest, ctx: RequestContext) -> list[tuple[str, str]]:
        hdrs = H.clean_request_headers(request.headers.items(), drop=("x-forwarded-for", H.REQUEST_ID))
        if "json" not in request.headers.get("Content-Type", "").lower():
            hdrs = [(k, v) for k, v in hdrs if k.lower() != "content-type"]
            hdrs.append(("Content-Type", _JSON))
        hdrs.append((H.REQUEST_ID, ctx.request_id))
        hdrs.extend(ctx.result.request_headers.items())  # P/D: x-prefiller-host-port
        peer = request.remote
        if peer:
            prior = request.headers.get("X-Forwarded-For")
            hdrs.append(("X-Forwarded-For", f"{prior}, {peer}" if prior else peer))
        return hdrs

    # ------------------------------------------------------------------ leaving rotation
    def _in_rotation(self, key: str) -> bool:
        ep = self._endpoints.endpoint(key)
        return ep is not None and ep.healthy

    def _on_pool_change(self) -> None:
        """Datastore listener (every change but in-flight counts): withdraw exchanges on removed
        endpoints.

        Metrics changes (every scrape) leave the membership version alone and return at once. An
        endpoint that only turned unhealthy keeps its exchanges until the scraper declares it down
        (:meth:`endpoint_down`, after several failed probes).
        """
        version = self._endpoints.membership_version
        if version == self._membership_seen:
            return
        self._membership_seen = version
        if not self._flights:
            return
        endpoint = self._endpoints.endpoint
        for key in [k for k in self._flights if endpoint(k) is None]:
            self.endpoint_down(key)

    def endpoint_down(self, key: str) -> None:
        """Withdraw every exchange in flight on ``key`` (scraper down listener, pool removal)."""
        for ex in self._flights.pop(key, ()):
            self._evict(ex)

    def _evict(self, ex: Exchange) -> None:
        reason = "the model server left rotation"
        log.warning("withdrawing a request from endpoint %s: it went down", ex.key)
        ex.evicted = True
        if ex.relaying:
            window = max(self._opts.evicted_idle_timeout, self._opts.evicted_idle_factor * ex.max_gap)
            ex.limit_idle(window, reason)
        else:
            ex.abort(reason)

    def _track(self, key: str) -> Exchange:
        ex = Exchange(key)
        if not self._in_rotation(key):  # departed between the pick and now
            ex.abort("the model server left rotation")
            return ex
        live = self._flights.get(key)
        if live is None:
            live = self._flights[key] = set()
        live.add(ex)
        return ex

    def _untrack(self, ex: Exchange) -> None:
        live = self._flights.get(ex.key)
        if live is not None:
            live.discard(ex)
            if not live:
                del self._flights[ex.key]

    # ------------------------------------------------------------------ forwarding
    @staticmethod
    def _bufferable(resp: UpstreamResponse) -> bool:
        """A complete small non-SSE body is read whole before anything goes to the client."""
        length = resp.content_length
        if length is None or length > _BUFFER_LIMIT:
            return False
        return "text/event-stream" not in resp.headers.get("Content-Type", "").lower()

    async def _open_upstream(
        self, request: HttpRequest, ctx: RequestContext
    ) -> tuple[UpstreamResponse, Exchange, bytes | None]:
        """Send to ctx.target; on connect errors, timeouts, withdrawal or 5xx move to the next endpoint.

        Returns the response, its exchange (still tracked: the caller untracks it) and, for a
        small complete body, that body: reading it is still before the client's first byte, so
        a failure while reading is retried too.
        """
        assert self._upstream is not None
        hdrs = self._upstream_headers(request, ctx)
        strikes = 0  # endpoints that went down while serving this request
        while True:
            key = ctx.target.key
            meta = ctx.target.meta
            failure: RequestError
            ex = self._track(key)
            try:
                resp = await self._upstream.request(
                    key, meta.address, meta.port, "POST", request.raw_path, hdrs, ctx.body, ex
                )
                if resp.status >= 500 and self._director.retry_target(ctx) is not None:
                    log.warning(
                        "endpoint %s answered %d before any byte; retrying request_id=%s",
                        key,
                        resp.status,
                        ctx.request_id,
                    )
                    resp.close()
                    self._untrack(ex)
                    continue
                if not self._bufferable(resp):
                    return resp, ex, None
                try:
                    return resp, ex, await resp.read()
                except BaseException:
                    resp.close()
                    raise
            except UpstreamTimeout as exc:
                log.warning("endpoint %s: %s request_id=%s", key, exc, ctx.request_id)
                failure = UpstreamTimeoutError("the model server did not answer in time")
            except UpstreamAborted as exc:
                strikes += ex.evicted
                log.warning("endpoint %s: %s request_id=%s", key, exc, ctx.request_id)
                failure = UpstreamError(f"{exc} before answering")
            except UpstreamConnectionError as exc:
                log.warning("endpoint %s failed: %s request_id=%s", key, exc, ctx.request_id)
                failure = UpstreamError("the model server failed before answering")
            except BaseException:
                self._untrack(ex)
                raise
            self._untrack(ex)
            if strikes >= _MAX_STRIKES:
                if self._metrics is not None:
                    self._metrics.retry_refused_total.labels(reason="endpoints_down").inc()
                log.warning(
                    "request_id=%s not retried: %d endpoints went down while serving it",
                    ctx.request_id,
                    strikes,
                )
                raise UpstreamError(
                    f"the request was not retried: {strikes} model servers went down while serving it",
                    code="retry_refused",
                )
            if self._director.retry_target(ctx) is None:
                raise failure
            log.info("retrying request_id=%s elsewhere after: %s", ctx.request_id, failure.message)

    async def _forward(self, request: HttpRequest, body: bytes) -> Response | None:
        director = self._director
        ctx = await director.handle_request(path=request.path, headers=request.headers, body=body)
        error: BaseException | None = None
        resp: UpstreamResponse | None = None
        ex: Exchange | None = None
        try:
            resp, ex, data = await self._open_upstream(request, ctx)
            director.handle_response_headers(ctx, resp.status, resp.headers)
            out_headers = CIMultiDict(H.clean_response_headers(resp.headers.items()))
            if self._opts.served_header:
                out_headers[H.DESTINATION_ENDPOINT_SERVED] = ctx.target.key
            out_headers.update(director.response_headers(ctx))
            if data is not None:
                payload = director.handle_response_chunk(ctx, data, end_of_stream=True)
                return Response(resp.status, payload, out_headers.items(), reason=resp.reason)
            ex.relaying = True
            error = await self._stream(request, ctx, resp, out_headers)
            return None
        except BaseException as exc:
            # the client went away (handler cancelled, or writing to it failed): not a gateway error
            gone = isinstance(exc, (asyncio.CancelledError, ConnectionResetError))
            error = ClientDisconnectedError("the client disconnected") if gone else exc
            raise
        finally:
            if resp is not None:
                if error is not None:
                    resp.close()
                else:
                    resp.release()
            if ex is not None:
                self._untrack(ex)
            director.handle_response_complete(ctx, error=error)

    async def _stream(
        self,
        request: HttpRequest,
        ctx: RequestContext,
        resp: UpstreamResponse,
        out_headers: CIMultiDict[str],
    ) -> RequestError | None:
        """Relay the body chunk by chunk; ``write`` waits for the client (backpressure).

        An upstream failure after the headers went out cannot become an error status any more:
        an SSE client gets an error event and a clean end, a plain body is cut (connection
        aborted) so the client cannot mistake it for a complete answer. Returns that failure.
        """
        director = self._director
        request.start_stream(resp.status, resp.reason, out_headers.items())

        async def send(data: bytes) -> None:
            try:
                await request.write(data)
            except ConnectionResetError as exc:  # "Cannot write to closing transport"
                raise _ClientGone from exc

        try:
            # read_chunk returns b"" only at the body's end; not ``async for`` over iter_chunks,
            # whose async generator the event loop tracks in a weak set (see UpstreamResponse.read)
            while chunk := await resp.read_chunk():
                data = director.handle_response_chunk(ctx, chunk, end_of_stream=False)
                if data:
                    await send(data)
            tail = director.handle_response_chunk(ctx, b"", end_of_stream=True)
            if tail:
                await send(tail)
        except _ClientGone:
            # The client left mid-answer (a benchmark client stopping at its deadline): counted as
            # ClientDisconnected, the upstream closed, and nothing more to say to anyone.
            return ClientDisconnectedError("the client disconnected")
        except (UpstreamConnectionError, UpstreamTimeout) as exc:
            failure: RequestError
            if isinstance(exc, UpstreamTimeout):
                failure = UpstreamTimeoutError("the model server stalled mid-stream")
            elif isinstance(exc, UpstreamAborted):
                failure = UpstreamError(f"{exc} mid-stream")
            else:
                failure = UpstreamError(f"the model server failed mid-stream: {type(exc).__name__}")
            log.warning("endpoint %s: %s request_id=%s", ctx.target.key, failure.message, ctx.request_id)
            if ctx.streaming:
                with contextlib.suppress(ConnectionResetError):
                    await request.write(_sse_error(failure))
                    request.end_stream()
            else:
                request.abort()
            return failure
        request.end_stream()
        return None
