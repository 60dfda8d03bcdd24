"""Every runtime setting of a gateway process, in one model with nested groups.

This module owns :class:`Settings`: the one frozen value the CLI builds (``infergate.config.layers``
merges defaults < ``--settings FILE`` < ``INFERGATE_*`` env < flags) and hands to the composition
root, which hands each group to the component that reads it (each component has a ``from_settings``).
No component reads flags or the environment itself. The routing configuration (plugins, profiles:
``EndpointPickerConfig``) is separate: it says *how* to pick, these say how the process runs.

Adding a setting is adding one field here (with a docstring: it becomes the reference in
docs/configuration.md via ``scripts/gen_settings_doc.py``) and reading it in the component's
``from_settings``; ``tests/unit/test_settings.py`` fails for a field that changes nothing.

Defaults follow GIE ``pkg/epp/server/options.go`` (§2.8), the utilization saturation detector and
flow-control defaults (§5.1, §5.4) and the metrics intervals (§4.3); values with no reference
counterpart are chosen for a single-process gateway and say so.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from infergate.net.tls_options import GO_CIPHER_SUITES

__all__ = [
    "DATA_PLANE_NAMES",
    "ENV_PREFIX",
    "RANKED_USAGE_LIMITS",
    "AuthSettings",
    "FlowControlSettings",
    "KubernetesSettings",
    "LimitsSettings",
    "ListenerSettings",
    "LoggingSettings",
    "ProxySettings",
    "ScrapeSettings",
    "Settings",
    "parse_byte_size",
    "parse_duration",
]

ENV_PREFIX = "INFERGATE_"
"""Environment variables ``INFERGATE_<FIELD>`` and ``INFERGATE_<GROUP>__<FIELD>`` set settings."""

DATA_PLANE_NAMES = ("builtin", "envoy", "epp")
"""The data planes a gateway can run (``infergate.dataplanes.DATA_PLANES`` maps them to factories)."""

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds of a Go duration (``50ms``, ``2s``, ``1m30s``) as the reference's flags take; a bare
    number is seconds. Raises ValueError."""
    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"invalid duration {text!r} (e.g. 50ms, 2s, 1m)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _duration(value: object) -> object:
    return parse_duration(value) if isinstance(value, str) else value


Seconds = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
"""A positive time in seconds; also accepts Go durations (``50ms``) from files, env and flags."""
Port = Annotated[int, Field(ge=0, le=65535)]

_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m|[eE][+-]?\d+)?$")
_QUANTITY_FACTORS = {
    **{s: 1024**i for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), 1)},
    **{s: 1000**i for i, s in enumerate(("k", "M", "G", "T", "P", "E"), 1)},
}


def parse_byte_size(text: str) -> int:
    """Bytes of a Kubernetes quantity (``10Mi``, ``25M``, ``4194304``, ``1e6``) as the reference's
    size flags take it, a trailing ``B`` allowed (``10MiB``, ``25MB``). Raises ValueError for
    anything else, a fraction of a byte or a negative size."""
    value = text.strip()
    if len(value) > 1 and value[-1] in "Bb":
        value = value[:-1]
    match = _QUANTITY.match(value)
    if match is None:
        raise ValueError(f"invalid size {text!r} (e.g. 10MiB, 25MB, 4194304)")
    number, suffix = match.groups()
    exact = Decimal(number)
    if suffix is None:
        pass
    elif suffix == "m":
        exact /= 1000
    elif suffix[0] in "eE":
        exact = exact.scaleb(int(suffix[1:]))
    else:
        exact *= _QUANTITY_FACTORS[suffix]
    if exact < 0:
        raise ValueError(f"size {text!r} is negative")
    if exact != exact.to_integral_value():
        raise ValueError(f"size {text!r} is not a whole number of bytes")
    return int(exact)


def _byte_size(value: object) -> object:
    return parse_byte_size(value) if isinstance(value, str) else value


ByteSize = Annotated[int, BeforeValidator(_byte_size), Field(ge=0)]
"""A size in bytes; also accepts Kubernetes quantities (``10Mi``, ``25MB``) from files, env and flags."""


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


def _go_suite(value: object) -> object:
    if isinstance(value, str) and value not in GO_CIPHER_SUITES:
        known = ", ".join(GO_CIPHER_SUITES)
        raise ValueError(f"{value!r} is not a TLS 1.2 cipher suite infergate offers (known: {known})")
    return value


