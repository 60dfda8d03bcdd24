"""The request lifecycle, independent of the data plane that calls it.

``Director.handle_request`` turns raw path/headers/body into a scheduled :class:`RequestContext`:
parse (400), resolve rewrite and objective, check the model is served (404), admit through flow
control (429/503), schedule (503) and count the request in flight on its endpoint. The response
hooks read usage, put the client's model name back and record the reference metrics. The built-in
proxy and the ext_proc server both drive this class; neither scheduling nor flow control knows who.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from infergate.errors import (
    AuthenticationError,
    ModelNotFoundError,
    NoCapacityError,
    PermissionDeniedError,
    RequestError,
    UpstreamError,
)
from infergate.requestcontrol import headers as H
from infergate.requestcontrol.access import Authenticator, Principal, RequestLimits
from infergate.requestcontrol.parsing import parse_body, rewrite_model
from infergate.requestcontrol.usage import ModelNameRewriter, SSEUsageParser, Usage, usage_from_json
from infergate.types import (
    Clock,
    Endpoint,
    InferenceRequest,
    ModelRewrite,
    MonotonicClock,
    Objective,
    SchedulingResult,
)

if TYPE_CHECKING:
    from infergate.telemetry import GatewayMetrics

__all__ = ["Director", "RequestContext", "error_code_for", "parse_subset"]

log = logging.getLogger("infergate.request")

# Non-streamed response bodies are kept (for usage) up to this size.
_MAX_BUFFERED_RESPONSE = 8 << 20


class DatastoreView(Protocol):
    """The part of the Datastore the director uses."""

    def candidates(self) -> list[Endpoint]: ...
    def endpoint(self, key: str) -> Endpoint | None: ...
    def served_models(self) -> frozenset[str]: ...
    def models(self, key: str) -> frozenset[str]: ...
    def objective(self, name: str) -> Objective | None: ...
    def objectives(self) -> list[Objective]: ...
    def rewrites(self) -> list[ModelRewrite]: ...
    def acquire(self, key: str) -> None: ...
    def release(self, key: str) -> None: ...


class SchedulerLike(Protocol):
    def schedule(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> SchedulingResult: ...


class FlowControllerLike(Protocol):
    async def admit(self, request: InferenceRequest) -> None: ...
    def with_room(self, endpoints: Sequence[Endpoint]) -> list[Endpoint]: ...


def error_code_for(exc: BaseException) -> str:
    """The reference's error code label (``inference_objective_request_error_total{error_code}``)."""
    if isinstance(exc, UpstreamError):
        return "ModelServerError"
    if isinstance(exc, RequestError):
        return {
            400: "BadRequest",
            401: "Unauthorized",
            403: "Forbidden",
            404: "NotFound",
            413: "BadRequest",
            429: "ResourceExhausted",
            503: "ServiceUnavailable",
        }.get(exc.status, "Internal")
    return "Internal"


@dataclass(kw_only=True, eq=False)
class RequestContext:
    """Everything known about one request from scheduling to the last response byte."""

    request: InferenceRequest
    path: str
    headers: Mapping[str, str]
    body: bytes
    result: SchedulingResult
    target: Endpoint
    attempts: int
    started_at: float
    status: int | None = None
    first_byte_at: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    completed: bool = False
    streaming: bool = False
    response_bytes: int = 0
    error_code: str | None = None
    subset: frozenset[str] | None = None
    """IPs of the data plane's subset hint (``x-gateway-destination-endpoint-subset``); None: whole pool."""
    tried: set[str] = field(default_factory=set)
    _held: str | None = None
    _rewriter: ModelNameRewriter | None = None
    _sse: SSEUsageParser | None = None
    _buffer: bytearray | None = None

    @property
    def request_id(self) -> str:
        return self.request.request_id


def _lower(headers: Mapping[str, str]) -> Mapping[str, str]:
    """Case-insensitive view: aiohttp's CIMultiDict already is one; plain dicts are lowered."""
    if isinstance(headers, (CIMultiDict, CIMultiDictProxy)):
        return headers
    return {k.lower(): v for k, v in headers.items()}


