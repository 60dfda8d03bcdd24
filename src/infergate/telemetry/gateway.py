"""GatewayMetrics: every metric the gateway exports, with the reference's names, labels and buckets."""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from infergate.telemetry.buckets import (
    DURATION_BUCKETS,
    ENQUEUE_BUCKETS,
    HIT_BYTES_BUCKETS,
    ITL_BUCKETS,
    LLMD_TPOT_BUCKETS,
    LLMD_TTFT_BUCKETS,
    PLUGIN_BUCKETS,
    PROCESSING_BUCKETS,
    QUEUE_BUCKETS,
    RATIO_BUCKETS,
    REQUEST_SIZE_BUCKETS,
    RESPONSE_PROCESSING_BUCKETS,
    SCHEDULER_BUCKETS,
    TOKEN_BUCKETS,
    TPOT_BUCKETS,
)
from infergate.telemetry.inflight import InFlightMetrics
from infergate.telemetry.programs import ProgramMetrics
from infergate.telemetry.sampled import FlowControlState, FlowControlStateCollector
from infergate.telemetry.series import Counter, DualMetric, Gauge, Histogram, LabelCap
from infergate.telemetry.streams import ExtProcStreamMetrics

__all__ = ["GatewayMetrics"]


def _build_ref() -> str:
    """The installed package version (the reference puts its git ref here)."""
    try:
        return importlib.metadata.version("infergate")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _build_commit() -> str:
    """``INFERGATE_COMMIT`` when the image build sets it, else ``unknown``."""
    return os.environ.get("INFERGATE_COMMIT") or "unknown"


_FLOW = ("fairness_id", "priority", "inference_pool", "model_name", "target_model_name")
_OBJ = ("model_name", "target_model_name")
# llm-d-router v0.10 labels its request family (llm_d_epp_request_*) with the fairness id and the
# objective's priority as well; TTFT also says whether the response was streamed.
_OBJ_LLMD = (*_OBJ, "fairness_id", "priority")
_OBJ_LLMD_STREAMING = (*_OBJ_LLMD, "streaming")
# llm-d's own buckets for its TTFT and streaming-TPOT twins (the GIE series keep theirs)


