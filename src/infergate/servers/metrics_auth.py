"""Protection of the admin listener's ``/metrics`` (and ``/debug/``) with bearer tokens.

Three modes, as ``--metrics-auth`` chooses:

- ``kubernetes`` (in-cluster default, as the reference's ``--metrics-endpoint-auth=true``): the
  bearer token is checked with a ``TokenReview`` (``authentication.k8s.io/v1``); the user it names
  must then be allowed ``get`` on the non-resource URL (the request path, e.g. ``/metrics``) by a
  ``SubjectAccessReview`` (``authorization.k8s.io/v1``). That is exactly what a ClusterRole with
  ``nonResourceURLs: ["/metrics"], verbs: ["get"]`` grants. Answers are cached briefly per token
  and path (allowed longer than denied), so a Prometheus scraping every few seconds costs the API
  server two calls a minute, not two per scrape;
- ``token`` (local use, ``infergate up``): the bearer token must equal one of the tokens of a
  static token file (one per line, ``#`` comments), compared in constant time;
- ``disabled``: no check.

No token or an unknown token → 401 (with ``WWW-Authenticate: Bearer``); a known user without the
permission → 403. Liveness and readiness paths are never protected: the kubelet has no token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from infergate.sources.kubernetes_client import k8s_client

__all__ = [
    "AuthDecision",
    "KubernetesMetricsAuth",
    "MetricsAuthorizer",
    "StaticTokenAuth",
    "build_metrics_auth",
    "generate_token",
    "metrics_auth_middleware",
    "read_token_file",
    "write_token_file",
]

log = logging.getLogger("infergate.metrics_auth")

DEFAULT_PROTECTED = ("/metrics", "/debug/")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class AuthDecision:
    """The outcome for one token and path: HTTP status 200 (allowed), 401, 403 or 500."""

    status: int
    user: str = ""
    reason: str = ""
    cacheable: bool = True
    """False when the API could not answer: the next request asks again."""

    @property
    def allowed(self) -> bool:
        return self.status == 200


class MetricsAuthorizer(Protocol):
    async def authorize(self, token: str, path: str) -> AuthDecision: ...


# --------------------------------------------------------------------------- static tokens


def generate_token() -> str:
    """A fresh random bearer token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def write_token_file(path: Path, token: str) -> Path:
    """Write ``token`` to ``path`` readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return path


def read_token_file(path: Path) -> list[str]:
    """Tokens of a token file: one per line, blank lines and ``#`` comments ignored."""
    tokens = [line.strip() for line in path.read_text().splitlines()]
    out = [t for t in tokens if t and not t.startswith("#")]
    if not out:
        raise ValueError(f"{path}: no token in the token file")
    return out


