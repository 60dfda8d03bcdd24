"""Per-request access policy the Director enforces: who may call (API keys) and request limits.

This module owns the *contract* between request control and whatever knows the API keys (the
concrete key store lives in :mod:`infergate.servers.auth`, which loads files and Secrets), plus
:class:`RequestLimits`, the body limits that depend on the resolved objective (``max_tokens``
ceiling) or that are cheap to enforce while parsing (number of chat messages). Keeping both here
means every data plane that drives the Director (built-in proxy, ext_proc) enforces the same rules.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import unquote

from infergate.errors import (
    BadRequestError,
    ConfigError,
    ModelNotFoundError,
    PermissionDeniedError,
    RequestError,
)
from infergate.requestcontrol import headers as H
from infergate.requestcontrol.parsing import api_kind_for_path, is_passthrough
from infergate.types import ApiKind

__all__ = [
    "AUTHORIZATION",
    "CONTROL_HEADER_MODES",
    "OVERFLOW_FAIRNESS_ID",
    "X_API_KEY",
    "Authenticator",
    "FairnessIds",
    "MethodNotAllowedError",
    "PathNotFoundError",
    "Principal",
    "RequestLimits",
    "Route",
    "check_control_headers",
    "check_scope",
    "classify_request",
    "presented_key",
    "validate_control_header_mode",
]

AUTHORIZATION = "authorization"
X_API_KEY = "x-api-key"


class Principal(Protocol):
    """An authenticated caller; knows which objectives it may use."""

    @property
    def name(self) -> str:
        """A label safe to log (never the key itself)."""
        ...

    def allows(self, objective: str) -> bool: ...

    @property
    def control_headers(self) -> bool:
        """May send the gateway's control headers (objective, model rewrite, fairness id)."""
        ...


class Authenticator(Protocol):
    """Maps request headers to a :class:`Principal` or raises ``AuthenticationError`` (401)."""

    def authenticate(self, headers: Mapping[str, str]) -> Principal: ...


class Route(enum.Enum):
    """What a data plane does with a request, decided from its method and path alone."""

    INFERENCE = "inference"
    """An OpenAI inference call (POST): authenticated, parsed, scheduled, forwarded to a replica."""
    MODELS = "models"
    """``GET /v1/models``: answered by the gateway from what the pool serves (any valid key)."""
    HEALTH = "health"
    """``/health``: answered by the gateway (never needs a key)."""


class PathNotFoundError(RequestError):
    """404 for every path outside the request policy (LoRA admin, ``/metrics``, ``/tokenize``...)."""

    status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowedError(RequestError):
    """405 with the one method the path accepts (``allow``)."""

    status = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, allow: str) -> None:
        super().__init__(f"method not allowed; use {allow}")
        self.allow = allow


def classify_request(method: str, path: str, passthrough: Sequence[str] = ()) -> Route:
    """The request policy both data planes enforce before any body byte is read.

    Only the inference API (chat/completions/embeddings/responses, POST), ``/v1/models`` (GET or
    HEAD, answered by the gateway) and ``/health`` exist on the inference listener. Everything else
    a model server offers - LoRA load/unload, ``/metrics``, ``/tokenize``, ``/version``,
    ``/get_server_info``, ``/reset_prefix_cache`` - is a 404 and never reaches a replica, whichever
    data plane carries the request. The message does not echo the path (it may hold anything).
    The only exception is what the operator lists in ``passthrough`` (the ``passthrough-parser``'s
    ``paths``): POSTs there are inference requests whose body is forwarded unread.
    """
    p = path.split("?", 1)[0]
    if p in ("/health", "/healthz"):
        return Route.HEALTH
    p = p.rstrip("/")
    if p.endswith("/v1/models") or requested_model_id(p) is not None:
        if method not in ("GET", "HEAD"):
            raise MethodNotAllowedError("GET")
        return Route.MODELS
    if (
        api_kind_for_path(p) is ApiKind.OTHER
        and not p.endswith("/responses")
        and not is_passthrough(p, passthrough)
    ):
        raise PathNotFoundError("no such path on this gateway")
    if method != "POST":
        raise MethodNotAllowedError("POST")
    return Route.INFERENCE


def requested_model_id(path: str) -> str | None:
    """The id of ``GET /v1/models/{id}`` (percent-decoded; ids may hold slashes, as in
    ``meta-llama/Llama-3.1-8B-Instruct``); None for the list and every other path."""
    _, sep, rest = unquote(path.split("?", 1)[0]).partition("/v1/models/")
    rest = rest.strip("/")
    return rest if sep and rest else None