GoCipherSuite = Annotated[str, BeforeValidator(_go_suite)]


class ListenerSettings(_Group):
    """Where the gateway listens and how many client connections each listener holds."""

    host: str = "0.0.0.0"
    """Bind address of every listener (inference, admin, ext_proc, gRPC health); ``up``: 127.0.0.1."""
    port: Port | None = None
    """Inference listener port; unset: the Gateway manifest's listener port (8080 if that fails)."""
    admin_port: Port = 9090
    """Admin port: ``/metrics``, ``/healthz``, ``/readyz``, ``/debug``, the live view
    (``--admin-port``, ``--metrics-port`` for ``epp``)."""
    grpc_port: Port = 9002
    """ext_proc gRPC port of the ``epp`` data plane (``--grpc-port``)."""
    grpc_health_port: Port = 9003
    """Plaintext gRPC health port of the ``epp`` data plane, what the kubelet probes."""
    envoy_picker_port: Port = 0
    """The picker's private ext_proc port behind the local Envoy of the ``envoy`` data plane
    (``up --grpc-port``; 0: a free port). With ``proxy.workers`` N, the N ports from this one on."""
    envoy_admin_port: Port = 0
    """Admin port of the local Envoy of the ``envoy`` data plane (``up --envoy-admin-port``; 0: a
    free port)."""
    secure_serving: bool = True
    """TLS on the ``epp`` ext_proc port (self-signed unless ``cert_path``)."""
    cert_path: Path | None = None
    """Directory with ``tls.crt`` and ``tls.key`` for ``secure_serving``."""
    cert_reload: bool = False
    """Load ``cert_path``'s pair again when its files change (a rotated certificate), for the
    connections made after (``--enable-cert-reload``)."""
    tls_min_version: Literal["VersionTLS12", "VersionTLS13"] | None = None
    """Oldest TLS version the ext_proc port accepts, in Go's names (unset: TLS 1.2)."""
    tls_cipher_suites: tuple[GoCipherSuite, ...] = ()
    """TLS 1.2 cipher suites the ext_proc port offers, in Go's names (unset: OpenSSL's defaults)."""
    grpc_max_recv_msg_size: ByteSize = 16 << 20
    """Largest gRPC message the ext_proc port takes (a buffered request body rides in one);
    larger ends the stream with RESOURCE_EXHAUSTED (``--grpc-max-recv-msg-size``; 0: 16 MiB)."""
    grpc_max_send_msg_size: ByteSize = 0
    """Largest gRPC message the ext_proc port sends (a rewritten body rides in one); larger ends
    the stream with RESOURCE_EXHAUSTED (``--grpc-max-send-msg-size``; 0: no limit)."""
    grpc_stream_metrics: bool = False
    """Export ``llm_d_epp_extproc_streams_inflight``, ``..._stream_duration_seconds`` and
    ``..._streams_total{code}`` for the ext_proc streams (``--enable-grpc-stream-metrics``)."""
    max_client_connections: int = Field(default=10000, ge=1)
    """Client connections the inference listener holds at once (built-in proxy and Envoy); more
    are closed at accept. Lowered to fit the process's file-descriptor limit."""
    admin_max_connections: int = Field(default=256, ge=1)
    """Connections the admin listener holds at once: its own budget, so a flood on the inference
    port never locks out ``/metrics`` and the probes."""
    idle_timeout: Seconds = 75.0
    """Client connections idle this long (between requests, or with a request head still
    incomplete) are closed (built-in proxy; Envoy's request-headers timeout)."""


