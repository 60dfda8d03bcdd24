"""Runtime knobs of the gateway, with the reference EPP's defaults where it has one.

This module owns :class:`GatewaySettings`: one frozen value object the app builds once (from CLI
flags) and hands to every component, so no component reads flags or the environment itself.
Defaults follow GIE ``pkg/epp/server/options.go`` (§2.8), the utilization saturation detector and
flow-control defaults (§5.1, §5.4) and the metrics intervals (§4.3); values with no reference
counterpart are chosen for a single-process gateway and say so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from infergate.errors import ConfigError

__all__ = ["GatewaySettings"]


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySettings:
    """Every tunable of the running gateway. Times are seconds, sizes bytes."""

    # --- endpoint metrics and health (GIE §4.3, §2.8)
    scrape_interval: float = 0.05
    """How often each endpoint's ``/metrics`` is polled (``--refresh-metrics-interval 50ms``)."""
    scrape_timeout: float = 5.0
    """Timeout of one scrape (the reference's fetch timeout)."""
    scrape_backoff_max: float = 1.0
    """Upper bound of the exponential back-off between failed scrapes of one endpoint."""
    staleness: float = 2.0
    """Metrics older than this take the endpoint out of candidates (``--metrics-staleness-threshold``)."""
    health_interval: float = 1.0
    """Health-probe period (the tutorial's readinessProbe ``periodSeconds: 1``)."""
    health_timeout: float = 1.0
    """Health-probe timeout (readinessProbe ``timeoutSeconds: 1``)."""
    evict_after_failed_probes: int = 3
    """An endpoint leaves rotation (for new requests) at its first failed probe, but the requests in
    flight there are withdrawn only after this many consecutive failed health probes."""
    pool_metrics_interval: float = 5.0
    """Refresh period of the ``inference_pool_*`` gauges (``--refresh-prometheus-metrics-interval``)."""

    # --- upstream requests (data plane)
    retries: int = 1
    """Extra attempts on another endpoint for a request that failed before its first byte."""
    connect_timeout: float = 5.0
    """TCP connect timeout to a model server."""
    request_timeout: float = 86400.0
    """Whole-request timeout to a model server (the reference Envoy route timeout, 86400 s)."""
    first_byte_timeout: float | None = 600.0
    """Timeout for a model server's response head (for a non-streamed answer: the whole answer),
    so a replica that accepted a request and never answers does not hold the client forever;
    ``None`` leaves it to ``request_timeout``. Built-in proxy only."""
    stream_idle_timeout: float = 60.0
    """Once a model server's response head arrived, no body byte for this long fails the response like
    a broken connection (SSE error event, cut plain body). Built-in proxy only."""
    evicted_idle_timeout: float = 1.0
    """A response relaying from an endpoint declared down (``evict_after_failed_probes``) is failed
    once it stays silent this long, or ``evicted_idle_factor`` times the longest gap between bytes
    the stream has shown so far if that is longer; one that keeps sending finishes. Built-in proxy
    only."""
    evicted_idle_factor: float = 4.0
    """See ``evicted_idle_timeout``: the silence window grows with the stream's observed
    inter-token gaps, so slow (e.g. time-scaled) streams are not cut for being slow."""
    max_connections_per_endpoint: int = 256
    """Upstream connection-pool size per model server (vLLM's default ``max_num_seqs``)."""
    max_body_bytes: int = 32 * 1024 * 1024
    """Largest request body accepted (413 above); not limited by the reference, bounded here."""
    max_header_bytes: int = 64 * 1024
    """Largest request line and largest single header field accepted (400 above)."""

    max_client_connections: int = 10000
    """Client connections the inference listener holds at once (built-in proxy and Envoy); more
    are closed at accept. Lowered to fit the process's file-descriptor limit, keeping room for
    the admin port and upstream connections."""
    admin_max_connections: int = 256
    """Connections the admin listener holds at once: its own budget, so a flood on the inference
    port never locks out ``/metrics`` and the probes."""

    idle_timeout: float = 75.0
    """Client connections idle this long (between requests, or with a request head still
    incomplete) are closed by the built-in proxy (aiohttp's keep-alive timeout)."""

    control_headers: str = "auto"
    """Who may send ``x-gateway-inference-objective``, ``x-gateway-model-name-rewrite`` and the
    fairness id: ``auto`` everyone while API keys are off, and only keys with the control-headers
    permission once they are on; ``trusted`` everyone (a gateway in front sets them); ``keys`` only
    such keys. Anyone else sending one gets 403 ``control_header_not_allowed``."""

    # --- request limits (no reference counterpart: the reference leaves these to the model server)
    max_messages: int = 2048
    """Most chat ``messages`` one request may carry (400 ``param: messages`` above)."""
    max_tokens_ceiling: int | None = None
    """Default ceiling on ``max_tokens``/``max_completion_tokens`` (400 above); None: no ceiling."""
    objective_max_tokens: Mapping[str, int] = field(default_factory=dict)
    """Per-objective ceilings (objective name, or model name for requests with no objective);
    they win over ``max_tokens_ceiling`` and over the ``infergate.dev/max-tokens`` annotation."""
    max_n: int | None = 128
    """Most completions one request may ask for (``n``; 400 above); None: no ceiling. A huge ``n``
    makes a model server allocate per sequence until it stalls."""
    vocab_size: int | None = None
    """Prompt token ids must be below this (400 otherwise); None: below 2^31."""
    max_model_len: int | None = None
    """Context length the gateway bounds prompt token-id counts and ``max_tokens`` by (400 above);
    None: the longest ``max_model_len`` the pool's model servers report in ``/v1/models``."""

    # --- saturation and flow control (GIE §5.4-5.6)
    queue_threshold: int = 5
    """Waiting requests per endpoint at which it counts as saturated (``queueDepthThreshold``)."""
    kv_threshold: float = 0.8
    """KV-cache utilisation (0..1) at which an endpoint counts as saturated (``kvCacheUtilThreshold``)."""
    saturation_staleness: float = 0.2
    """Metrics older than this make an endpoint count as saturated (``metricsStalenessThreshold`` 200 ms)."""
    flow_control: bool = True
    """Queue requests in the gateway under saturation, by priority (on by default; the reference
    keeps it behind the ``flowControl`` feature gate). Off = legacy admission, which only sheds
    sheddable (priority < 0) requests with 429."""
    flow_control_headroom: float = 0.2
    """Bands below the top priority (highest objective priority) are admitted/released only while pool
    saturation < 1 - headroom; the top band up to 1.0 (no reference counterpart; 0 = the reference's
    single threshold). Measured in docs/overload.md."""
    request_ttl: float = 60.0
    """How long a request may wait in a flow-control queue before 503 (``defaultRequestTTL``)."""
    max_queued_requests: int = 5000
    """Queued requests per priority band (``defaultPriorityBand.maxRequests``)."""
    max_queued_bytes: int = 10 * 1024**3
    """Queued request bytes per priority band (``defaultPriorityBand.maxBytes`` 10Gi)."""
    max_queued_requests_total: int | None = None
    """Queued requests over all bands (``flowControl.maxRequests``); None: unlimited."""
    max_queued_bytes_total: int | None = None
    """Queued request bytes over all bands (``flowControl.maxBytes``); None: unlimited."""

    # --- scheduling state
    prefix_purge_interval: float = 120.0
    """How often prefix-index entries of endpoints that left the pool are purged (reference: 2 min)."""

    # --- listeners (GIE §2.8)
    grpc_port: int = 9002
    """ext_proc gRPC port of ``infergate epp`` (``--grpc-port``)."""
    grpc_health_port: int = 9003
    """gRPC health port (``--grpc-health-port``)."""
    metrics_port: int = 9090
    """Admin port serving the gateway's own ``/metrics`` (``--metrics-port``)."""

    def __post_init__(self) -> None:
        positive = (
            "scrape_interval",
            "scrape_timeout",
            "scrape_backoff_max",
            "staleness",
            "health_interval",
            "health_timeout",
            "pool_metrics_interval",
            "connect_timeout",
            "request_timeout",
            "stream_idle_timeout",
            "idle_timeout",
            "saturation_staleness",
            "request_ttl",
            "prefix_purge_interval",
            "kv_threshold",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"settings: {name}: must be > 0 (got {getattr(self, name)!r})")
        for name in (
            "max_connections_per_endpoint",
            "max_body_bytes",
            "max_header_bytes",
            "queue_threshold",
            "max_queued_requests",
            "max_queued_bytes",
            "max_messages",
            "evict_after_failed_probes",
            "max_client_connections",
            "admin_max_connections",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"settings: {name}: must be >= 1 (got {getattr(self, name)!r})")
        for name in ("max_queued_requests_total", "max_queued_bytes_total"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"settings: {name}: must be >= 1 or unset (got {value!r})")
        for name in ("max_n", "vocab_size", "max_model_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"settings: {name}: must be >= 1 or unset (got {value!r})")
        if self.max_tokens_ceiling is not None and self.max_tokens_ceiling < 1:
            raise ConfigError(f"settings: max_tokens_ceiling: must be >= 1 (got {self.max_tokens_ceiling!r})")
        for name, value in self.objective_max_tokens.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(
                    f"settings: objective_max_tokens[{name}]: must be an integer >= 1 (got {value!r})"
                )
        if not 0.0 <= self.flow_control_headroom < 1.0:
            raise ConfigError(
                f"settings: flow_control_headroom: must be in [0, 1) (got {self.flow_control_headroom!r})"
            )
        if self.control_headers not in ("auto", "trusted", "keys"):
            raise ConfigError(
                f"settings: control_headers: must be auto, trusted or keys (got {self.control_headers!r})"
            )
        if self.retries < 0:
            raise ConfigError(f"settings: retries: must be >= 0 (got {self.retries!r})")
        if self.evicted_idle_factor < 0:
            raise ConfigError(
                f"settings: evicted_idle_factor: must be >= 0 (got {self.evicted_idle_factor!r})"
            )
        if self.evicted_idle_timeout < 0:
            got = self.evicted_idle_timeout
            raise ConfigError(f"settings: evicted_idle_timeout: must be >= 0 (got {got!r})")
        if self.first_byte_timeout is not None and self.first_byte_timeout <= 0:
            raise ConfigError(f"settings: first_byte_timeout: must be > 0 (got {self.first_byte_timeout!r})")
        for name in ("grpc_port", "grpc_health_port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"settings: {name}: must be a port number (got {getattr(self, name)!r})")

    def replace(self, **changes: Any) -> GatewaySettings:
        """A copy with ``changes`` applied (validated); ``None`` values are ignored, for CLI options."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - fields
        if unknown:
            raise ConfigError(f"settings: unknown setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
