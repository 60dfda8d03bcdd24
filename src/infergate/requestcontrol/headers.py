"""Header names of the endpoint-picker protocol (GIE §2.2) and the proxy's header hygiene rules.

The data planes share these constants so that a header the gateway owns is spelled once. Control
headers a client sends for routing (``x-gateway-destination-endpoint`` and friends) are stripped by
the data plane and never obeyed; the objective, fairness, model-rewrite and latency-SLO headers are
inputs.
"""

from __future__ import annotations

import math
import os
import random
from abc import ABC
from collections.abc import Iterable, Mapping

__all__ = [
    "DESTINATION_ENDPOINT",
    "DESTINATION_ENDPOINT_SERVED",
    "DESTINATION_ENDPOINT_SUBSET",
    "FAIRNESS_ID",
    "HOP_BY_HOP",
    "INFERENCE_OBJECTIVE",
    "LLMD_FAIRNESS_ID",
    "LLMD_INFERENCE_OBJECTIVE",
    "LLMD_MODEL_NAME_REWRITE",
    "LLMD_SLO_TPOT",
    "LLMD_SLO_TTFT",
    "MODEL_NAME_REWRITE",
    "REQUEST_ID",
    "ROUTING_OUTPUTS",
    "CaseInsensitiveHeaders",
    "HeaderValueError",
    "LowerCaseHeaders",
    "clean_request_headers",
    "clean_response_headers",
    "fairness_id_of",
    "lower_case",
    "model_name_rewrite_of",
    "new_request_id",
    "objective_of",
    "scheduling_headers",
    "slo_of",
]


class CaseInsensitiveHeaders(ABC):  # noqa: B024 - a marker: no abstract methods on purpose
    """Header mappings whose lookups ignore case. Request control imports no HTTP library, so a data
    plane registers its header types here (``CaseInsensitiveHeaders.register(CIMultiDictProxy)``)
    and the Director uses them without copying; any other mapping is copied with lower-cased names.
    """


class LowerCaseHeaders(dict[str, str]):
    """Headers whose names are all lower case, looked up by lower-case names (every name the
    request path reads is one): what :func:`lower_case` returns and what the ext_proc server
    builds from Envoy's header map, so neither is copied again on the way through."""


_CASELESS_TYPES: set[type] = {LowerCaseHeaders}
"""Exact types :func:`lower_case` has found to need no copy: an ABC's ``isinstance`` is a
Python-level call, and the Director asks for every request."""


def lower_case(headers: Mapping[str, str]) -> Mapping[str, str]:
    """Headers to look up by lower-case name: a case-insensitive mapping (see
    :class:`CaseInsensitiveHeaders`) or :class:`LowerCaseHeaders` as it is, others copied."""
    if type(headers) in _CASELESS_TYPES:
        return headers
    if isinstance(headers, (LowerCaseHeaders, CaseInsensitiveHeaders)):
        _CASELESS_TYPES.add(type(headers))
        return headers
    return LowerCaseHeaders({k.lower(): v for k, v in headers.items()})


DESTINATION_ENDPOINT = "x-gateway-destination-endpoint"
DESTINATION_ENDPOINT_SUBSET = "x-gateway-destination-endpoint-subset"
DESTINATION_ENDPOINT_SERVED = "x-gateway-destination-endpoint-served"
INFERENCE_OBJECTIVE = "x-gateway-inference-objective"
MODEL_NAME_REWRITE = "x-gateway-model-name-rewrite"
FAIRNESS_ID = "x-gateway-inference-fairness-id"
REQUEST_ID = "x-request-id"

