"""One exception tree for the gateway.

Every error the gateway raises on purpose derives from :class:`GatewayError`. Errors that end a
client request carry the HTTP status and the OpenAI error ``type``/``code`` to answer with, so the
data planes (built-in proxy, ext_proc) render them the same way without knowing where they came from::

    GatewayError
    ├── ConfigError                 bad manifests / scheduler config; the process must not start
    └── RequestError                ends one request; has status, error_type, code, param
        ├── BadRequestError         400 malformed body, missing model, limits exceeded
        ├── AuthenticationError     401 missing or unknown API key
        ├── PermissionDeniedError   403 key not allowed to use this objective
        ├── ModelNotFoundError      404 no pool serves the requested model
        ├── RequestTimeoutError     408 the client stopped sending its body
        ├── RequestTooLargeError    413 body over the configured limit
        ├── RateLimitedError        429 sheddable request rejected under saturation
        ├── NoCapacityError         503 no ready endpoint / queue TTL expired
        ├── ClientDisconnectedError 499 the client went away before the answer was complete
        ├── UpstreamError           502 model server failed or answered garbage
        │   └── UpstreamTimeoutError 504
        └── InternalError           500 a bug; logged with a traceback
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ClientDisconnectedError",
    "ConfigError",
    "GatewayError",
    "InternalError",
    "ModelNotFoundError",
    "NoCapacityError",
    "PermissionDeniedError",
    "RateLimitedError",
    "RequestError",
    "RequestTimeoutError",
    "RequestTooLargeError",
    "UpstreamError",
    "UpstreamTimeoutError",
]


class GatewayError(Exception):
    """Root of every error infergate raises deliberately."""


class ConfigError(GatewayError):
    """Invalid configuration or manifests. The message names the file, the object and the field."""


class RequestError(GatewayError):
    """An error that ends one client request with an OpenAI-shaped error body."""

    status: int = 500
    error_type: str = "internal_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        self.headers: dict[str, str] = dict(headers or {})
        """Extra response headers, e.g. ``x-llm-d-request-dropped-reason`` from flow control."""

    def to_openai(self) -> dict[str, object]:
        """The body OpenAI clients expect: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code if self.code is not None else self.status,
            }
        }


class BadRequestError(RequestError):
    status = 400
    error_type = "invalid_request_error"


class AuthenticationError(RequestError):
    status = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(RequestError):
    status = 403
    error_type = "permission_error"


class ModelNotFoundError(RequestError):
    status = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class RequestTooLargeError(RequestError):
    status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class RateLimitedError(RequestError):
    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class NoCapacityError(RequestError):
    status = 503
    error_type = "service_unavailable"
    code = "no_capacity"


class RequestTimeoutError(RequestError):
    status = 408
    error_type = "invalid_request_error"
    code = "request_timeout"


class ClientDisconnectedError(RequestError):
    """Not an answer (nobody is left to read one): how a request ended when its client left,
    so metrics count it as ``ClientDisconnected`` rather than a gateway failure."""

    status = 499
    error_type = "client_disconnected"
    code = "client_disconnected"


class UpstreamError(RequestError):
    status = 502
    error_type = "upstream_error"
    code = "bad_gateway"


class UpstreamTimeoutError(UpstreamError):
    status = 504
    code = "gateway_timeout"


class InternalError(RequestError):
    status = 500
    error_type = "internal_error"
    code = "internal_error"