class ProxySettings(_Group):
    """How requests are forwarded to model servers and how the process drains."""

    retries: int = Field(default=1, ge=0)
    """Extra attempts on another endpoint for a request that failed before its first byte. Envoy:
    on the same endpoint, and only when no byte of the request reached it."""
    connect_timeout: Seconds = 5.0
    """TCP connect timeout to a model server."""
    request_timeout: Seconds = 86400.0
    """Whole-request timeout to a model server (the reference Envoy route timeout, 86400 s)."""
    first_byte_timeout: Seconds | None = 600.0
    """Timeout for a model server's response head (for a non-streamed answer: the whole answer);
    unset leaves it to ``request_timeout``. Envoy: the route's ``per_try_timeout``."""
    stream_idle_timeout: Seconds = 60.0
    """Once a response head arrived, no body byte for this long fails the response like a broken
    connection (SSE error event, cut plain body). Envoy: the route's ``idle_timeout``, at least
    ``first_byte_timeout`` (Envoy's idle timer also runs while the head is awaited)."""
    evicted_idle_timeout: float = Field(default=1.0, ge=0)
    """A response relaying from an endpoint declared down (``scrape.evict_after_failed_probes``) is
    failed once it stays silent this long, or ``evicted_idle_factor`` times the longest gap between
    bytes so far if that is longer. Built-in proxy only."""
    evicted_idle_factor: float = Field(default=4.0, ge=0)
    """See ``evicted_idle_timeout``: slow (e.g. time-scaled) streams are not cut for being slow."""
    max_connections_per_endpoint: int = Field(default=256, ge=1)
    """Upstream connections per model server (vLLM's default ``max_num_seqs``); requests past it
    wait in the built-in proxy and count toward saturation."""
    served_header: bool = False
    """Add ``x-gateway-destination-endpoint-served`` to responses (``--debug-headers``)."""
    shutdown_grace: float = Field(default=10.0, ge=0)
    """Drain time for requests in flight on SIGTERM (``--grace``)."""
    workers: int = Field(default=1, ge=1)
    """Processes serving requests (``--workers``): the built-in proxy, or the ext_proc picker of
    ``envoy`` and ``epp``. Above 1, the gateway process scrapes the pool and publishes each scrape
    to the workers; each schedules on every worker's in-flight counts and queues (flow control) on
    its own. Built-in workers share the listening socket; ``envoy`` gives each picker worker its
    own loopback port (from ``listeners.envoy_picker_port`` on, one per worker); ``epp`` workers share
    ``listeners.grpc_port`` with SO_REUSEPORT. See docs/operations.md#worker-processes."""


class ScrapeSettings(_Group):
    """Polling of each model server's metrics and health (GIE §4.3, §2.8)."""

    interval: Seconds = 0.05
    """How often each endpoint's ``/metrics`` is polled (``--refresh-metrics-interval``)."""
    timeout: Seconds = 5.0
    """Timeout of one ``/metrics`` scrape (the reference's fetch timeout)."""
    backoff_max: Seconds = 1.0
    """Upper bound of the exponential back-off between failed scrapes of one endpoint."""
    staleness: Seconds = 2.0
    """Metrics older than this take the endpoint out of candidates (``--metrics-staleness-threshold``)."""
    health_interval: Seconds = 1.0
    """Health-probe period (the tutorial's readinessProbe ``periodSeconds: 1``)."""
    health_timeout: Seconds = 1.0
    """Health-probe timeout (readinessProbe ``timeoutSeconds: 1``)."""
    evict_after_failed_probes: int = Field(default=3, ge=1)
    """An endpoint leaves rotation at its first failed probe; requests in flight there are withdrawn
    only after this many consecutive failed probes."""
    pool_metrics_interval: Seconds = 5.0
    """Refresh period of the ``inference_pool_*`` gauges (``--refresh-prometheus-metrics-interval``)."""


RANKED_USAGE_LIMITS = ("priority-holdback", "soft-reflective-ceiling")
"""The ``flow_control.usage_limit`` policies whose ceilings depend on the priorities in use (the
only readers of ``flow_control.priority_bands``)."""