# llm-d-router (v0.10+) spells the three inputs ``x-llm-d-*``; the ``x-gateway-*`` names stay as
# aliases. When a request carries both, the llm-d name wins, as in the reference picker.
LLMD_INFERENCE_OBJECTIVE = "x-llm-d-inference-objective"
LLMD_MODEL_NAME_REWRITE = "x-llm-d-model-name-rewrite"
LLMD_FAIRNESS_ID = "x-llm-d-inference-fairness-id"
# The request's own latency bounds, milliseconds (llm-d's predicted-latency plugins read them);
# the x-slo-* spellings are llm-d's deprecated aliases, read when the llm-d name is absent.
LLMD_SLO_TTFT = "x-llm-d-slo-ttft-ms"
LLMD_SLO_TPOT = "x-llm-d-slo-tpot-ms"
SLO_TTFT = "x-slo-ttft-ms"
SLO_TPOT = "x-slo-tpot-ms"

DEFAULT_FAIRNESS_ID = "default-flow"

# Headers only the gateway may set: a client that sends them must not steer routing.
PREFILLER_HOST_PORT = "x-prefiller-host-port"
"""P/D: the prefill endpoint the decode side's sidecar runs the prefill on (set by the picker only)."""
ROUTING_OUTPUTS = frozenset(
    {DESTINATION_ENDPOINT, DESTINATION_ENDPOINT_SUBSET, DESTINATION_ENDPOINT_SERVED, PREFILLER_HOST_PORT}
)

# Control inputs consumed by the gateway; not forwarded to the model server.
CONTROL_INPUTS = frozenset(
    {
        INFERENCE_OBJECTIVE,
        MODEL_NAME_REWRITE,
        FAIRNESS_ID,
        LLMD_INFERENCE_OBJECTIVE,
        LLMD_MODEL_NAME_REWRITE,
        LLMD_FAIRNESS_ID,
        LLMD_SLO_TTFT,
        LLMD_SLO_TPOT,
        SLO_TTFT,
        SLO_TPOT,
    }
)

# RFC 9110 §7.6.1 connection-specific headers, plus the ones the proxy recomputes itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


def _first(headers: Mapping[str, str], *names: str) -> str | None:
    """The first non-empty value among ``names`` (lower-case header names, lower-cased mapping)."""
    for name in names:
        value = headers.get(name)
        if value:
            return value
    return None


def objective_of(headers: Mapping[str, str]) -> str | None:
    """The InferenceObjective a request names (``x-llm-d-inference-objective``, else the GIE name)."""
    return _first(headers, LLMD_INFERENCE_OBJECTIVE, INFERENCE_OBJECTIVE)


def model_name_rewrite_of(headers: Mapping[str, str]) -> str | None:
    """The target model a request asks for (``x-llm-d-model-name-rewrite``, else the GIE name)."""
    return _first(headers, LLMD_MODEL_NAME_REWRITE, MODEL_NAME_REWRITE)


def fairness_id_of(headers: Mapping[str, str]) -> str:
    """The request's flow (``x-llm-d-inference-fairness-id``, else the GIE name, else the default)."""
    return _first(headers, LLMD_FAIRNESS_ID, FAIRNESS_ID) or DEFAULT_FAIRNESS_ID


class HeaderValueError(ValueError):
    """A control header's value the gateway cannot use; ``header`` names it."""

    def __init__(self, header: str, message: str) -> None:
        super().__init__(message)
        self.header = header


def _milliseconds(name: str, value: str) -> float:
    """``value`` of header ``name`` in seconds; a value that is not a positive number of
    milliseconds is refused (:class:`HeaderValueError`) rather than ignored."""
    try:
        ms = float(value)
    except ValueError:
        raise HeaderValueError(
            name, f"header '{name}' must be a number of milliseconds (got {value[:40]!r})"
        ) from None
    if not math.isfinite(ms) or ms <= 0:
        raise HeaderValueError(
            name, f"header '{name}' must be a positive number of milliseconds (got {value[:40]!r})"
        )
    return ms / 1000.0


_NO_SLO: tuple[float | None, float | None] = (None, None)