class _Series:
    """The per-(model, target) metric children, resolved once: ``labels()`` is costly per request."""

    __slots__ = (
        "cached",
        "duration",
        "input",
        "output",
        "request_sizes",
        "response_sizes",
        "running",
        "total",
        "tpot",
    )

    def __init__(self, m: GatewayMetrics, model: str, target: str) -> None:
        lbl = {"model_name": model, "target_model_name": target}
        self.request_sizes = m.request_sizes.labels(**lbl)
        self.duration = m.request_duration.labels(**lbl)
        self.response_sizes = m.response_sizes.labels(**lbl)
        self.input = m.input_tokens.labels(**lbl)
        self.output = m.output_tokens.labels(**lbl)
        self.tpot = m.normalized_tpot.labels(**lbl)
        self.cached = m.prompt_cached_tokens.labels(**lbl)
        self.running = m.running_requests.labels(model_name=model)
        self.total: dict[int, Any] = {}


_MAX_SERIES = 1000


def parse_subset(value: str | None) -> frozenset[str] | None:
    """The IPs of a subset hint ``ip:port,ip:port`` (``[v6]:port`` too); None when absent.

    The reference (``requestcontrol/candidates.go``) matches on IP only and ignores the port, so a
    pod listed with any of its target ports stays eligible. An empty or blank value is an empty
    subset (nothing eligible → 503), not "no hint", as the protocol says.
    """
    if value is None:
        return None
    ips: set[str] = set()
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):
            ips.add(item[1 : item.find("]")] if "]" in item else item[1:])
            continue
        host, sep, port = item.rpartition(":")
        ips.add(host if sep and port.isdigit() and host.count(":") == 0 else item)
    return frozenset(ips)


def _pick_weighted(rng: random.Random, rewrite: ModelRewrite, model: str) -> str | None:
    """First matching rule's target by weight (uniform when all weights are zero)."""
    for rule in rewrite.rules:
        if rule.match_models and model not in rule.match_models:
            continue
        if not rule.targets:
            continue
        total = sum(max(t.weight, 0) for t in rule.targets)
        if total <= 0:
            return rng.choice(rule.targets).model
        x = rng.randrange(total)
        for t in rule.targets:
            x -= max(t.weight, 0)
            if x < 0:
                return t.model
    return None


def _no_capacity(subset: frozenset[str] | None) -> NoCapacityError:
    if subset is not None:
        return NoCapacityError("no ready endpoint in the pool matches the destination endpoint subset")
    return NoCapacityError("no ready endpoint in the pool can serve the request")