class FlowControlSettings(_Group):
    """Saturation detection and the gateway's priority queues (GIE §5.4-5.6)."""

    enabled: bool = True
    """Queue requests in the gateway under saturation, by priority (``--flow-control``). Off =
    legacy admission, which only sheds sheddable (priority < 0) requests with 429."""
    usage_limit: Literal["headroom", "static", "priority-holdback", "soft-reflective-ceiling"] = "headroom"
    """How far the pool may fill before a band waits (the reference's ``usageLimitPolicyPluginRef``):
    ``headroom`` the top band up to saturation 1.0, the others up to ``1 - headroom``; ``static``
    every band up to ``usage_limit_ceiling``; ``priority-holdback`` ceilings spread linearly from
    ``usage_limit_ceiling`` (highest priority in use) to ``usage_limit_min_ceiling`` (lowest);
    ``soft-reflective-ceiling`` band i of N open below ``1 - i x saturation / (N - 1)``, past it
    open one decision in ``saturation / (1 - saturation)``. See docs/flow-control.md."""
    headroom: float = Field(default=0.2, ge=0.0, lt=1.0)
    """With ``usage_limit: headroom``: bands below the top priority are admitted/released only while
    pool saturation < 1 - headroom; the top band up to 1.0 (0 = the reference's single threshold)."""
    usage_limit_ceiling: float = Field(default=1.0, gt=0.0, le=1.0)
    """``static``: every band's ceiling (``threshold``); ``priority-holdback``: the highest
    priority's (``maxCeiling``). Other policies refuse a value below 1."""
    usage_limit_min_ceiling: float | None = Field(default=None, ge=0.0, lt=1.0)
    """``priority-holdback``: the lowest priority's ceiling (``minCeiling``, required there, below
    ``usage_limit_ceiling``); refused with other policies."""
    usage_limit_domain: Literal["rank", "value"] = "rank"
    """``priority-holdback``: steps by rank among the priorities in use, or in proportion to their
    values (``domain``); ``value`` refused with other policies."""
    priority_bands: tuple[int, ...] = ()
    """Priorities of statically configured bands, as llm-d-router's
    ``flowControl.priorityBands[].priority`` (a picker config's bands land here when its policy
    ranks): ``priority-holdback`` and ``soft-reflective-ceiling`` count them among the priorities in
    use from the start and never drop them when idle. Refused with ``headroom`` and ``static``,
    which rank nothing; a priority listed twice is refused too."""
    request_ttl: Seconds = 60.0
    """How long a request may wait in a queue while the pool has a ready endpoint, then 429
    ``rejected-ttl-expired`` (``defaultRequestTTL``)."""
    no_endpoint_request_ttl: Annotated[float, BeforeValidator(_duration), Field(ge=0)] | None = None
    """How long a request may wait while the pool has no ready endpoint (scale from zero), then 503
    ``rejected-no-endpoints`` (``noEndpointRequestTTL``); unset: ``request_ttl``; 0: until an
    endpoint comes or the client leaves."""

    @property
    def longest_queue_wait(self) -> float:
        """The longest a request can wait in flow control (bounds data-plane timeouts); one day when
        waiting for an endpoint is unbounded."""
        empty = self.no_endpoint_request_ttl
        if empty is None:
            return self.request_ttl
        return max(self.request_ttl, empty if empty > 0 else 86400.0)

    ordering: Literal["fcfs", "slo-deadline"] = "fcfs"
    """The order of the queued requests of one flow (one fairness id in one band): ``fcfs`` first
    come first served; ``slo-deadline`` the earliest arrival plus ``x-llm-d-slo-ttft-ms`` first,
    requests without that header after every request with it (``orderingPolicyRef:
    slo-deadline-ordering-policy``). Flows still take turns and bands still go by priority."""
    fairness: Literal["round-robin", "global-strict", "program-aware"] = "round-robin"
    """How the flows of one band (its fairness ids) share it: ``round-robin`` takes turns, so one
    tenant's burst cannot starve another; ``global-strict`` serves the band as one queue in
    ``ordering``'s order, whichever flow it is from (``fairnessPolicyRef:
    global-strict-fairness-policy``, llm-d-router's default); ``program-aware`` serves the flow
    that has consumed least (input + 2 x output tokens, decayed; ``program-aware-fairness``)."""
    program_service_weight: float = Field(default=0.8, ge=0.0)
    """``program-aware``: weight of a flow's (inverted) attained service (``lasWeightService``)."""
    program_wait_weight: float = Field(default=0.2, ge=0.0)
    """``program-aware``: weight of its head request's wait (``lasWeightHeadWait``)."""
    program_half_life: Annotated[float, BeforeValidator(_duration), Field(ge=0)] = 60.0
    """``program-aware``: half-life of attained service (``lasHalfLifeSeconds``); 0: no decay."""
    program_idle_ttl: Annotated[float, BeforeValidator(_duration), Field(ge=0)] = 3600.0
    """``program-aware``: a program with nothing in flight and no completion for this long is
    forgotten (``evictionTtlSeconds``)."""
    program_sweep_interval: Seconds = 300.0
    """``program-aware``: how often idle programs are looked for (``evictionSweepSeconds``)."""
    max_queued_requests: int = Field(default=5000, ge=1)
    """Queued requests per priority band (``defaultPriorityBand.maxRequests``)."""
    max_queued_bytes: int = Field(default=10 * 1024**3, ge=1)
    """Queued request bytes per priority band (``defaultPriorityBand.maxBytes``, 10Gi)."""
    max_queued_requests_total: int | None = Field(default=None, ge=1)
    """Queued requests over all bands (``flowControl.maxRequests``); unset: unlimited."""
    max_queued_bytes_total: int | None = Field(default=None, ge=1)
    """Queued request bytes over all bands (``flowControl.maxBytes``); unset: unlimited."""
    detector: Literal["utilization", "concurrency"] = "utilization"
    """How saturation is judged: ``utilization`` from what the model servers report (queue, KV
    cache; the settings below), ``concurrency`` from the gateway's in-flight counts against a
    fixed capacity per endpoint (``concurrency-detector``; the ``*concurrency*`` settings)."""
    concurrency_mode: Literal["requests", "tokens", "hybrid"] = "requests"
    """``concurrency``: count requests, estimated prompt tokens, or per endpoint the fuller of both."""
    max_concurrency: int = Field(default=100, ge=1)
    """``concurrency``: requests one endpoint holds at capacity (``maxConcurrency``)."""
    max_token_concurrency: int = Field(default=1_000_000, ge=1)
    """``concurrency``: prompt tokens in flight one endpoint holds at capacity (``maxTokenConcurrency``)."""
    queue_threshold: int = Field(default=5, ge=1)
    """Waiting requests per endpoint at which it counts as saturated (``queueDepthThreshold``)."""
    kv_threshold: float = Field(default=0.8, gt=0)
    """KV-cache utilisation (0..1) at which an endpoint counts as saturated (``kvCacheUtilThreshold``)."""
    saturation_staleness: Seconds = 0.2
    """Metrics older than this make an endpoint count as saturated (``metricsStalenessThreshold``)."""
    frontend_wait: Seconds | None = 0.25
    """Seconds of its own throughput a model server may hold beyond what its metrics report
    (requests the gateway sent that it shows neither running nor waiting: in vLLM's API server,
    being tokenised) before it counts as saturated; the allowance is ``max(queue_threshold,
    completions per second x this)``, and the server's waiting queue counts against it too (a fast
    server drains a few waiting requests in milliseconds). Needs the server's finished-requests
    counter (vLLM's and trtllm-serve's ``request_success_total``, SGLang's ``num_requests_total``;
    an endpoint without one is named in a warning); unset (``null``): not counted, the reference's
    rule."""
    tpot_slo: Seconds = 0.05
    """The time-per-output-token bound the decode guard holds requests for: while the 90th
    percentile of the TPOTs streamed requests reported over the last ``ttft_slo`` seconds is at or
    above it (and their 10th percentile below it), newcomers wait up to ``tpot_hold`` so the
    running batches stop growing. The pool's TPOT SLO, shared with the predicted-latency scorer
    (its ``tpotSloSeconds``, when given, sets this; set here, it reaches a scorer that gives none;
    two values are refused)."""
    ttft_slo: Seconds = 1.0
    """The time-to-first-token bound the decode guard spends: it holds only while the 90th
    percentile of recent TTFTs (from dispatch) plus ``tpot_hold`` stays within it. Set it to the
    pool's TTFT SLO, shared with the predicted-latency scorer as ``tpot_slo`` is (``ttftSloSeconds``)."""
    tpot_hold: Annotated[float, BeforeValidator(_duration), Field(ge=0)] | None = None
    """Longest a request waits for the decode guard (time to first token spent on the running
    streams' TPOT); unset: half of ``ttft_slo`` (0.5 s by default); 0 turns the guard off. The guard
    judges over the last ``ttft_slo`` seconds of reports, so with both unset it scales with the SLO
    (a pool of slower replicas, e.g. a bigger model, is told a larger SLO and nothing else)."""

    @model_validator(mode="after")
    def _concurrency_fields(self) -> FlowControlSettings:
        """The concurrency detector's settings are refused with the utilization detector."""
        if self.detector != "concurrency":
            for name, default in (("concurrency_mode", "requests"), ("max_concurrency", 100)):
                if getattr(self, name) != default:
                    raise ValueError(f"{name}: read only with detector: concurrency")
            if self.max_token_concurrency != 1_000_000:
                raise ValueError("max_token_concurrency: read only with detector: concurrency")
        return self

    @model_validator(mode="after")
    def _program_fields(self) -> FlowControlSettings:
        """The program-aware parameters are refused with another fairness policy (they would do
        nothing)."""
        if self.fairness != "program-aware":
            for name, default in _PROGRAM_DEFAULTS.items():
                if getattr(self, name) != default:
                    raise ValueError(f"{name}: read only with fairness: program-aware, not {self.fairness}")
        return self

    @model_validator(mode="after")
    def _usage_limit_fields(self) -> FlowControlSettings:
        """A usage-limit field the chosen policy does not read is an error, not a silent no-op."""
        policy = self.usage_limit
        bands = self.priority_bands
        if bands and policy not in RANKED_USAGE_LIMITS:
            readers = " and ".join(RANKED_USAGE_LIMITS)
            raise ValueError(f"priority_bands: read only by {readers}, not by {policy}")
        twice = next((p for i, p in enumerate(bands) if p in bands[:i]), None)
        if twice is not None:
            raise ValueError(f"priority_bands: {twice} listed twice (one band per priority)")
        if policy == "priority-holdback":
            low = self.usage_limit_min_ceiling
            if low is None:
                raise ValueError("usage_limit_min_ceiling: required with usage_limit: priority-holdback")
            if low >= self.usage_limit_ceiling:
                high = self.usage_limit_ceiling
                raise ValueError(
                    f"usage_limit_min_ceiling: {low:g} must be below usage_limit_ceiling ({high:g})"
                )
            return self
        if self.usage_limit_min_ceiling is not None:
            raise ValueError(f"usage_limit_min_ceiling: read only by priority-holdback, not by {policy}")
        if self.usage_limit_domain != "rank":
            raise ValueError(f"usage_limit_domain: read only by priority-holdback, not by {policy}")
        if policy != "static" and self.usage_limit_ceiling != 1.0:
            raise ValueError(f"usage_limit_ceiling: read by static and priority-holdback, not by {policy}")
        return self