def model_entry(listing: Mapping[str, Mapping[str, object]], model_id: str) -> Mapping[str, object]:
    """``GET /v1/models/{id}``: the entry of ``listing`` (id → model object), else OpenAI's 404."""
    entry = listing.get(model_id)
    if entry is None:
        raise ModelNotFoundError(f"The model {model_id[:200]} does not exist on this gateway")
    return entry


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The API key a client sent: ``Authorization: Bearer <key>`` first, else ``x-api-key``.

    ``headers`` must be case-insensitive or lower-cased. A non-Bearer ``Authorization`` (e.g.
    Basic) does not count as a key, so such a client falls through to ``x-api-key``.
    """
    auth = headers.get(AUTHORIZATION)
    if auth:
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = headers.get(X_API_KEY)
    if key and key.strip():
        return key.strip()
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestLimits:
    """Limits on what one request may ask for.

    ``max_tokens`` is the default ceiling on ``max_tokens``/``max_completion_tokens`` (None: only
    the parser's sanity bound); ``objective_max_tokens`` overrides it per objective name (or, for a
    request that resolves no objective, per requested model name). A body without ``max_tokens``
    is not rewritten: the ceiling rejects explicit requests above it, it does not invent one.
    """

    max_messages: int | None = 2048
    max_tokens: int | None = None
    objective_max_tokens: Mapping[str, int] = field(default_factory=dict)

    def ceiling_for(self, objective: str) -> int | None:
        return self.objective_max_tokens.get(objective, self.max_tokens)

    def check_max_tokens(self, requested: int | None, objective: str, *, param: str = "max_tokens") -> None:
        """Raise 400 (``param``) when ``requested`` exceeds the ceiling of ``objective``."""
        if requested is None:
            return
        ceiling = self.ceiling_for(objective)
        if ceiling is not None and requested > ceiling:
            raise BadRequestError(
                f"'{param}' is {requested}, above the limit of {ceiling} for '{objective}'",
                param=param,
                code="max_tokens_exceeded",
            )


CONTROL_HEADER_MODES = ("auto", "trusted", "keys")
"""Who may send control headers: ``trusted`` every client (a gateway in front sets them),
``keys`` only API keys with the control-headers permission, ``auto`` (default) ``trusted`` while
API keys are off and ``keys`` once they are on."""


def check_control_headers(headers: Mapping[str, str], principal: Principal | None, *, mode: str) -> None:
    """403 naming the first control header a caller sent that it may not send.

    ``headers`` lower-cased or case-insensitive. The header is refused rather than dropped: a
    client relying on it must learn that it had no effect.
    """
    if mode == "trusted" or (mode == "auto" and principal is None):
        return
    if principal is not None and principal.control_headers:
        return
    for name in sorted(H.CONTROL_INPUTS):
        if headers.get(name):
            raise PermissionDeniedError(
                f"header '{name}' is not allowed for this client",
                param=name,
                code="control_header_not_allowed",
            )


def validate_control_header_mode(mode: str) -> str:
    if mode not in CONTROL_HEADER_MODES:
        raise ConfigError(f"control_headers: must be one of {', '.join(CONTROL_HEADER_MODES)} (got {mode!r})")
    return mode


def check_scope(
    principal: Principal,
    *,
    scope: str,
    target: str,
    requested_target: str,
    objective_named: Callable[[str], bool],
) -> None:
    """403 unless the key may use both the request's objective and its final target model.

    ``scope`` is the objective the request resolved to (else the requested model). The final
    ``target`` (after the rewrite header and InferenceModelRewrites) must be allowed by name, or by
    an objective named like it; a target an InferenceModelRewrite chose (``target`` differs from
    ``requested_target``, the model or the rewrite header's value) is judged by the name that was
    rewritten, since the operator, not the client, picked it. So neither the objective header nor
    the rewrite header lets a key reach a model outside its scope.
    """
    if not principal.allows(scope):
        raise PermissionDeniedError(
            f"this API key may not use '{scope}'", param="model", code="permission_denied"
        )
    judged = target if target == requested_target or objective_named(target) else requested_target
    if not principal.allows(judged):
        raise PermissionDeniedError(
            f"this API key may not use the model '{judged}'", param="model", code="permission_denied"
        )


OVERFLOW_FAIRNESS_ID = "overflow"
"""The shared flow of every fairness id beyond the cap."""


class FairnessIds:
    """Caps distinct fairness ids (flow-control flows, metric labels) a client can create.

    The first ``limit`` distinct ids (1,000, as upstream) are kept as sent; later new ones, and ids
    longer than ``max_length``, share the :data:`OVERFLOW_FAIRNESS_ID` flow.
    """

    def __init__(self, limit: int = 1000, max_length: int = 128) -> None:
        self._limit = limit
        self._max_length = max_length
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(value) > self._max_length or len(self._seen) >= self._limit:
            return OVERFLOW_FAIRNESS_ID
        self._seen.add(value)
        return value