def slo_of(headers: Mapping[str, str]) -> tuple[float | None, float | None]:
    """The request's own TTFT and TPOT bounds in seconds (``x-llm-d-slo-ttft-ms``,
    ``x-llm-d-slo-tpot-ms``, or their ``x-slo-*`` aliases when the llm-d name is absent or empty);
    None where not sent. Raises :class:`HeaderValueError` naming a header it cannot use."""
    ttft = headers.get(LLMD_SLO_TTFT)
    ttft_name = LLMD_SLO_TTFT
    if not ttft:
        ttft, ttft_name = headers.get(SLO_TTFT), SLO_TTFT
    tpot = headers.get(LLMD_SLO_TPOT)
    tpot_name = LLMD_SLO_TPOT
    if not tpot:
        tpot, tpot_name = headers.get(SLO_TPOT), SLO_TPOT
    if not ttft and not tpot:  # nearly every request: no parsing
        return _NO_SLO
    return (
        _milliseconds(ttft_name, ttft) if ttft else None,
        _milliseconds(tpot_name, tpot) if tpot else None,
    )


# Request ids only need to be unique, not secret: a generator seeded once from the OS costs a
# fifth of uuid4, which asks the kernel for 16 random bytes on every request.
_ids = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))  # no twin ids across forks


def new_request_id() -> str:
    """A fresh ``x-request-id`` for a request that came without one (32 hex digits, as uuid4's)."""
    return f"{_ids.getrandbits(128):032x}"


# Never handed to scheduling plugins (which may keep a request in the decision log).
CREDENTIALS = frozenset({"authorization", "proxy-authorization", "x-api-key", "cookie"})


def scheduling_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The request headers plugins may read: lower-case names, credentials left out."""
    out = {}
    for k, v in headers.items():
        name = k.lower()
        if name not in CREDENTIALS:
            out[name] = v
    return out


def _connection_tokens(items: Iterable[tuple[str, str]]) -> set[str]:
    """Header names a ``Connection`` header lists (hop-by-hop for this one hop), from every
    ``Connection`` header sent."""
    tokens: set[str] = set()
    for key, value in items:
        if key.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


# What never goes upstream / back to the client, whatever the request (per-request additions:
# the names a Connection header lists, and the caller's ``drop``).
_REQUEST_SKIP = HOP_BY_HOP | ROUTING_OUTPUTS | CONTROL_INPUTS | {"host", "content-length"}
_RESPONSE_SKIP = HOP_BY_HOP | {"content-length", DESTINATION_ENDPOINT_SERVED}


def clean_request_headers(
    headers: Iterable[tuple[str, str]] | Mapping[str, str], *, drop: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """Headers to send upstream: hop-by-hop, host, length and all gateway control headers removed.

    ``content-length`` is dropped because the proxy recomputes it from the body it actually sends.
    """
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    skip = _request_skip(drop if isinstance(drop, tuple) else tuple(drop))
    listed = _connection_tokens(items)
    if listed:
        skip = skip | listed
    return [(k, v) for k, v in items if k.lower() not in skip]


_REQUEST_SKIPS: dict[tuple[str, ...], frozenset[str]] = {}


def _request_skip(drop: tuple[str, ...]) -> frozenset[str]:
    """``_REQUEST_SKIP`` plus the ``drop`` names, made once per ``drop`` (callers pass constants):
    joining the 30-odd names anew for every request cost as much as the filtering itself."""
    skip = _REQUEST_SKIPS.get(drop)
    if skip is None:
        if len(_REQUEST_SKIPS) >= 64:  # a caller that varies ``drop`` per request
            _REQUEST_SKIPS.clear()
        skip = _REQUEST_SKIPS[drop] = _REQUEST_SKIP | {d.lower() for d in drop}
    return skip


def clean_response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers to relay to the client: hop-by-hop and length/encoding framing removed."""
    items = list(headers)
    listed = _connection_tokens(items)
    skip = _RESPONSE_SKIP | listed if listed else _RESPONSE_SKIP
    return [(k, v) for k, v in items if k.lower() not in skip]
