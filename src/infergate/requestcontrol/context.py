"""What the Director knows about one request in flight, the metric series it is counted in, and
the shapes of the collaborators it is given.

:class:`RequestContext` goes from scheduling to the last response byte with the request; the data
planes hold it between their calls into the Director. :class:`RequestSeries` resolves a request's
labelled metric children once per (model, target, fairness id, priority). The protocols say what
the Director needs of flow control, a token producer and a batch window (tests pass their own).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from infergate.errors import RequestError, UpstreamError
from infergate.requestcontrol.usage import ModelNameRewriter, SSEUsageParser
from infergate.tracing import NULL_TRACE, RequestTrace
from infergate.types import Endpoint, InferenceRequest, SchedulingResult

if TYPE_CHECKING:
    from infergate.telemetry import GatewayMetrics

__all__ = [
    "BurstStageLike",
    "FlowControllerLike",
    "ProgramTracker",
    "RequestContext",
    "RequestSeries",
    "TokenProducerLike",
    "error_code_for",
    "error_code_name",
]


class TokenProducerLike(Protocol):
    async def token_ids(self, request: InferenceRequest) -> tuple[int, ...] | None: ...


class BurstStageLike(Protocol):
    """Holds a request in a batch window before it is scheduled (``burst-prefix-cache-producer``)."""

    async def place(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None: ...


class FlowControllerLike(Protocol):
    async def admit(self, request: InferenceRequest) -> bool: ...
    def with_room(self, endpoints: Sequence[Endpoint]) -> list[Endpoint]: ...
    def observe_tpot(self, tpot_seconds: float) -> None: ...
    def observe_ttft(self, seconds: float) -> None: ...


class ProgramTracker(Protocol):
    """Flow control's program-aware fairness: told each request's dispatch and end (its tokens)."""

    def program_dispatched(self, request: InferenceRequest, waited: float) -> None: ...
    def program_completed(self, request: InferenceRequest, prompt: int, completion: int) -> None: ...


_ERROR_CODE_NAMES: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    413: "BadRequest",
    429: "ResourceExhausted",
    499: "ClientDisconnected",
    500: "Internal",
    502: "ModelServerError",
    503: "ServiceUnavailable",
    504: "ModelServerError",
}


def error_code_name(status: int) -> str:
    """The reference's error-code word for an HTTP status (its error bodies render them as
    ``inference error: <Code> - <message>``, pkg/common/error/error.go); ``Internal`` otherwise."""
    return _ERROR_CODE_NAMES.get(status, "Internal")


def error_code_for(exc: BaseException) -> str:
    """The reference's error code label (``inference_objective_request_error_total{error_code}``)."""
    if isinstance(exc, UpstreamError):
        return "ModelServerError"
    if isinstance(exc, RequestError):
        return error_code_name(exc.status)
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
    dispatched_at: float | None = None
    """When flow control let the request go and it was scheduled (None: at ``started_at``)."""
    status: int | None = None
    first_byte_at: float | None = None
    first_token_at: float | None = None
    """When the first body chunk of a streamed 200 answer arrived (the request's TTFT)."""
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
    released: bool = False
    """Flow control queued the request and released it: it is scheduled only where there is room."""
    _held: str | None = None
    _held_tokens: int = 0
    _rewriter: ModelNameRewriter | None = None
    _sse: SSEUsageParser | None = None
    _event_skip: int | None = None
    """Events a stream sends before its first token (``events_before_tokens``); None: its events
    do not count its tokens."""
    _tpot_at: int = 0
    """The event count at which the stream's time per token is reported (0: not before its end)."""
    _tpot_reported: bool = False
    _buffer: bytearray | None = None
    _trace: RequestTrace = NULL_TRACE
    _last_chunk_at: float | None = None
    """When the previous chunk of a streamed 200 answer arrived (its inter-token latency)."""
    _itl: Any = None
    _handling: float = 0.0
    """Time spent in the response-chunk handler for this (streamed) response."""

    @property
    def request_id(self) -> str:
        return self.request.request_id


class RequestSeries:
    """The per-(model, target, fairness id, priority) metric children, resolved once: ``labels()``
    is costly per request. The GIE series keep (model, target); their llm-d twins add the rest."""

    __slots__ = (
        "_lbl",
        "_m",
        "cached",
        "duration",
        "input",
        "itl",
        "output",
        "request_sizes",
        "response_sizes",
        "running",
        "total",
        "tpot",
        "tpot_stream",
        "ttft",
    )

    def __init__(self, m: GatewayMetrics, model: str, target: str, fairness_id: str, priority: str) -> None:
        lbl = {
            "model_name": model,
            "target_model_name": target,
            "fairness_id": fairness_id,
            "priority": priority,
        }
        self.request_sizes = m.request_sizes.labels(**lbl)
        self.duration = m.request_duration.labels(**lbl)
        self._lbl = lbl
        self._m = m
        self.ttft: dict[bool, Any] = {}  # by streaming, made on first use: no empty series
        self.response_sizes = m.response_sizes.labels(**lbl)
        self.input = m.input_tokens.labels(**lbl)
        self.output = m.output_tokens.labels(**lbl)
        self.tpot = m.normalized_tpot.labels(**lbl)
        self.tpot_stream = m.request_tpot.labels(**lbl)
        self.itl = m.request_itl.labels(**lbl)
        self.cached = m.prompt_cached_tokens.labels(**lbl)
        self.running = m.running_requests.labels(**lbl)
        self.total = m.request_total.labels(**lbl)

    def record_end(
        self, ctx: RequestContext, duration: float, per_token: float | None, *, failed: bool
    ) -> None:
        """The finished request: out of ``running``; its error counted, or its duration, time to
        first token (streamed: first token; else first byte), sizes, tokens and times per token."""
        self.running.dec()
        req = ctx.request
        if failed:
            self._m.request_error_total.labels(**self._lbl, error_code=ctx.error_code or "Internal").inc()
            return
        self.duration.observe(duration)
        first = ctx.first_token_at or ctx.first_byte_at
        if first is not None:
            self.observe_ttft(max(0.0, first - ctx.started_at), streaming=req.stream)
        self.response_sizes.observe(ctx.response_bytes)
        if ctx.prompt_tokens is not None:
            self.input.observe(ctx.prompt_tokens)
        if ctx.completion_tokens is not None:
            self.output.observe(ctx.completion_tokens)
            if ctx.completion_tokens > 0:
                self.tpot.observe(duration / ctx.completion_tokens)
            if per_token is not None:
                self.tpot_stream.observe(per_token)
        if ctx.cached_tokens is not None:
            self.cached.observe(ctx.cached_tokens)

    def observe_ttft(self, seconds: float, *, streaming: bool) -> None:
        child = self.ttft.get(streaming)
        if child is None:
            child = self.ttft[streaming] = self._m.request_ttft.labels(
                **self._lbl, streaming="true" if streaming else "false"
            )
        child.observe(seconds)