class StaticTokenAuth:
    """Accepts the tokens given (constant-time comparison); every accepted token may read."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = [hashlib.sha256(t.encode()).digest() for t in tokens]
        if not self._digests:
            raise ValueError("StaticTokenAuth needs at least one token")

    @classmethod
    def from_file(cls, path: Path) -> StaticTokenAuth:
        return cls(read_token_file(path))

    async def authorize(self, token: str, path: str) -> AuthDecision:
        digest = hashlib.sha256(token.encode()).digest()
        ok = False
        for known in self._digests:  # no early exit: timing does not reveal which one matched
            ok |= hmac.compare_digest(digest, known)
        return AuthDecision(200, "token") if ok else AuthDecision(401, reason="unknown token")


# --------------------------------------------------------------------------- Kubernetes


class KubernetesMetricsAuth:
    """TokenReview + SubjectAccessReview through the Kubernetes API, with a small TTL cache.

    Args:
        api_client: ``kubernetes_asyncio`` ``ApiClient`` (the picker's own service account needs
            ``create`` on ``tokenreviews`` and ``subjectaccessreviews``).
        allow_ttl, deny_ttl: seconds an allowed / a refused (401 or 403) answer is reused.
        max_entries: cache size; the least recently used entry goes first.
        verb: the verb asked for (``get``, as Prometheus does).
    """

    def __init__(
        self,
        api_client: Any,
        *,
        allow_ttl: float = 60.0,
        deny_ttl: float = 10.0,
        max_entries: int = 1024,
        verb: str = "get",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api_client = api_client
        self._allow_ttl = allow_ttl
        self._deny_ttl = deny_ttl
        self._max_entries = max_entries
        self._verb = verb
        self._clock = clock
        self._cache: OrderedDict[tuple[bytes, str], tuple[float, AuthDecision]] = OrderedDict()
        self._pending: dict[tuple[bytes, str], asyncio.Future[AuthDecision]] = {}

    async def authorize(self, token: str, path: str) -> AuthDecision:
        key = (hashlib.sha256(token.encode()).digest(), path)
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            self._cache.move_to_end(key)
            return hit[1]
        pending = self._pending.get(key)
        if pending is not None:  # one review in flight per token and path, shared
            return await asyncio.shield(pending)
        fut: asyncio.Future[AuthDecision] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            decision = await self._review(token, path)
            fut.set_result(decision)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._pending.pop(key, None)
        if decision.cacheable:
            ttl = self._allow_ttl if decision.allowed else self._deny_ttl
            self._cache[key] = (self._clock() + ttl, decision)
            self._cache.move_to_end(key)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        return decision

    async def _review(self, token: str, path: str) -> AuthDecision:
        timeout = aiohttp.ClientTimeout(total=10)
        try:
            review = await k8s_client.AuthenticationV1Api(self._api_client).create_token_review(
                k8s_client.V1TokenReview(spec=k8s_client.V1TokenReviewSpec(token=token)),
                _request_timeout=timeout,
            )
        except Exception as exc:
            # As controller-runtime: an authentication failure of any kind is a 401 (not cached).
            log.warning("TokenReview failed: %s", exc)
            return AuthDecision(401, reason=f"token review failed: {type(exc).__name__}", cacheable=False)
        st = review.status
        if st is None or not st.authenticated or st.user is None:
            return AuthDecision(401, reason=(st.error if st is not None and st.error else "invalid token"))
        user = st.user
        spec = k8s_client.V1SubjectAccessReviewSpec(
            user=user.username,
            groups=user.groups,
            uid=user.uid,
            extra=user.extra,
            non_resource_attributes=k8s_client.V1NonResourceAttributes(path=path, verb=self._verb),
        )
        try:
            sar = await k8s_client.AuthorizationV1Api(self._api_client).create_subject_access_review(
                k8s_client.V1SubjectAccessReview(spec=spec), _request_timeout=timeout
            )
        except Exception as exc:
            log.warning("SubjectAccessReview failed: %s", exc)
            return AuthDecision(500, user=user.username or "", reason="authorization error", cacheable=False)
        if sar.status is not None and sar.status.allowed:
            return AuthDecision(200, user=user.username or "")
        reason = (sar.status.reason if sar.status is not None else None) or "forbidden"
        return AuthDecision(403, user=user.username or "", reason=reason)


# --------------------------------------------------------------------------- choosing a mode

MODES = ("kubernetes", "token", "disabled")


def build_metrics_auth(
    mode: str, *, token_file: Path | None = None, api_client: Any | None = None
) -> MetricsAuthorizer | None:
    """The authorizer for ``--metrics-auth`` (``true``/``false`` accepted as kubernetes/disabled).

    Raises ``ValueError`` when the mode needs what was not given (a token file, an API client).
    """
    m = mode.strip().lower()
    if m in ("disabled", "false", "off", "none"):
        return None
    if m == "token":
        if token_file is None:
            raise ValueError("--metrics-auth=token needs --metrics-token-file")
        return StaticTokenAuth.from_file(token_file)
    if m in ("kubernetes", "true", "on"):
        if api_client is None:
            raise ValueError("--metrics-auth=kubernetes needs access to the Kubernetes API")
        return KubernetesMetricsAuth(api_client)
    raise ValueError(f"--metrics-auth must be one of {', '.join(MODES)} (got {mode!r})")


# --------------------------------------------------------------------------- middleware


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def metrics_auth_middleware(
    authorizer: MetricsAuthorizer | None, *, protected: Iterable[str] = DEFAULT_PROTECTED
) -> Any:
    """An aiohttp middleware requiring an authorized bearer token on the ``protected`` prefixes.

    ``authorizer=None`` (``--metrics-auth=false``) lets everything through. Install it before the
    app starts: ``app.middlewares.append(metrics_auth_middleware(auth))``.
    """
    prefixes = tuple(protected)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if authorizer is None or not request.path.startswith(prefixes):
            return await handler(request)
        token = bearer_token(request)
        if token is None:
            return _deny(401, "Unauthorized")
        decision = await authorizer.authorize(token, request.path)
        if decision.allowed:
            return await handler(request)
        if decision.status == 403:
            log.info("metrics auth: %s may not get %s: %s", decision.user, request.path, decision.reason)
            return _deny(403, f"Forbidden (user={decision.user}, verb=get, resource=, subresource=)")
        if decision.status == 401:
            return _deny(401, "Unauthorized")
        return _deny(decision.status, "Authorization error")

    return middleware


def _deny(status: int, text: str) -> web.Response:
    resp = web.Response(status=status, text=text + "\n")
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="infergate"'
    return resp