class Director:
    """Parses, routes and accounts for requests; one instance per pool, owned by the event loop."""

    def __init__(
        self,
        *,
        datastore: DatastoreView,
        scheduler: SchedulerLike,
        flow: FlowControllerLike | None,
        clock: Clock | None = None,
        metrics: GatewayMetrics | None = None,
        rng: random.Random | None = None,
        max_attempts: int = 2,
        max_messages: int | None = None,
        check_models: bool = True,
        honor_subset_hint: bool = True,
        authenticator: Authenticator | None = None,
        limits: RequestLimits | None = None,
    ) -> None:
        self._ds = datastore
        self._scheduler = scheduler
        self._flow = flow
        self._clock: Clock = clock or MonotonicClock()
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._max_attempts = max(1, max_attempts)
        self._limits = limits or RequestLimits(max_messages=max_messages)
        self._auth = authenticator
        self._check_models = check_models
        self._honor_subset = honor_subset_hint
        self._series: dict[tuple[str, str], _Series] = {}

    def configure_access(
        self, *, authenticator: Authenticator | None = None, limits: RequestLimits | None = None
    ) -> None:
        """Set the API-key check and request limits after construction (the app wires them)."""
        self._auth = authenticator
        if limits is not None:
            self._limits = limits

    @property
    def limits(self) -> RequestLimits:
        return self._limits

    @property
    def auth_enabled(self) -> bool:
        return self._auth is not None

    def authenticate(self, headers: Mapping[str, str]) -> Principal | None:
        """The caller behind ``headers`` (None when authentication is off); 401 when unknown.

        Data planes call this for routes that need a valid key but no objective (``/v1/models``).
        """
        if self._auth is None:
            return None
        return self._auth.authenticate(_lower(headers))

    def _series_for(self, model: str, target: str) -> _Series | None:
        if self._metrics is None:
            return None
        key = (model, target)
        found = self._series.get(key)
        if found is None:
            if len(self._series) >= _MAX_SERIES:
                self._series.clear()
            found = self._series[key] = _Series(self._metrics, model, target)
        return found

    # ---------------------------------------------------------------- request path
    def known_models(self) -> frozenset[str]:
        """Models a request may name: served, objectives, rewrite sources/targets, adapters seen."""
        names: set[str] = set(self._ds.served_models())
        names.update(o.name for o in self._ds.objectives())
        for rw in self._ds.rewrites():
            for rule in rw.rules:
                names.update(rule.match_models)
                names.update(t.model for t in rule.targets)
        for ep in self._ds.candidates():
            names.update(ep.metrics.running_adapters)
            names.update(ep.metrics.waiting_adapters)
        return frozenset(names)

    def _rewrite(self, model: str, forced: str | None) -> str:
        target = forced or model
        for rw in self._ds.rewrites():
            chosen = _pick_weighted(self._rng, rw, target)
            if chosen is not None:
                if self._metrics is not None:
                    self._metrics.model_rewrite_decisions_total.labels(
                        model_rewrite_name=rw.name, model_name=model, target_model=chosen
                    ).inc()
                return chosen
        return target

    def _count_error(self, model: str, target: str, exc: BaseException) -> None:
        if self._metrics is not None:
            self._metrics.request_error_total.labels(
                model_name=model, target_model_name=target, error_code=error_code_for(exc)
            ).inc()

    async def handle_request(self, *, path: str, headers: Mapping[str, str], body: bytes) -> RequestContext:
        """Parse, resolve, admit and schedule one request; the endpoint is acquired on return."""
        started = self._clock.now()
        hdrs = _lower(headers)
        request_id = hdrs.get(H.REQUEST_ID) or uuid.uuid4().hex
        model = target = ""
        subset = parse_subset(hdrs.get(H.DESTINATION_ENDPOINT_SUBSET)) if self._honor_subset else None
        principal: Principal | None = None
        try:
            # Authenticate before reading the body: an unknown caller learns nothing about it.
            if self._auth is not None:
                principal = self._auth.authenticate(hdrs)
            parsed = parse_body(path, body, max_messages=self._limits.max_messages)
            model = parsed.model
            target = self._rewrite(model, H.model_name_rewrite_of(hdrs))
            # Only judge once some server has told us what it serves (a pool still starting
            # answers 503, not 404).
            served = self._ds.served_models()
            if self._check_models and served and model not in served and target not in served:
                known = self.known_models()
                if model not in known and target not in known:
                    raise ModelNotFoundError(f"The model `{model}` does not exist.", param="model")
            objective = self._resolve_objective(H.objective_of(hdrs), model, target)
            # The name access and limits are judged by: the objective, else the requested model.
            scope = objective.name if objective is not None else model
            if principal is not None and not principal.allows(scope):
                raise PermissionDeniedError(
                    f"this API key may not use '{scope}'", param="model", code="permission_denied"
                )
            self._limits.check_max_tokens(
                parsed.max_tokens,
                scope,
                param="max_completion_tokens"
                if parsed.data.get("max_completion_tokens") is not None
                else "max_tokens",
            )
            request = InferenceRequest(
                request_id=request_id,
                model=model,
                target_model=target,
                api=parsed.api,
                objective=objective.name if objective else None,
                priority=objective.priority if objective else 0,
                fairness_id=H.fairness_id_of(hdrs),
                prompt=parsed.prompt,
                stream=parsed.stream,
                max_tokens=parsed.max_tokens,
                body_size=len(body),
                arrived_at=started,
            )
            if self._flow is not None:
                if not self._eligible(subset, ()):  # nothing to wait for: answer now, do not queue
                    raise _no_capacity(subset)
                await self._flow.admit(request)
            result = self._schedule(request, (), subset)
        except RequestError as exc:
            if isinstance(exc, (ModelNotFoundError, AuthenticationError)):
                # client-chosen names must not create series
                self._count_error("unknown", "unknown", exc)
            else:
                self._count_error(model, target, exc)
            log.info(
                "request rejected request_id=%s path=%s model=%s status=%d error=%s",
                request_id,
                path,
                model or "-",
                exc.status,
                exc.message,
            )
            raise
        upstream_body = body if target == model else rewrite_model(parsed, target)
        ctx = RequestContext(
            request=request,
            path=path,
            headers=headers,
            body=upstream_body,
            result=result,
            target=result.primary,
            attempts=1,
            started_at=started,
            subset=subset,
        )
        self._hold(ctx, result.primary)
        if target != model:
            ctx._rewriter = ModelNameRewriter(target, model)
        series = self._series_for(model, target)
        if series is not None and self._metrics is not None:
            total = series.total.get(request.priority)
            if total is None:
                total = series.total[request.priority] = self._metrics.request_total.labels(
                    model_name=model, target_model_name=target, priority=str(request.priority)
                )
            total.inc()
            series.request_sizes.observe(len(body))
            series.running.inc()
        return ctx

    def _resolve_objective(self, header: str | None, model: str, target: str) -> Objective | None:
        if header:
            found = self._ds.objective(header)
            if found is not None:
                return found
        return self._ds.objective(model) or (self._ds.objective(target) if target != model else None)

    def _eligible(self, subset: frozenset[str] | None, exclude: Sequence[str]) -> list[Endpoint]:
        """Ready endpoints not excluded and, with a subset hint, whose IP the hint lists."""
        return [
            c
            for c in self._ds.candidates()
            if c.key not in exclude and (subset is None or c.meta.address in subset)
        ]

    def _schedule(
        self, request: InferenceRequest, exclude: Sequence[str], subset: frozenset[str] | None = None
    ) -> SchedulingResult:
        candidates = self._eligible(subset, exclude)
        if not candidates:
            raise _no_capacity(subset)
        # Endpoints that list the target model in /v1/models (e.g. hold the LoRA adapter) are the
        # only ones that can answer it; when none lists it (not scraped yet) all may try.
        serving = [c for c in candidates if request.target_model in self._ds.models(c.key)] or candidates
        held_back: list[Endpoint] = []
        if self._flow is not None:
            # with queueing on, only endpoints that have room (unless none has): the gateway's
            # priority order, not a full replica's own queue, decides who waits
            roomy = self._flow.with_room(serving)
            if len(roomy) < len(serving):
                keys = {e.key for e in roomy}
                held_back = [e for e in serving if e.key not in keys]
                serving = roomy
        result = self._scheduler.schedule(request, serving)
        if not result.targets:
            raise NoCapacityError("failed to find a target endpoint for the request")
        if held_back:
            # full endpoints stay last-resort fallbacks: a retry there beats no retry at all
            result = replace(result, targets=result.targets + tuple(held_back))
        return result

    def _hold(self, ctx: RequestContext, target: Endpoint) -> None:
        ctx.target = target
        ctx.tried.add(target.key)
        self._ds.acquire(target.key)
        ctx._held = target.key

    def _drop(self, ctx: RequestContext) -> None:
        if ctx._held is not None:
            self._ds.release(ctx._held)
            ctx._held = None

    def retry_target(self, ctx: RequestContext) -> Endpoint | None:
        """Move ``ctx`` to the next-best endpoint after a failure before the first byte.

        Tries the scheduler's fallbacks first (still ready), then a fresh pick among the
        candidates not tried yet. Returns None when attempts are exhausted or nothing is left.
        """
        if ctx.completed or ctx.first_byte_at is not None or ctx.attempts >= self._max_attempts:
            return None
        ready = {c.key: c for c in self._eligible(ctx.subset, ())}
        nxt: Endpoint | None = None
        for ep in ctx.result.targets:
            if ep.key not in ctx.tried and ep.key in ready:
                nxt = ready[ep.key]
                break
        if nxt is None:
            try:
                nxt = self._schedule(ctx.request, tuple(ctx.tried), ctx.subset).primary
            except RequestError:
                return None
        self._drop(ctx)
        ctx.attempts += 1
        self._hold(ctx, nxt)
        log.info("request retry request_id=%s attempt=%d endpoint=%s", ctx.request_id, ctx.attempts, nxt.key)
        return nxt

    # ---------------------------------------------------------------- response path
    def handle_response_headers(self, ctx: RequestContext, status: int, headers: Mapping[str, str]) -> None:
        """Note status and content type; from here on the request is no longer retryable."""
        ctx.status = status
        if ctx.first_byte_at is None:
            ctx.first_byte_at = self._clock.now()
        ctype = ""
        for k, v in headers.items():
            if k.lower() == "content-type":
                ctype = v.lower()
                break
        ctx.streaming = "text/event-stream" in ctype
        if ctx.streaming:
            ctx._sse = SSEUsageParser()
        elif "json" in ctype:
            ctx._buffer = bytearray()

    def handle_response_chunk(self, ctx: RequestContext, chunk: bytes, *, end_of_stream: bool) -> bytes:
        """Read usage from the chunk and return it with the client's model name put back."""
        ctx.response_bytes += len(chunk)
        if ctx._sse is not None:
            ctx._sse.feed(chunk)
            if end_of_stream:
                ctx._sse.close()
                self._take_usage(ctx, ctx._sse.usage)
        elif ctx._buffer is not None:
            if len(ctx._buffer) + len(chunk) <= _MAX_BUFFERED_RESPONSE:
                ctx._buffer += chunk
            else:
                ctx._buffer = None
            if end_of_stream and ctx._buffer is not None:
                self._take_usage(ctx, usage_from_json(bytes(ctx._buffer)))
                ctx._buffer = None
        if ctx._rewriter is not None:
            return ctx._rewriter.feed(chunk, end_of_stream=end_of_stream)
        return chunk

    @staticmethod
    def _take_usage(ctx: RequestContext, usage: Usage | None) -> None:
        if usage is None:
            return
        ctx.prompt_tokens = usage.prompt_tokens
        ctx.completion_tokens = usage.completion_tokens
        ctx.cached_tokens = usage.cached_tokens

    def handle_response_complete(self, ctx: RequestContext, *, error: BaseException | None = None) -> None:
        """Release the endpoint and record metrics and the access log line. Idempotent."""
        if ctx.completed:
            return
        ctx.completed = True
        self._drop(ctx)
        if ctx._sse is not None and ctx.prompt_tokens is None:
            ctx._sse.close()
            self._take_usage(ctx, ctx._sse.usage)
        now = self._clock.now()
        duration = max(0.0, now - ctx.started_at)
        req = ctx.request
        failed = error is not None or (ctx.status is not None and ctx.status >= 400)
        if error is not None:
            ctx.error_code = error_code_for(error)
        elif failed:
            ctx.error_code = "ModelServerError"
        series = self._series_for(req.model, req.target_model)
        if series is not None and self._metrics is not None:
            series.running.dec()
            if failed:
                self._metrics.request_error_total.labels(
                    model_name=req.model,
                    target_model_name=req.target_model,
                    error_code=ctx.error_code or "Internal",
                ).inc()
            else:
                series.duration.observe(duration)
                series.response_sizes.observe(ctx.response_bytes)
                if ctx.prompt_tokens is not None:
                    series.input.observe(ctx.prompt_tokens)
                if ctx.completion_tokens is not None:
                    series.output.observe(ctx.completion_tokens)
                    if ctx.completion_tokens > 0:
                        series.tpot.observe(duration / ctx.completion_tokens)
                if ctx.cached_tokens is not None:
                    series.cached.observe(ctx.cached_tokens)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "request done request_id=%s model=%s target_model=%s priority=%d endpoint=%s attempts=%d "
                "status=%s duration_ms=%.1f ttfb_ms=%s prompt_tokens=%s completion_tokens=%s error=%s",
                req.request_id,
                req.model,
                req.target_model,
                req.priority,
                ctx.target.key,
                ctx.attempts,
                ctx.status,
                duration * 1000,
                f"{(ctx.first_byte_at - ctx.started_at) * 1000:.1f}" if ctx.first_byte_at else "-",
                ctx.prompt_tokens,
                ctx.completion_tokens,
                ctx.error_code or "-",
            )