_PROGRAM_DEFAULTS = {
    "program_service_weight": 0.8,
    "program_wait_weight": 0.2,
    "program_half_life": 60.0,
    "program_idle_ttl": 3600.0,
    "program_sweep_interval": 300.0,
}


class LimitsSettings(_Group):
    """What one request may carry (no reference counterpart: it leaves these to the model server)."""

    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    """Largest request body accepted (413 above), built-in proxy and ext_proc."""
    max_header_bytes: int = Field(default=64 * 1024, ge=1)
    """Largest request line and single header field accepted (400 above), built-in proxy."""
    max_messages: int = Field(default=2048, ge=1)
    """Most chat ``messages`` one request may carry (400 ``param: messages`` above)."""
    max_tokens_ceiling: int | None = Field(default=None, ge=1)
    """Default ceiling on ``max_tokens``/``max_completion_tokens`` (400 above); unset: none."""
    objective_max_tokens: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    """Per-objective ceilings (objective name, or model name for requests with no objective); they
    win over ``max_tokens_ceiling`` and over the ``infergate.dev/max-tokens`` annotation."""
    max_n: int | None = Field(default=128, ge=1)
    """Most completions (``n``) one request may ask for (400 above); unset: no ceiling. A huge ``n``
    makes a model server allocate per sequence until it stalls."""
    vocab_size: int | None = Field(default=None, ge=1)
    """Prompt token ids must be below this (400 otherwise); unset: below 2^31."""
    max_model_len: int | None = Field(default=None, ge=1)
    """Context length bounding prompt token-id counts and ``max_tokens`` (400 above); unset: the
    longest ``max_model_len`` the pool's model servers list in ``/v1/models``."""


