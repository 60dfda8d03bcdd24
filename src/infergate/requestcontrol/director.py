"""The request lifecycle, independent of the data plane that calls it.

``Director.handle_request`` turns raw path/headers/body into a scheduled :class:`RequestContext`:
authenticate (401), resolve through the synchronous :class:`~infergate.requestcontrol.core.RequestCore`
(parse 400, rewrite, served model 404, objective, limits, the config's admitters 429), wait in flow
control (429/503), schedule through the core (503) and count the request in flight on its endpoint.
The response hooks read usage, put the client's model name back and record the reference metrics.
The built-in proxy and the ext_proc server both drive this class; neither scheduling nor flow
control knows who.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, cast

from infergate.config.settings import Settings
from infergate.errors import AuthenticationError, ModelNotFoundError, RequestError
from infergate.requestcontrol import headers as H
from infergate.requestcontrol.access import (
    Authenticator,
    Principal,
    RequestLimits,
    check_control_headers,
    validate_control_header_mode,
)
from infergate.requestcontrol.context import (
    BurstStageLike,
    FlowControllerLike,
    ProgramTracker,
    RequestContext,
    RequestSeries,
    TokenProducerLike,
    error_code_for,
)
from infergate.requestcontrol.core import (
    DatastoreView,
    RequestCore,
    SchedulerLike,
    no_capacity,
    parse_subset,
)
from infergate.requestcontrol.usage import (
    TPOT_REPORT_TOKENS,
    ModelNameRewriter,
    SSEUsageParser,
    Usage,
    events_before_tokens,
    one_answer,
    usage_from_json,
)
from infergate.tracing import NULL_TRACE, RequestTracer
from infergate.types import Clock, Endpoint, InferenceRequest, MonotonicClock, SchedulingResult

if TYPE_CHECKING:
    from infergate.telemetry import GatewayMetrics
    from infergate.telemetry.inflight import InFlightMetrics

__all__ = ["Director", "RequestContext", "error_code_for", "parse_subset"]

log = logging.getLogger("infergate.request")

# Prompt bytes per token when estimating a prompt's tokens (no tokenizer on the request path).
CHARS_PER_TOKEN = 4

# Non-streamed response bodies are kept (for usage) up to this size.
_MAX_BUFFERED_RESPONSE = 8 << 20


_MAX_SERIES = 1000


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
        self._flow = flow
        self._programs = cast("ProgramTracker", flow) if getattr(flow, "tracks_programs", False) else None
        self._clock: Clock = clock or MonotonicClock()
        self._metrics = metrics
        self._max_attempts = max(1, max_attempts)
        self._auth = authenticator
        self._control_headers = "auto"
        self._core = RequestCore(
            datastore=datastore,
            scheduler=scheduler,
            rng=rng,
            metrics=metrics,
            limits=limits or RequestLimits(max_messages=max_messages),
            check_models=check_models,
        )
        self._honor_subset = honor_subset_hint
        self._series: dict[tuple[str, str, str, int], RequestSeries] = {}
        self._response_hook = getattr(scheduler, "response_headers", None)
        self._tracer: RequestTracer | None = None
        self._tokens: TokenProducerLike | None = None
        self._burst: BurstStageLike | None = None
        self._inflight: tuple[str, InFlightMetrics] | None = None

    def set_inflight_producer(self, name: str | None) -> None:
        """Export llm-d's per-flow in-flight gauges under producer ``name`` (the config's
        ``inflight-load-producer``); None exports none. Needs metrics."""
        self._inflight = (name, self._metrics.inflight()) if name and self._metrics is not None else None

    def _count_inflight(self, ctx: RequestContext, requests: int, tokens: int) -> None:
        assert self._inflight is not None  # callers check: no call per request without the producer
        name, gauges = self._inflight
        meta, req = ctx.target.meta, ctx.request
        gauges.add(meta.name, meta.namespace, name, req.fairness_id, req.priority, requests, tokens)

    def set_token_producer(self, producer: TokenProducerLike | None) -> None:
        """Have each admitted request's prompt tokenized by ``producer`` before it is scheduled
        (``token-producer``: the model server's own renderer); None: no tokenization here."""
        self._tokens = producer

    def set_burst_stage(self, stage: BurstStageLike | None) -> None:
        """Hold each request in ``stage``'s window after tokenization, before scheduling."""
        self._burst = stage

    def set_tracer(self, tracer: RequestTracer | None) -> None:
        """Trace every request from now on (:mod:`infergate.tracing`); None turns tracing off."""
        self._tracer = tracer

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        datastore: DatastoreView,
        scheduler: SchedulerLike,
        flow: FlowControllerLike | None,
        clock: Clock | None = None,
        metrics: GatewayMetrics | None = None,
        rng: random.Random | None = None,
        honor_subset_hint: bool = True,
        authenticator: Authenticator | None = None,
        objective_max_tokens: Mapping[str, int] | None = None,
    ) -> Director:
        """A Director with ``proxy.retries``, the ``limits`` group and ``auth.control_headers``.

        ``objective_max_tokens`` are ceilings found in the pool's objects (annotations); the
        ``limits.objective_max_tokens`` setting wins over them.
        """
        lim = settings.limits
        director = cls(
            datastore=datastore,
            scheduler=scheduler,
            flow=flow,
            clock=clock,
            metrics=metrics,
            rng=rng,
            max_attempts=1 + settings.proxy.retries,
            honor_subset_hint=honor_subset_hint,
        )
        director.configure_access(
            authenticator=authenticator,
            limits=RequestLimits(
                max_messages=lim.max_messages,
                max_tokens=lim.max_tokens_ceiling,
                objective_max_tokens={**(objective_max_tokens or {}), **lim.objective_max_tokens},
                max_n=lim.max_n,
                vocab_size=lim.vocab_size,
                max_model_len=lim.max_model_len,
            ),
            control_headers=settings.auth.control_headers,
        )
        return director

    def configure_access(
        self,
        *,
        authenticator: Authenticator | None = None,
        limits: RequestLimits | None = None,
        control_headers: str = "auto",
    ) -> None:
        """Set the API-key check, request limits and who may send control headers (the app wires
        them; see :data:`~infergate.requestcontrol.access.CONTROL_HEADER_MODES`)."""
        self._auth = authenticator
        self._control_headers = validate_control_header_mode(control_headers)
        if limits is not None:
            self._core.limits = limits

    def configure_parsers(self, *, passthrough: Sequence[str] = ()) -> None:
        """Path suffixes forwarded unread (the config's ``passthrough-parser`` ``paths``); the data
        planes admit them past their request policy (:attr:`passthrough_paths`)."""
        self._core.passthrough = tuple(passthrough)

    @property
    def passthrough_paths(self) -> tuple[str, ...]:
        return self._core.passthrough

    def response_headers(self, ctx: RequestContext) -> dict[str, str]:
        """Headers scheduling plugins add to the client's response (``x-session-token``)."""
        hook = self._response_hook
        return dict(hook(ctx.target)) if callable(hook) else {}

    @property
    def limits(self) -> RequestLimits:
        return self._core.limits

    @property
    def core(self) -> RequestCore:
        """The synchronous core this director wraps (the twin drives the same class directly)."""
        return self._core

    @property
    def auth_enabled(self) -> bool:
        return self._auth is not None

    def authenticate(self, headers: Mapping[str, str]) -> Principal | None:
        """The caller behind ``headers`` (None when authentication is off); 401 when unknown.

        Data planes call this for routes that need a valid key but no objective (``/v1/models``).
        """
        hdrs = H.lower_case(headers)
        principal = self._auth.authenticate(hdrs) if self._auth is not None else None
        check_control_headers(hdrs, principal, mode=self._control_headers)
        return principal

    def _series_for(self, request: InferenceRequest) -> RequestSeries | None:
        if self._metrics is None:
            return None
        key = (request.model, request.target_model, request.fairness_id, request.priority)
        found = self._series.get(key)
        if found is None:
            if len(self._series) >= _MAX_SERIES:
                self._series.clear()
            found = self._series[key] = RequestSeries(
                self._metrics, request.model, request.target_model, request.fairness_id, str(request.priority)
            )
        return found

    # ---------------------------------------------------------------- request path
    def known_models(self) -> frozenset[str]:
        """Models a request may name (see :meth:`RequestCore.known_models`)."""
        return self._core.known_models()

    def _count_error(
        self, model: str, target: str, exc: BaseException, request: InferenceRequest | None = None
    ) -> None:
        """Count a request refused before it reached a model server. Its fairness id and priority
        are known once the objective resolved (``request``); before that they are empty."""
        if self._metrics is not None:
            self._metrics.request_error_total.labels(
                model_name=model,
                target_model_name=target,
                fairness_id=request.fairness_id if request is not None else "",
                priority=str(request.priority) if request is not None else "",
                error_code=error_code_for(exc),
            ).inc()

    async def handle_request(self, *, path: str, headers: Mapping[str, str], body: bytes) -> RequestContext:
        """Parse, resolve, admit and schedule one request; the endpoint is acquired on return."""
        started = self._clock.now()
        hdrs = H.lower_case(headers)
        request_id = hdrs.get(H.REQUEST_ID) or H.new_request_id()
        model = target = ""
        subset = parse_subset(hdrs.get(H.DESTINATION_ENDPOINT_SUBSET)) if self._honor_subset else None
        principal: Principal | None = None
        request: InferenceRequest | None = None
        trace = self._tracer.start(request_id, path) if self._tracer is not None else NULL_TRACE
        try:
            # Authenticate before reading the body: an unknown caller learns nothing about it.
            principal = self.authenticate(hdrs)  # and who may send control headers
            core = self._core
            with trace.phase("parse"):
                parsed = core.parse(path, body)
            model = parsed.model
            with trace.phase("admission"):
                target = core.rewrite(model, H.model_name_rewrite_of(hdrs))
                resolved = core.admit(
                    parsed,
                    target,
                    headers=hdrs,
                    body=body,
                    request_id=request_id,
                    now=started,
                    principal=principal,
                )
                request = resolved.request
                trace.set(model=model, target_model=target, priority=request.priority)
                # the config's admitters (probabilistic-admitter) refuse before the request waits;
                # a refusal is counted below with the request's priority, as flow control's are
                core.check_admission(request, subset)
            released = False
            if self._flow is not None:
                # A subset hint no ready endpoint matches, while the pool has some, is answered at
                # once; an empty pool (scale from zero) is flow control's to wait out or refuse.
                if subset is not None and not self._reachable(subset) and self._reachable(None):
                    raise no_capacity(subset)
                with trace.phase("queue"):
                    released = await self._flow.admit(request)
            if self._tokens is not None:
                with trace.phase("tokenize"):
                    ids = await self._tokens.token_ids(request)
                if ids is not None:
                    request = dataclasses.replace(request, prompt_token_ids=ids)
            if self._burst is not None:
                with trace.phase("burst"):  # the window the burst producer assigns jointly
                    await self._burst.place(request, self._core.eligible(subset))
            with trace.phase("schedule"):
                result = self._schedule(request, (), subset, released=released)
        except RequestError as exc:
            self._processed(started)
            trace.end(exc.status, exc.message)
            if isinstance(exc, (ModelNotFoundError, AuthenticationError)):
                # client-chosen names must not create series
                self._count_error("unknown", "unknown", exc)
            else:
                self._count_error(model, target, exc, request)
            log.info(
                "request rejected request_id=%s path=%s model=%s status=%d error=%s",
                request_id,
                path,
                model or "-",
                exc.status,
                exc.message,
            )
            raise
        ctx = RequestContext(
            request=request,
            path=path,
            headers=headers,
            body=resolved.upstream_body,
            result=result,
            target=result.primary,
            attempts=1,
            started_at=started,
            dispatched_at=self._clock.now(),
            subset=subset,
            released=released,
            _trace=trace,
        )
        self._hold(ctx, result.primary)
        if self._programs is not None:
            self._programs.program_dispatched(request, (ctx.dispatched_at or started) - started)
        trace.start_upstream(result.primary.key)
        if target != model:
            ctx._rewriter = ModelNameRewriter(target, model)
        series = self._series_for(request)
        if series is not None:
            series.total.inc()
            series.request_sizes.observe(len(body))
            series.running.inc()
        self._processed(started)
        return ctx

    def _processed(self, started: float) -> None:
        """The picker's time on a request until it was routed or refused (the EPP overhead)."""
        if self._metrics is not None:
            self._metrics.request_processing.observe(max(0.0, self._clock.now() - started))

    def _reachable(self, subset: frozenset[str] | None) -> bool:
        """A healthy endpoint exists (in the subset hint, if any), fresh metrics or not.

        Stale metrics mean "load unknown", not "gone": flow control counts such an endpoint as
        saturated, so the request waits in the queue until a scrape arrives (a gateway that
        stalled past the staleness threshold queues instead of answering 503).
        """
        return any(e.healthy and (subset is None or e.meta.address in subset) for e in self._ds.endpoints())

    def _schedule(
        self,
        request: InferenceRequest,
        exclude: Sequence[str],
        subset: frozenset[str] | None = None,
        *,
        released: bool = False,
    ) -> SchedulingResult:
        # a request flow control held back and released goes only where there is room
        room = self._flow.with_room if self._flow is not None and released else None
        return self._core.schedule(request, exclude=exclude, subset=subset, room=room)

    def _hold(self, ctx: RequestContext, target: Endpoint) -> None:
        key = target.meta.key
        ctx.target = target
        ctx.tried.add(key)
        # the prompt's estimated tokens load the endpoint until its prefill is done
        ctx._held_tokens = len(ctx.request.prompt.encode("utf-8")) // CHARS_PER_TOKEN
        self._ds.acquire(key, ctx._held_tokens)
        ctx._held = key
        if self._inflight is not None:
            self._count_inflight(ctx, 1, ctx._held_tokens)

    def _drop(self, ctx: RequestContext) -> None:
        if ctx._held is not None:
            self._ds.release(ctx._held, ctx._held_tokens, started=ctx.first_token_at is not None)
            if self._inflight is not None:
                self._count_inflight(ctx, -1, -ctx._held_tokens)
            ctx._held = None
            ctx._held_tokens = 0

    def retry_target(self, ctx: RequestContext) -> Endpoint | None:
        """Move ``ctx`` to the next-best endpoint after a failure before the first byte.

        Tries the scheduler's fallbacks first (still ready), then a fresh pick among the
        candidates not tried yet. Returns None when attempts are exhausted or nothing is left.
        """
        if ctx.completed or ctx.first_byte_at is not None or ctx.attempts >= self._max_attempts:
            return None
        ready = {c.key: c for c in self._core.eligible(ctx.subset)}
        nxt: Endpoint | None = None
        for ep in ctx.result.targets:
            if ep.key not in ctx.tried and ep.key in ready:
                nxt = ready[ep.key]
                break
        if nxt is None:
            try:
                nxt = self._schedule(ctx.request, tuple(ctx.tried), ctx.subset, released=ctx.released).primary
            except RequestError:
                return None
        self._drop(ctx)
        ctx.attempts += 1
        self._hold(ctx, nxt)
        ctx._trace.start_upstream(nxt.key)
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
            skip = ctx._event_skip = events_before_tokens(ctx.request)
            if skip is not None and status == 200:
                ctx._tpot_at = TPOT_REPORT_TOKENS + skip
        elif "json" in ctype:
            ctx._buffer = bytearray()

    def handle_response_chunk(self, ctx: RequestContext, chunk: bytes, *, end_of_stream: bool) -> bytes:
        """Read usage from the chunk and return it with the client's model name put back."""
        now = self._clock.now() if ctx.streaming else 0.0  # whole answers: no per-chunk timing
        if ctx.streaming and chunk and ctx.status == 200:
            if ctx._last_chunk_at is not None and ctx._itl is not None:
                ctx._itl.observe(now - ctx._last_chunk_at)
            ctx._last_chunk_at = now
        if ctx.first_token_at is None and chunk and ctx.streaming and ctx.status == 200:
            ctx.first_token_at = now
            series = self._series_for(ctx.request)
            ctx._itl = series.itl if series is not None else None
            if ctx._held is not None:  # prefill done: it no longer waits in the server
                self._ds.start(ctx._held, ctx._held_tokens)
                if self._inflight is not None:
                    self._count_inflight(ctx, 0, -ctx._held_tokens)
                ctx._held_tokens = 0
            self._core.observe_ttft(ctx.request_id, ctx.first_token_at - ctx.started_at)
            if self._flow is not None:  # the decode guard's TTFT slack: counted from dispatch
                dispatched = ctx.started_at if ctx.dispatched_at is None else ctx.dispatched_at
                self._flow.observe_ttft(ctx.first_token_at - dispatched)
        ctx.response_bytes += len(chunk)
        if ctx._sse is not None:
            ctx._sse.feed(chunk)
            if ctx._tpot_at and ctx._sse.events >= ctx._tpot_at and ctx.first_token_at is not None:
                self._report_tpot(ctx, ctx._sse.events - (ctx._event_skip or 0), self._clock.now())
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
        out = chunk if ctx._rewriter is None else ctx._rewriter.feed(chunk, end_of_stream=end_of_stream)
        if ctx.streaming:
            ctx._handling += self._clock.now() - now
        return out

    def _observe_stream(
        self, ctx: RequestContext, now: float, per_token: float | None, *, failed: bool
    ) -> None:
        """Report a finished request's TTFT (None: nothing streamed) and, unless already reported
        at its ``TPOT_REPORT_TOKENS``-th token, its time per token after the first (``per_token``,
        from the usage, when its events did not count its tokens).

        That time needs the token count: a stream reports it when the client asked for usage
        (``stream_options.include_usage``); the scheduler learns from every stream whose events
        count its tokens, after ``TPOT_REPORT_TOKENS`` of them (in :meth:`handle_response_chunk`)
        or here for a shorter answer, else from the usage.
        """
        if ctx.first_token_at is None:
            self._core.observe_ttft(ctx.request_id, None)  # nothing streamed: nothing to learn from
        if ctx._tpot_reported:
            return
        counted = 0
        if ctx._sse is not None and ctx._event_skip is not None:
            counted = ctx._sse.events - ctx._event_skip
        if not failed and ctx.first_token_at is not None and counted > 1 and ctx.completion_tokens is None:
            self._report_tpot(ctx, counted, now)
        else:
            self._tell_tpot(ctx, per_token)

    def _report_tpot(self, ctx: RequestContext, tokens: int, now: float) -> None:
        """Tell the scheduler the stream's mean time per token after the first, once per request."""
        ctx._tpot_at = 0
        ctx._tpot_reported = True
        assert ctx.first_token_at is not None
        self._tell_tpot(ctx, max(0.0, (now - ctx.first_token_at) / (tokens - 1)))

    def _tell_tpot(self, ctx: RequestContext, seconds: float | None) -> None:
        """A stream's time per token after the first: to the scheduler (its TPOT correction) and
        to flow control (its decode guard); None tells the scheduler there is nothing to learn."""
        self._core.observe_tpot(ctx.request_id, seconds)
        if seconds is not None and self._flow is not None:
            self._flow.observe_tpot(seconds)

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
        ctx._trace.end(ctx.status, None if error is None else f"{type(error).__name__}: {error}")
        if ctx._sse is not None and ctx.prompt_tokens is None:
            ctx._sse.close()
            self._take_usage(ctx, ctx._sse.usage)
        if self._programs is not None:  # the program's attained service grows by its tokens
            self._programs.program_completed(ctx.request, ctx.prompt_tokens or 0, ctx.completion_tokens or 0)
        now = self._clock.now()
        duration = max(0.0, now - ctx.started_at)
        req = ctx.request
        failed = error is not None or (ctx.status is not None and ctx.status >= 400)
        tokens = ctx.completion_tokens
        per_token: float | None = None  # from the usage of a stream (the exported TPOT histograms)
        if not failed and ctx.first_token_at is not None and tokens is not None and tokens > 1:
            per_token = max(0.0, (now - ctx.first_token_at) / (tokens - 1))
        if not ctx.streaming and not failed and tokens and one_answer(req):
            # an answer that came whole: nobody saw its first token or timed the rest, so the
            # scheduler learns from its time and token count (split by what it expected of each)
            self._core.observe_answer(ctx.request_id, duration, tokens)
        else:
            self._observe_stream(ctx, now, per_token, failed=failed)
        if error is not None:
            ctx.error_code = error_code_for(error)
        elif failed:
            ctx.error_code = "ModelServerError"
        series = self._series_for(req)
        if self._metrics is not None and ctx.first_byte_at is not None:  # it reached the response phase
            handled = ctx._handling if ctx.streaming else now - ctx.first_byte_at
            self._metrics.response_processing.observe(max(0.0, handled))
        if series is not None:
            series.record_end(ctx, duration, per_token, failed=failed)
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