class GatewayMetrics:
    """Every metric the gateway exports, registered on one registry.

    Attribute names are the reference metric names without their family prefix.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._exposition: Any = self.registry
        r = self.registry
        self.model_cap = LabelCap()
        self.fairness_cap = LabelCap()
        caps = {
            "model_name": self.model_cap,
            "target_model_name": self.model_cap,
            "target_model": self.model_cap,
            "fairness_id": self.fairness_cap,
        }

        def dual(
            cls: Any,
            gie: str,
            llmd: str,
            doc: str,
            labels: tuple[str, ...] = (),
            rename: Mapping[str, str] | None = None,
            *,
            twin_labels: tuple[str, ...] | None = None,
            twin_buckets: tuple[float, ...] | None = None,
            **kwargs: Any,
        ) -> DualMetric:
            """``twin_labels``/``twin_buckets``: where llm-d's series differ from the GIE one."""
            rename = rename or {}
            if twin_labels is None:
                twin_labels = tuple(rename.get(n, n) for n in labels)
            twin_kwargs = dict(kwargs) if twin_buckets is None else {**kwargs, "buckets": twin_buckets}
            return DualMetric(
                cls(gie, doc, labels, registry=r, **kwargs),
                cls(llmd, doc, twin_labels, registry=r, **twin_kwargs),
                rename=rename,
                caps=caps,
            )

        # --- per objective (model) ------------------------------------------------------------
        self.request_total = dual(
            Counter,
            "inference_objective_request",
            "llm_d_epp_request",
            "Requests scheduled, per model.",
            (*_OBJ, "priority"),
            twin_labels=_OBJ_LLMD,
        )
        self.request_error_total = dual(
            Counter,
            "inference_objective_request_error",
            "llm_d_epp_request_error",
            "Requests that failed, per error code.",
            (*_OBJ, "error_code"),
            twin_labels=(*_OBJ_LLMD, "error_code"),
        )
        self.request_duration = dual(
            Histogram,
            "inference_objective_request_duration_seconds",
            "llm_d_epp_request_duration_seconds",
            "End-to-end request latency.",
            _OBJ,
            buckets=DURATION_BUCKETS,
            twin_labels=_OBJ_LLMD,
        )
        self.request_ttft = dual(
            Histogram,
            "inference_objective_request_ttft_seconds",
            "llm_d_epp_request_ttft_seconds",
            "Time to the first response byte.",
            _OBJ,
            buckets=DURATION_BUCKETS,
            twin_labels=_OBJ_LLMD_STREAMING,
            twin_buckets=LLMD_TTFT_BUCKETS,
        )
        self.request_tpot = dual(
            Histogram,
            "inference_objective_request_tpot_seconds",
            "llm_d_epp_request_streaming_tpot_seconds",
            "Time per output token after the first, of streamed responses.",
            _OBJ,
            buckets=TPOT_BUCKETS,
            twin_labels=_OBJ_LLMD,
            twin_buckets=LLMD_TPOT_BUCKETS,
        )
        self.request_itl = Histogram(
            "llm_d_epp_request_streaming_itl_seconds",
            "Inter-token latency in seconds for streaming requests, measured as the time between "
            "consecutive response body chunks.",
            ("model_name", "target_model_name", "fairness_id", "priority"),
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.request_processing = Histogram(
            "llm_d_epp_request_processing_duration_seconds",
            "The picker's time on a request, from its arrival (body complete) until it is routed or "
            "refused, admission and any flow-control wait included.",
            buckets=PROCESSING_BUCKETS,
            registry=r,
        )
        self.response_processing = Histogram(
            "llm_d_epp_response_processing_duration_seconds",
            "The picker's time on a response: the sum of its per-chunk handling for a streamed one, "
            "from the response head to completion otherwise.",
            buckets=RESPONSE_PROCESSING_BUCKETS,
            registry=r,
        )
        self.normalized_tpot = dual(
            Histogram,
            "inference_objective_normalized_time_per_output_token_seconds",
            "llm_d_epp_request_ntpot_seconds",
            "Request latency divided by the number of output tokens.",
            _OBJ,
            buckets=TPOT_BUCKETS,
            twin_labels=_OBJ_LLMD,
        )
        self.request_sizes = dual(
            Histogram,
            "inference_objective_request_sizes",
            "llm_d_epp_request_size_bytes",
            "Request body size in bytes.",
            _OBJ,
            buckets=REQUEST_SIZE_BUCKETS,
            twin_labels=_OBJ_LLMD,
        )
        self.response_sizes = dual(
            Histogram,
            "inference_objective_response_sizes",
            "llm_d_epp_response_size_bytes",
            "Response body size in bytes.",
            _OBJ,
            buckets=REQUEST_SIZE_BUCKETS,
            twin_labels=_OBJ_LLMD,
        )
        self.input_tokens = dual(
            Histogram,
            "inference_objective_input_tokens",
            "llm_d_epp_request_input_tokens",
            "Prompt tokens per request (from usage).",
            _OBJ,
            buckets=TOKEN_BUCKETS,
            twin_labels=_OBJ_LLMD,
        )
        self.output_tokens = dual(
            Histogram,
            "inference_objective_output_tokens",
            "llm_d_epp_request_output_tokens",
            "Completion tokens per request (from usage).",
            _OBJ,
            buckets=TOKEN_BUCKETS,
            twin_labels=_OBJ_LLMD,
        )
        self.prompt_cached_tokens = dual(
            Histogram,
            "inference_objective_prompt_cached_tokens",
            "llm_d_epp_request_cached_tokens",
            "Prompt tokens served from the prefix cache.",
            _OBJ,
            buckets=TOKEN_BUCKETS,
            twin_labels=_OBJ_LLMD,
        )
        self.running_requests = dual(
            Gauge,
            "inference_objective_running_requests",
            "llm_d_epp_request_running",
            "Requests in flight through the gateway.",
            ("model_name",),
            twin_labels=_OBJ_LLMD,
        )

        # --- per pool -----------------------------------------------------------------------
        self.pool_average_kv_cache_utilization = dual(
            Gauge,
            "inference_pool_average_kv_cache_utilization",
            "llm_d_epp_average_kv_cache_utilization",
            "Mean KV-cache use of the pool's ready endpoints.",
            ("name",),
        )
        self.pool_average_queue_size = dual(
            Gauge,
            "inference_pool_average_queue_size",
            "llm_d_epp_average_queue_size",
            "Mean waiting-queue length of the pool's ready endpoints.",
            ("name",),
        )
        self.pool_average_running_requests = dual(
            Gauge,
            "inference_pool_average_running_requests",
            "llm_d_epp_average_running_requests",
            "Mean running requests of the pool's ready endpoints.",
            ("name",),
        )
        # llm-d only: how unevenly the load sits (population standard deviation over the same
        # endpoints as the averages)
        self.pool_std_dev_kv_cache_utilization = Gauge(
            "llm_d_epp_std_dev_kv_cache_utilization",
            "Standard deviation of the KV-cache use of the pool's ready endpoints.",
            ("name",),
            registry=r,
        )
        self.pool_std_dev_queue_size = Gauge(
            "llm_d_epp_std_dev_queue_size",
            "Standard deviation of the waiting-queue length of the pool's ready endpoints.",
            ("name",),
            registry=r,
        )
        self.pool_std_dev_running_requests = Gauge(
            "llm_d_epp_std_dev_running_requests",
            "Standard deviation of the running requests of the pool's ready endpoints.",
            ("name",),
            registry=r,
        )
        self.pool_ready_pods = dual(
            Gauge,
            "inference_pool_ready_pods",
            "llm_d_epp_ready_endpoints",
            "Endpoints with fresh metrics.",
            ("name",),
        )
        self.pool_per_pod_queue_size = dual(
            Gauge,
            "inference_pool_per_pod_queue_size",
            "llm_d_epp_per_endpoint_queue_size",
            "Waiting-queue length per endpoint.",
            ("name", "model_server_pod"),
            rename={"model_server_pod": "model_server_endpoint"},
        )

        # --- scheduler ------------------------------------------------------------------------
        self.scheduler_e2e_duration = dual(
            Histogram,
            "inference_extension_scheduler_e2e_duration_seconds",
            "llm_d_epp_scheduler_e2e_duration_seconds",
            "Time of one whole scheduling cycle.",
            buckets=SCHEDULER_BUCKETS,
        )
        self.scheduler_attempts_total = dual(
            Counter,
            "inference_extension_scheduler_attempts",
            "llm_d_epp_scheduler_attempts",
            "Scheduling cycles by outcome.",
            ("status", "target_model_name", "pod_name", "namespace", "port"),
            rename={"pod_name": "endpoint_name"},
        )
        self.plugin_duration = dual(
            Histogram,
            "inference_extension_plugin_duration_seconds",
            "llm_d_epp_plugin_duration_seconds",
            "Time spent in one plugin call.",
            ("extension_point", "plugin_type", "plugin_name"),
            buckets=PLUGIN_BUCKETS,
        )
        # llm-d labels its twins with the plugin that keeps the index
        _plugin = ("plugin_name", "plugin_type")
        self.prefix_indexer_size = dual(
            Gauge,
            "inference_extension_prefix_indexer_size",
            "llm_d_epp_prefix_indexer_size",
            "Entries held by the approximate prefix index.",
            twin_labels=_plugin,
        )
        self.prefix_indexer_hit_ratio = dual(
            Histogram,
            "inference_extension_prefix_indexer_hit_ratio",
            "llm_d_epp_prefix_indexer_hit_ratio",
            "Matched share of a request's prefix blocks.",
            buckets=RATIO_BUCKETS,
            twin_labels=_plugin,
        )
        self.prefix_indexer_hit_bytes = dual(
            Histogram,
            "inference_extension_prefix_indexer_hit_bytes",
            "llm_d_epp_prefix_indexer_hit_bytes",
            "Length of the matched prefix in bytes (matched blocks times the block size).",
            buckets=HIT_BYTES_BUCKETS,
            twin_labels=_plugin,
        )
        # P/D: llm-d-router's disaggregation profile handler counts its decisions under its
        # deprecated scheduler name and the llm_d_epp one (labelled with the handler plugin)
        self.pd_decisions = dual(
            Counter,
            "llm_d_inference_scheduler_pd_decision",
            "llm_d_epp_pd_decision",
            "P/D disaggregation decisions (decode-only, prefill-decode).",
            ("model_name", "decision_type"),
            twin_labels=(*_plugin, "model_name", "decision_type"),
        )
        self.disagg_decisions = dual(
            Counter,
            "llm_d_inference_scheduler_disagg_decision",
            "llm_d_epp_disagg_decision",
            "Disaggregation routing decisions (decode-only, prefill-decode).",
            ("model_name", "decision_type"),
            twin_labels=(*_plugin, "model_name", "decision_type"),
        )
        self.model_rewrite_decisions_total = dual(
            Counter,
            "inference_extension_model_rewrite_decisions",
            "llm_d_epp_model_rewrite_decisions",
            "Model rewrites applied.",
            ("model_rewrite_name", "model_name", "target_model"),
        )
        self.info = dual(
            Gauge,
            "inference_extension_info",
            "llm_d_epp_info",
            "Build information.",
            ("commit", "build_ref"),
        )

        # --- flow control ---------------------------------------------------------------------
        self.fc_request_queue_duration = dual(
            Histogram,
            "inference_extension_flow_control_request_queue_duration_seconds",
            "llm_d_epp_flow_control_request_queue_duration_seconds",
            "Time a request waited in flow control.",
            (*_FLOW, "outcome"),
            buckets=QUEUE_BUCKETS,
        )
        self.fc_enqueue_duration = dual(
            Histogram,
            "inference_extension_flow_control_request_enqueue_duration_seconds",
            "llm_d_epp_flow_control_request_enqueue_duration_seconds",
            "Time flow control took to admit, queue or reject an arriving request.",
            ("fairness_id", "priority", "outcome"),
            buckets=ENQUEUE_BUCKETS,
        )
        self.fc_dispatch_cycle_duration = dual(
            Histogram,
            "inference_extension_flow_control_dispatch_cycle_duration_seconds",
            "llm_d_epp_flow_control_dispatch_cycle_duration_seconds",
            "Time of one dispatch cycle.",
            buckets=SCHEDULER_BUCKETS,
        )
        self.fc_queue_size = dual(
            Gauge,
            "inference_extension_flow_control_queue_size",
            "llm_d_epp_flow_control_queue_size",
            "Requests waiting in flow control.",
            _FLOW,
        )
        self.fc_queue_bytes = dual(
            Gauge,
            "inference_extension_flow_control_queue_bytes",
            "llm_d_epp_flow_control_queue_bytes",
            "Request bytes waiting in flow control.",
            _FLOW,
        )
        self.fc_pool_saturation = dual(
            Gauge,
            "inference_extension_flow_control_pool_saturation",
            "llm_d_epp_flow_control_pool_saturation",
            "The pool's saturation; 1 or more means saturated.",
            ("inference_pool",),
            # llm-d splits it by pipeline stage; infergate gates on one value, its "effective"
            twin_labels=("inference_pool", "stage"),
        )
        self.fc_requests_total = Counter(
            "llm_d_epp_flow_control_requests",
            "Requests through flow control, by terminal outcome (Dispatched, RejectedCapacity, "
            "RejectedNoEndpoints, EvictedTTL, EvictedNoEndpoints, EvictedContextCancelled, EvictedOther).",
            ("outcome", "priority", "inference_pool"),
            registry=r,
        )
        self.fc_rejected_total = dual(
            Counter,
            "inference_extension_flow_control_rejected_requests",
            "llm_d_epp_flow_control_rejected_requests",
            "Requests rejected by flow control.",
            ("priority", "reason"),
        )

        self.fc_decode_guard_holding = Gauge(
            "infergate_flow_control_decode_guard_holding",
            "1 while flow control's decode guard holds newcomers (streams decode slower than "
            "flow_control.tpot_slo and TTFTs leave room for flow_control.tpot_hold), else 0.",
            ("inference_pool",),
            registry=r,
        )

        # --- data layer ------------------------------------------------------------------------
        self.datalayer_poll_errors_total = Counter(
            "llm_d_epp_datalayer_poll_errors",
            "Model-server scrapes that failed (unreachable, an error status, a body that is not "
            "the exposition format), per source type.",
            ("source_type",),
            registry=r,
        )

        self.datalayer_extract_errors_total = Counter(
            "llm_d_epp_datalayer_extract_errors",
            "Scrapes whose page lacked a gauge the engine's metrics extractor reads (queue, running, "
            "KV-cache usage), per source and extractor type.",
            ("source_type", "extractor_type"),
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

        self.info.labels(commit=_build_commit(), build_ref=_build_ref()).set(1)
        self._extproc_streams: ExtProcStreamMetrics | None = None
        self._programs: ProgramMetrics | None = None
        self._inflight: InFlightMetrics | None = None
        self._burst_overflow: Counter | None = None
        self._flow_state = FlowControlStateCollector(lambda: None)
        r.register(self._flow_state)

    def extproc_streams(self) -> ExtProcStreamMetrics:
        """The ext_proc stream metrics, registered on first use only (the reference's
        ``--enable-grpc-stream-metrics``; ``listeners.grpc_stream_metrics``)."""
        if self._extproc_streams is None:
            self._extproc_streams = ExtProcStreamMetrics(self.registry)
        return self._extproc_streams

    def inflight(self) -> InFlightMetrics:
        """The in-flight load gauges by flow, registered on first use only (the reference registers
        them with ``inflight-load-producer`` configured)."""
        if self._inflight is None:
            self._inflight = InFlightMetrics(self.registry, self.fairness_cap)
        return self._inflight

    def burst_window_overflow(self) -> Counter:
        """``infergate_burst_window_overflow_total``: requests that found the
        ``burst-prefix-cache-producer``'s window full and went on without affinity. Upstream fails
        that producer call silently and has no metric; the log says it once a minute, which no
        alert can read. Registered on first use only (the window registers it when it is built),
        so a gateway without the producer exports no such series, and one with it exports 0 from
        the start, so that ``increase()`` sees the first overflow."""
        if self._burst_overflow is None:
            self._burst_overflow = Counter(
                "infergate_burst_window_overflow",
                "Requests that found the burst-prefix-cache-producer's window full (maxBatchSize) "
                "and were scheduled at once without burst affinity.",
                registry=self.registry,
            )
        return self._burst_overflow

    def programs(self) -> ProgramMetrics:
        """The program-aware fairness metrics, registered on first use only (the reference
        registers them with ``program-aware-fairness`` configured); ``program_id`` shares the
        ``fairness_id`` cap."""
        if self._programs is None:
            self._programs = ProgramMetrics(self.registry, self.fairness_cap)
        return self._programs

    def watch_flow_control(self, sample: Callable[[], FlowControlState | None]) -> None:
        """Render the flow-control state ``sample`` returns at each scrape (the band capacity and
        stale-endpoint gauges); a later call replaces the earlier source."""
        self._flow_state.sample = sample

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self._exposition)

    def expose(self, source: Any) -> None:
        """Render ``source`` (anything with ``collect()``) instead of the registry: the gateway
        process of several workers adds the workers' series to its own."""
        self._exposition = source