class AuthSettings(_Group):
    """Who may use the inference listener, the admin port and the control headers."""

    api_keys: Path | None = None
    """API keys for the inference listener: a YAML/JSON file of key -> allowed objectives, or Secret
    manifests (``--api-keys``). Secrets labelled ``infergate.dev/api-keys`` are added. Unset: open."""
    control_headers: Literal["auto", "trusted", "keys"] = "auto"
    """Who may send the objective, model-rewrite, fairness-id and latency-bound (``x-llm-d-slo-*``)
    headers: ``auto`` everyone while API keys are off and only permitted keys once they are on;
    ``trusted`` everyone; ``keys`` only permitted keys."""
    metrics_auth: Literal["disabled", "token", "kubernetes"] = "disabled"
    """Protection of the admin ``/metrics`` and ``/debug``: ``token`` (bearer tokens from
    ``metrics_token_file``, else one generated and printed), ``kubernetes`` (TokenReview, ``epp
    --pool-name`` only) or ``disabled``. ``up`` defaults to token, ``epp --pool-name`` to kubernetes."""
    metrics_token_file: Path | None = None
    """Bearer tokens, one a line, for ``metrics_auth: token``."""
    metrics_cert_dir: Path | None = None
    """Serve the admin port over HTTPS with this directory's ``tls.crt`` and ``tls.key``, loaded
    again when they change (``--metrics-cert-dir``). Refused at start without
    ``metrics_client_ca_file`` or a ``metrics_auth``: TLS alone would only encrypt an open port."""
    metrics_client_ca_file: Path | None = None
    """With ``metrics_cert_dir``: every admin request must present a client certificate signed by
    a CA of this PEM file (mTLS, ``--metrics-client-ca-file``)."""


