"""The gateway's own Prometheus metrics, under the reference endpoint picker's names.

Dashboards built for the Gateway API Inference Extension read ``inference_objective_*``,
``inference_pool_*`` and ``inference_extension_*``; keeping the names, types, labels and buckets
identical lets them work unchanged. All metrics live on one :class:`GatewayMetrics` object with its
own registry, so tests and several gateways in one process never collide on the global registry.
Components accept ``metrics: GatewayMetrics | None`` and record nothing when it is ``None``.
This module imports nothing from infergate.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["GatewayMetrics"]

_DURATION_BUCKETS = (
    0.005,
    0.025,
    0.05,
    0.1,
    0.2,
    0.4,
    0.6,
    0.8,
    1.0,
    1.25,
    1.5,
    2,
    3,
    4,
    5,
    6,
    8,
    10,
    15,
    20,
    30,
    45,
    60,
    120,
    180,
    240,
    300,
    360,
    480,
    600,
    900,
    1200,
    1800,
    2700,
    3600,
)
_TPOT_BUCKETS = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.06,
    0.08,
    0.1,
    0.125,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.8,
    1,
    1.5,
    2,
    3,
    4.5,
    6,
    12,
    18,
    24,
    30,
    36,
    48,
    60,
    120,
    180,
    240,
    300,
    360,
    480,
    600,
    900,
    1200,
    1800,
    2700,
    3600,
)
_REQUEST_SIZE_BUCKETS = (*(float(64 * 4**i) for i in range(13)), float(1 << 30))  # 64 B … 1 GiB
_TOKEN_BUCKETS = tuple(float(1 << i) for i in range(17))  # 1 … 65536
_SCHEDULER_BUCKETS = (
    0.0001,
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
)
_PLUGIN_BUCKETS = (
    0.00001,
    0.00002,
    0.00005,
    0.0001,
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
)
_QUEUE_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
_RATIO_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

_OBJ = ("model_name", "target_model_name")
_FLOW = ("fairness_id", "priority", "inference_pool", "model_name", "target_model_name")


class GatewayMetrics:
    """Every metric the gateway exports, registered on one registry.

    Attribute names are the reference metric names without their family prefix.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry

        # --- per objective (model) ------------------------------------------------------------
        self.request_total = Counter(
            "inference_objective_request", "Requests scheduled, per model.", (*_OBJ, "priority"), registry=r
        )
        self.request_error_total = Counter(
            "inference_objective_request_error",
            "Requests that failed, per error code.",
            (*_OBJ, "error_code"),
            registry=r,
        )
        self.request_duration = Histogram(
            "inference_objective_request_duration_seconds",
            "End-to-end request latency.",
            _OBJ,
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.request_ttft = Histogram(
            "inference_objective_request_ttft_seconds",
            "Time to the first response byte.",
            _OBJ,
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.normalized_tpot = Histogram(
            "inference_objective_normalized_time_per_output_token_seconds",
            "Request latency divided by the number of output tokens.",
            _OBJ,
            buckets=_TPOT_BUCKETS,
            registry=r,
        )
        self.request_sizes = Histogram(
            "inference_objective_request_sizes",
            "Request body size in bytes.",
            _OBJ,
            buckets=_REQUEST_SIZE_BUCKETS,
            registry=r,
        )
        self.response_sizes = Histogram(
            "inference_objective_response_sizes",
            "Response body size in bytes.",
            _OBJ,
            buckets=_REQUEST_SIZE_BUCKETS,
            registry=r,
        )
        self.input_tokens = Histogram(
            "inference_objective_input_tokens",
            "Prompt tokens per request (from usage).",
            _OBJ,
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.output_tokens = Histogram(
            "inference_objective_output_tokens",
            "Completion tokens per request (from usage).",
            _OBJ,
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.prompt_cached_tokens = Histogram(
            "inference_objective_prompt_cached_tokens",
            "Prompt tokens served from the prefix cache.",
            _OBJ,
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.running_requests = Gauge(
            "inference_objective_running_requests",
            "Requests in flight through the gateway.",
            ("model_name",),
            registry=r,
        )

        # --- per pool -----------------------------------------------------------------------
        self.pool_average_kv_cache_utilization = Gauge(
            "inference_pool_average_kv_cache_utilization",
            "Mean KV-cache use of the pool's ready endpoints.",
            ("name",),
            registry=r,
        )
        self.pool_average_queue_size = Gauge(
            "inference_pool_average_queue_size",
            "Mean waiting-queue length of the pool's ready endpoints.",
            ("name",),
            registry=r,
        )
        self.pool_average_running_requests = Gauge(
            "inference_pool_average_running_requests",
            "Mean running requests of the pool's ready endpoints.",
            ("name",),
            registry=r,
        )
        self.pool_ready_pods = Gauge(
            "inference_pool_ready_pods", "Endpoints with fresh metrics.", ("name",), registry=r
        )
        self.pool_per_pod_queue_size = Gauge(
            "inference_pool_per_pod_queue_size",
            "Waiting-queue length per endpoint.",
            ("name", "model_server_pod"),
            registry=r,
        )

        # --- scheduler ------------------------------------------------------------------------
        self.scheduler_e2e_duration = Histogram(
            "inference_extension_scheduler_e2e_duration_seconds",
            "Time of one whole scheduling cycle.",
            buckets=_SCHEDULER_BUCKETS,
            registry=r,
        )
        self.scheduler_attempts_total = Counter(
            "inference_extension_scheduler_attempts",
            "Scheduling cycles by outcome.",
            ("status", "target_model_name", "pod_name", "namespace", "port"),
            registry=r,
        )
        self.plugin_duration = Histogram(
            "inference_extension_plugin_duration_seconds",
            "Time spent in one plugin call.",
            ("extension_point", "plugin_type", "plugin_name"),
            buckets=_PLUGIN_BUCKETS,
            registry=r,
        )
        self.prefix_indexer_size = Gauge(
            "inference_extension_prefix_indexer_size",
            "Entries held by the approximate prefix index.",
            registry=r,
        )
        self.prefix_indexer_hit_ratio = Histogram(
            "inference_extension_prefix_indexer_hit_ratio",
            "Matched share of a request's prefix blocks.",
            buckets=_RATIO_BUCKETS,
            registry=r,
        )
        self.model_rewrite_decisions_total = Counter(
            "inference_extension_model_rewrite_decisions",
            "Model rewrites applied.",
            ("model_rewrite_name", "model_name", "target_model"),
            registry=r,
        )
        self.info = Gauge(
            "inference_extension_info", "Build information.", ("commit", "build_ref"), registry=r
        )

        # --- flow control ---------------------------------------------------------------------
        self.fc_request_queue_duration = Histogram(
            "inference_extension_flow_control_request_queue_duration_seconds",
            "Time a request waited in flow control.",
            (*_FLOW, "outcome"),
            buckets=_QUEUE_BUCKETS,
            registry=r,
        )
        self.fc_dispatch_cycle_duration = Histogram(
            "inference_extension_flow_control_dispatch_cycle_duration_seconds",
            "Time of one dispatch cycle.",
            buckets=_SCHEDULER_BUCKETS,
            registry=r,
        )
        self.fc_queue_size = Gauge(
            "inference_extension_flow_control_queue_size",
            "Requests waiting in flow control.",
            _FLOW,
            registry=r,
        )
        self.fc_queue_bytes = Gauge(
            "inference_extension_flow_control_queue_bytes",
            "Request bytes waiting in flow control.",
            _FLOW,
            registry=r,
        )
        self.fc_pool_saturation = Gauge(
            "inference_extension_flow_control_pool_saturation",
            "The pool's saturation; 1 or more means saturated.",
            ("inference_pool",),
            registry=r,
        )
        self.fc_rejected_total = Counter(
            "inference_extension_flow_control_rejected_requests",
            "Requests rejected by flow control.",
            ("priority", "reason"),
            registry=r,
        )

        # --- data plane (no reference counterpart) -----------------------------------------------
        self.retry_refused_total = Counter(
            "infergate_request_retry_refused",
            "Requests failed instead of retried because endpoints went down while serving them "
            "(reason endpoints_down: two did; the request probably stalls them).",
            ("reason",),
            registry=r,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
