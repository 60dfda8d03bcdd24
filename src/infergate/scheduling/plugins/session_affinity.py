"""``session-affinity-scorer`` (llm-d-router v0.10): send a session's requests back to the endpoint
that served it before.

Two strategies, as upstream:

- ``encoded_endpoint_header`` (default): stateless. The response carries ``x-session-token`` (the
  header name is configurable), the base64 of the serving endpoint's ``namespace/name``; a client
  that echoes it back gets 1.0 for that endpoint and 0 for every other. The data plane asks the
  scheduler for the header through :meth:`SessionAffinityScorer.response_headers`.
- ``session_id``: the client sends an opaque id (``x-session-id`` by default, or other headers in
  priority order); the scorer binds the id to the endpoint it was routed to (after each pick) and
  forgets bindings unused for ``evictionTtlSeconds``. An unbound id, or a bound endpoint that is not
  a candidate, scores 0 everywhere (the request then rebinds to wherever it goes).

``session-affinity-filter`` (:class:`SessionAffinityFilter`) takes the same parameters and pins
instead of preferring: the session's endpoint becomes the only candidate while it is one.

Per-profile instances (``profileName``, for P/D) and request-attribute sources are refused: infergate
runs one profile and publishes no request attributes.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import Field, field_validator, model_validator

from infergate.scheduling.sdk.framework import CycleState, Params
from infergate.types import Clock, Endpoint, InferenceRequest, SchedulingResult

__all__ = ["SessionAffinityFilter", "SessionAffinityParams", "SessionAffinityScorer", "session_token"]


class EncodedHeaderConfig(Params):
    header: str = Field(default="x-session-token", min_length=1)


class SessionSource(Params):
    header: str | None = None
    attribute: str | None = None

    @model_validator(mode="after")
    def _header_only(self) -> SessionSource:
        if self.attribute is not None:
            raise ValueError("attribute sources are not supported (no plugin publishes request attributes)")
        if not self.header:
            raise ValueError("header is required")
        return self


class SessionIdConfig(Params):
    sources: list[SessionSource] = Field(
        default_factory=lambda: [SessionSource(header="x-session-id")], min_length=1
    )
    eviction_ttl_seconds: float = Field(default=300.0, gt=0)
    eviction_sweep_seconds: float = Field(default=10.0, gt=0)


class SessionAffinityParams(Params):
    strategy: Literal["encoded_endpoint_header", "session_id"] = "encoded_endpoint_header"
    profile_name: str = ""
    encoded_endpoint_header_config: EncodedHeaderConfig = Field(default_factory=EncodedHeaderConfig)
    session_id_config: SessionIdConfig = Field(default_factory=SessionIdConfig)

    @field_validator("profile_name")
    @classmethod
    def _primary_only(cls, value: str) -> str:
        if value:
            raise ValueError("only the primary profile exists in infergate; leave profileName empty")
        return value


def session_token(endpoint: Endpoint) -> str:
    """The ``x-session-token`` value naming ``endpoint``: base64 of ``namespace/name``."""
    return base64.b64encode(f"{endpoint.meta.namespace}/{endpoint.meta.name}".encode()).decode()


class SessionAffinityScorer:
    """See the module docstring; scores are 1.0 for the session's endpoint and 0 elsewhere."""

    def __init__(self, params: SessionAffinityParams | None = None, *, clock: Clock | None = None) -> None:
        p = params or SessionAffinityParams()
        self._strategy = p.strategy
        self._token_header = p.encoded_endpoint_header_config.header.lower()
        cfg = p.session_id_config
        self._id_headers = [s.header.lower() for s in cfg.sources if s.header]
        self._ttl = cfg.eviction_ttl_seconds
        self._sweep_every = cfg.eviction_sweep_seconds
        self._clock = clock
        self._bindings: dict[str, tuple[str, float]] = {}  # session id → (endpoint key, last used)
        self._last_sweep = 0.0

    def _now(self) -> float:
        return self._clock.now() if self._clock is not None else time.monotonic()

    def _session_id(self, request: InferenceRequest) -> str | None:
        for name in self._id_headers:
            value = request.headers.get(name)
            if value:
                return value
        return None

    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Mapping[str, float]:
        if self._strategy == "encoded_endpoint_header":
            token = request.headers.get(self._token_header)
            if not token:
                return {}
            try:
                wanted = base64.b64decode(token, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return {}
            return {e.key: 1.0 for e in candidates if f"{e.meta.namespace}/{e.meta.name}" == wanted}
        session = self._session_id(request)
        bound = self._bindings.get(session) if session else None
        if bound is None:
            return {}
        return {e.key: 1.0 for e in candidates if e.key == bound[0]}

    def post_pick(self, request: InferenceRequest, result: SchedulingResult, state: CycleState, /) -> None:
        if self._strategy != "session_id" or not result.targets:
            return
        now = self._now()
        session = self._session_id(request)
        if session:
            self._bindings[session] = (result.primary.key, now)
        if now - self._last_sweep >= self._sweep_every:
            self._last_sweep = now
            for sid in [s for s, (_, used) in self._bindings.items() if now - used > self._ttl]:
                del self._bindings[sid]

    def response_headers(self, target: Endpoint) -> dict[str, str]:
        """``{x-session-token: <token>}`` for the encoded strategy; nothing for ``session_id``."""
        if self._strategy != "encoded_endpoint_header":
            return {}
        return {self._token_header: session_token(target)}

    @property
    def sessions(self) -> int:
        """Bindings held (``session_id`` strategy)."""
        return len(self._bindings)


class SessionAffinityFilter(SessionAffinityScorer):
    """``session-affinity-filter``: the session's endpoint as the only candidate, a hard pin where
    the scorer is a preference. No session, an undecodable token, an unbound id or a session
    endpoint that is not a candidate: every candidate passes (the filter never empties the set).
    It writes ``x-session-token`` and keeps ``session_id`` bindings as the scorer does."""

    def filter(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Sequence[Endpoint]:
        pinned = self.score(request, candidates, state)
        if not pinned:
            return candidates
        kept = [e for e in candidates if e.key in pinned]
        return kept or candidates