class LoggingSettings(_Group):
    """The process log on stderr."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """Least severe level logged (``up``: warning, or info with ``--quiet``); ``debug`` is
    infergate's own loggers, the libraries' stay at ``info``."""
    format: Literal["text", "json"] = "text"
    """``text`` (control characters escaped) or ``json`` (one object per line)."""


class KubernetesSettings(_Group):
    """The ``epp --pool-name`` pool source: which InferencePool to watch, and how."""

    pool_namespace: str | None = None
    """Namespace of the pool (unset: ``$NAMESPACE``, else ``default``)."""
    kubeconfig: Path | None = None
    """Kubeconfig file (unset: in-cluster credentials, else ``$KUBECONFIG``/``~/.kube/config``)."""
    write_status: bool = True
    """Write the InferencePool's ``status.parents`` conditions."""
    endpoint_selector: str | None = None
    """Standalone mode (``epp --endpoint-selector``): the label selector of the model-server Pods
    in the namespace, in Kubernetes' string syntax, instead of an InferencePool."""
    endpoint_target_ports: tuple[int, ...] = ()
    """Standalone mode: the model servers' ports (1 to 8), as an InferencePool's ``targetPorts``."""


class Settings(BaseSettings):
    """Every setting of a gateway process; see docs/configuration.md for the generated reference."""

    data_plane: Literal["builtin", "envoy", "epp"] = "builtin"
    """``builtin`` (asyncio proxy on the listener), ``envoy`` (Envoy on the listener, calling the
    picker over ext_proc on a private port) or ``epp`` (ext_proc picker only, on ``grpc_port``)."""
    pool: str | None = None
    """The InferencePool to serve: needed when the manifests hold several; ``epp --pool-name``."""
    emit_endpoint_scores: bool = False
    """Send every candidate's score to the data plane (ext_proc dynamic metadata ``envoy.lb``
    ``x-gateway-destination-endpoint-scores``; ``--emit-endpoint-scores``)."""
    subset_filter: bool = True
    """Honour the data plane's endpoint-subset hint (Envoy/ext_proc only; the built-in proxy never
    lets a client narrow routing). ``--disable-endpoint-subset-filter`` turns it off."""
    seed: int | None = None
    """Seed of the random choices (tie-breaks, weighted rewrites); unset: random each run."""
    listeners: ListenerSettings = Field(default_factory=ListenerSettings)
    proxy: ProxySettings = Field(default_factory=ProxySettings)
    scrape: ScrapeSettings = Field(default_factory=ScrapeSettings)
    flow_control: FlowControlSettings = Field(default_factory=FlowControlSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the arguments: ``Settings()`` is the defaults, whatever the environment holds.

        The layers (file, env, flags) are read and merged by ``infergate.config.layers``, which also
        records where each value came from.
        """
        return (init_settings,)

    def replace(self, changes: dict[str, Any]) -> Settings:
        """A validated copy with ``changes`` (dotted paths such as ``scrape.interval``) applied;
        raises ConfigError naming a bad or unknown setting."""
        from infergate.config.layers import merge, nest, validate

        return validate(merge(self.model_dump(), nest(changes)))
