"""The built-in plugin types, registered by their reference EPP type names.

``default_registry()`` builds a fresh :class:`PluginRegistry` each call; nothing is registered
as an import side effect. Types of the reference EPP that are not scheduling stages here (data
layer, parser, saturation detector, profile handler) are accepted as *inert* with the parameters
infergate honours, and reference types it does not implement are refused with a reason, so a
reference ``EndpointPickerConfig`` either means the same here or fails to load.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from infergate.config.picker_schemas import (
    ConcurrencyDetectorParams,
    PassthroughParserParams,
    PriorityHoldbackParams,
    ProgramAwareFairnessParams,
    StaticUsageLimitParams,
    UtilizationDetectorParams,
)
from infergate.config.picker_units import parse_go_duration, parse_metric_selector
from infergate.scheduling.plugins.admitter import ProbabilisticAdmitter, ProbabilisticAdmitterParams
from infergate.scheduling.plugins.attributes import (
    EndpointAttributeFilter,
    EndpointAttributeFilterParams,
    EndpointAttributeScorer,
    EndpointAttributeScorerParams,
)
from infergate.scheduling.plugins.burst_prefix import (
    BurstPrefixParams,
    BurstPrefixProducer,
    BurstPrefixScorer,
    BurstScorerParams,
)
from infergate.scheduling.plugins.disagg import (
    DECODE_ROLES,
    PREFILL_ROLES,
    AlwaysDisaggDecider,
    DisaggParams,
    DisaggProfileHandler,
    PrefixBasedDecider,
    PrefixDeciderParams,
    RoleFilter,
)
from infergate.scheduling.plugins.filters import (
    ConcurrencyFilter,
    LoraAffinityFilter,
    LoraAffinityFilterParams,
    LowQueueFilter,
    LowQueueFilterParams,
)
from infergate.scheduling.plugins.latency import LatencyParams, PredictedLatencyScorer
from infergate.scheduling.plugins.latency_slo import (
    LatencySloAdmitter,
    SloHeadroomParams,
    SloHeadroomTierFilter,
)
from infergate.scheduling.plugins.pickers import (
    MaxScorePicker,
    PickerParams,
    RandomPicker,
    RoundRobinPicker,
    WeightedRandomPicker,
)
from infergate.scheduling.plugins.precise_prefix import (
    PrecisePrefixParams,
    PrecisePrefixScorer,
    TokenProducerParams,
)
from infergate.scheduling.plugins.prefix import PrefixCacheParams, PrefixCacheScorer
from infergate.scheduling.plugins.profile_handler import HeaderProfileHandler, HeaderProfileParams
from infergate.scheduling.plugins.scorers import (
    KvCacheUtilizationScorer,
    LeastInFlightScorer,
    LoraAffinityParams,
    LoraAffinityScorer,
    QueueScorer,
    RunningRequestsScorer,
)
from infergate.scheduling.plugins.session_affinity import (
    SessionAffinityFilter,
    SessionAffinityParams,
    SessionAffinityScorer,
)
from infergate.scheduling.plugins.topology import (
    TopologyAffinityFilter,
    TopologyAffinityParams,
    TopologyAffinityScorer,
    TopologyExtractor,
    TopologyExtractorParams,
    TopologyScorerParams,
)
from infergate.scheduling.plugins.upstream_load import (
    PrefixCacheAffinityFilter,
    PrefixCacheAffinityParams,
    TokenLoadParams,
    TokenLoadScorer,
)
from infergate.scheduling.plugins.upstream_plugins import (
    ActiveRequestParams,
    ActiveRequestScorer,
    ByLabelFilter,
    ByLabelParams,
    ContextLengthAware,
    ContextLengthParams,
    HeaderBasedTestingFilter,
    LabelSelectorFilter,
    LabelSelectorParams,
    LoadAwareParams,
    LoadAwareScorer,
    NoHitLRUParams,
    NoHitLRUScorer,
    UtilizationFilter,
    UtilizationFilterParams,
)
from infergate.scheduling.sdk.framework import NoParams, Params, PluginRegistry

__all__ = [
    "BUILTIN_ENGINES",
    "INERT_TYPES",
    "REFUSED_TYPES",
    "CoreMetricsExtractorParams",
    "DcgmDataSourceParams",
    "EngineConfigParams",
    "MetricsDataSourceParams",
    "default_registry",
]


class MetricsDataSourceParams(Params):
    """``metrics-data-source``: where the model servers' metrics are scraped (the reference's
    parameters; :class:`infergate.sources.scraper.MetricsSource` applies them). By default
    ``http://<endpoint>/metrics`` on the inference port; ``port`` moves the scrape to another port
    (a metrics exporter beside the server), ``scheme: https`` speaks TLS, its certificate checked
    against ``caCertPath`` unless ``insecureSkipVerify`` (the default, as the reference), and
    ``clientCertPath``/``clientKeyPath`` present a client certificate. ``interval`` (a Go
    duration) scrapes less often than ``--refresh-metrics-interval``, rounded to a multiple of it.
    Health probes and the model list stay on the inference port."""

    scheme: Literal["http", "https"] = "http"
    path: str = "/metrics"
    port: int | None = Field(default=None, ge=1, le=65535)
    insecure_skip_verify: bool = True
    ca_cert_path: str = ""
    client_cert_path: str = ""
    client_key_path: str = ""
    interval: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> MetricsDataSourceParams:
        if not self.path.startswith("/"):
            raise ValueError(f"path: {self.path!r} must start with /")
        if bool(self.client_cert_path) != bool(self.client_key_path):
            raise ValueError("clientCertPath and clientKeyPath go together")
        tls_only = [
            n for n, v in (("caCertPath", self.ca_cert_path), ("clientCertPath", self.client_cert_path)) if v
        ]
        if tls_only and self.scheme != "https":
            raise ValueError(f"{', '.join(tls_only)}: only with scheme: https")
        if self.ca_cert_path and self.insecure_skip_verify:
            raise ValueError(
                "caCertPath with insecureSkipVerify: true (the default) would check nothing; "
                "set insecureSkipVerify: false"
            )
        if self.interval:
            parse_go_duration(self.interval)  # ValueError names a bad one
        return self


class DcgmDataSourceParams(Params):
    """``dcgm-data-source``: where each endpoint's NVIDIA DCGM Exporter answers (upstream's
    parameters and defaults; :class:`infergate.sources.dcgm.DcgmSource` applies them):
    ``scheme://<pod address, or the node's with useNodeAddress>:port path``, every ``interval``
    (a Go duration, rounded to a multiple of ``--refresh-metrics-interval``; empty: every tick)."""

    scheme: Literal["http", "https"] = "http"
    path: str = "/metrics"
    port: int = Field(default=9400, ge=1, le=65535)
    insecure_skip_verify: bool = True
    use_node_address: bool = False
    interval: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> DcgmDataSourceParams:
        if not self.path.startswith("/"):
            raise ValueError(f"path: {self.path!r} must start with /")
        if self.interval:
            try:
                seconds = parse_go_duration(self.interval)
            except ValueError as exc:
                raise ValueError(f"interval: {exc}") from None
            if seconds <= 0:
                raise ValueError(f"interval: must be > 0 (got {self.interval!r})")
        return self


class InFlightLoadParams(Params):
    """``inflight-load-producer``: the gateway counts requests and prompt tokens in flight itself
    (prompt tokens released at the first streamed chunk, the reference's default); estimated output
    tokens are not added."""

    add_estimated_output_tokens: Literal[False] = False


BUILTIN_ENGINES = ("vllm", "sglang", "trtllm-serve", "triton-tensorrt-llm")
"""The engine names whose metrics infergate reads without an ``engineConfigs`` entry."""


def _selector(value: str) -> str:
    if value:
        parse_metric_selector(value)  # ValueError names what does not parse
    return value


class CustomMetricParams(Params):
    """One ``customMetrics`` entry: the scalar ``metricSpec`` selects becomes the endpoint
    attribute ``attributeKey`` of producer ``core-metrics-extractor``."""

    attribute_key: str = Field(min_length=1)
    metric_spec: str = Field(min_length=1)

    _spec = field_validator("metric_spec")(_selector)


class EngineConfigParams(Params):
    """One ``engineConfigs`` entry: where engine ``name`` keeps each fact, as metric selectors
    (``family`` or ``family{label=value}``); an empty spec means the engine does not say."""

    name: str = Field(min_length=1)
    queued_requests_spec: str = ""
    running_requests_spec: str = ""
    kv_usage_spec: str = ""
    lora_spec: str = ""
    cache_info_spec: str = ""
    cache_block_size_label_name: str = ""
    cache_num_blocks_label_name: str = ""
    cache_block_size_spec: str = ""
    cache_num_blocks_spec: str = ""
    custom_metrics: list[CustomMetricParams] = Field(default_factory=list)

    _specs = field_validator(
        "queued_requests_spec",
        "running_requests_spec",
        "kv_usage_spec",
        "lora_spec",
        "cache_info_spec",
        "cache_block_size_spec",
        "cache_num_blocks_spec",
    )(_selector)

    @model_validator(mode="after")
    def _distinct_keys(self) -> EngineConfigParams:
        if self.name == "default":
            raise ValueError("name: 'default' is reserved (defaultEngine names the default engine)")
        keys = [c.attribute_key for c in self.custom_metrics]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"customMetrics: attributeKey {twice[0]!r} is listed twice")
        return self


class CoreMetricsExtractorParams(Params):
    """``core-metrics-extractor``: which engine's metric names an endpoint is read with: its pod's
    ``engineLabelKey`` label, else ``defaultEngine`` (``vllm``: the pool's model server type).

    ``engineConfigs`` adds engines (a custom ``name``) or replaces a built-in one's metric names
    (the built-in's name: its specs as given, an empty one read as absent, as upstream); each may
    read ``customMetrics`` into endpoint attributes."""

    default_engine: str = "vllm"
    engine_label_key: str = Field(default="llm-d.ai/engine-type", min_length=1)
    engine_configs: list[EngineConfigParams] = Field(default_factory=list)

    @model_validator(mode="after")
    def _known_default(self) -> CoreMetricsExtractorParams:
        names = [c.name for c in self.engine_configs]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"engineConfigs: engine {twice[0]!r} is configured twice")
        if self.default_engine not in (*BUILTIN_ENGINES, *names):
            raise ValueError(
                f"defaultEngine: {self.default_engine!r} is neither a built-in engine "
                f"({', '.join(BUILTIN_ENGINES)}) nor named in engineConfigs"
            )
        return self


# Accepted in ``plugins:`` for reference configs; each with the parameters infergate honours
# (anything else is refused by the Params model). Their meaning is applied by
# ``config.picker_sections`` (detector thresholds, usage limit) or is infergate's built-in behaviour.
INERT_TYPES: dict[str, type[BaseModel]] = {
    "single-profile-handler": NoParams,
    "metrics-data-source": MetricsDataSourceParams,
    "core-metrics-extractor": CoreMetricsExtractorParams,
    # GPU utilisation per endpoint (sources/dcgm.py), wired through dataLayer.sources
    "dcgm-data-source": DcgmDataSourceParams,
    "dcgm-extractor": NoParams,
    "approx-prefix-cache-producer": PrefixCacheParams,
    "openai-parser": NoParams,
    "anthropic-parser": NoParams,
    "passthrough-parser": PassthroughParserParams,
    "utilization-detector": UtilizationDetectorParams,
    "fcfs-ordering-policy": NoParams,
    "slo-deadline-ordering-policy": NoParams,
    "round-robin-fairness-policy": NoParams,
    "global-strict-fairness-policy": NoParams,
    "program-aware-fairness": ProgramAwareFairnessParams,
    "edf-ordering-policy": NoParams,
    "static-usage-limit-policy": StaticUsageLimitParams,
    "priority-holdback-policy": PriorityHoldbackParams,
    "soft-reflective-ceiling-policy": NoParams,
    # in-flight counts are built in (Endpoint.in_flight, in_flight_tokens): no producer needed
    "inflight-load-producer": InFlightLoadParams,
    # prompts rendered by vLLM for precise-prefix-cache-scorer (the app wires it to the Director)
    "token-producer": TokenProducerParams,
    # KV events reach precise-prefix-cache-scorer through its own subscriber
    "endpoint-notification-source": NoParams,
}

# Reference types infergate knows and refuses, with the reason shown to the operator.
REFUSED_TYPES: dict[str, str] = {
    "vllmgrpc-parser": "model servers are reached over HTTP only",
    "pd-profile-handler": "deprecated upstream; use disagg-profile-handler with deciders.prefill",
    "disagg-headers-handler": "disagg-profile-handler sets x-prefiller-host-port itself; remove it",
    "prefill-header-handler": "disagg-profile-handler sets x-prefiller-host-port itself; remove it",
    # upstream sends every request to primaryPort and names the rank in x-data-parallel-host-port for
    # a sidecar there to forward; infergate reaches each rank's port itself (one endpoint per pod
    # and target port), which is what upstream's deprecation notice asks for
    "data-parallel-profile-handler": (
        "deprecated upstream; infergate sends each request to the chosen rank's own port: list the "
        "ranks' ports in the InferencePool's targetPorts (--endpoint-target-ports) and remove the handler"
    ),
}


def default_registry() -> PluginRegistry:
    """A registry holding every built-in plugin type."""
    r = PluginRegistry()
    r.register_scorer("queue-scorer", NoParams, lambda p, c: QueueScorer())
    r.register_scorer("kv-cache-utilization-scorer", NoParams, lambda p, c: KvCacheUtilizationScorer())
    r.register_scorer("running-requests-size-scorer", NoParams, lambda p, c: RunningRequestsScorer())
    r.register_scorer("least-in-flight-scorer", NoParams, lambda p, c: LeastInFlightScorer())
    r.register_scorer("lora-affinity-scorer", LoraAffinityParams, lambda p, c: LoraAffinityScorer(p))
    r.register_scorer_post_pick(
        "prefix-cache-scorer",
        PrefixCacheParams,
        lambda p, c: PrefixCacheScorer(p, clock=c.clock, metrics=c.metrics, name=c.name),
    )
    r.register_scorer_post_pick(
        "precise-prefix-cache-scorer",
        PrecisePrefixParams,
        lambda p, c: PrecisePrefixScorer(p, metrics=c.metrics),
    )
    # a window of requests assigned jointly (plugins/burst_prefix.py; the Director holds the window):
    # the producer is read by the prefix-cache-scorer naming it, which the config folds into the
    # burst-prefix-cache-scorer
    r.register_helper("burst-prefix-cache-producer", BurstPrefixParams, lambda p, c: BurstPrefixProducer(p))
    r.register_scorer("burst-prefix-cache-scorer", BurstScorerParams, lambda p, c: BurstPrefixScorer(p))
    r.register_scorer_post_pick(
        "predicted-latency-scorer", LatencyParams, lambda p, c: PredictedLatencyScorer(p, clock=c.clock)
    )
    r.register_filter("low-queue-filter", LowQueueFilterParams, lambda p, c: LowQueueFilter(p))
    r.register_filter(
        "lora-affinity-filter", LoraAffinityFilterParams, lambda p, c: LoraAffinityFilter(p, rng=c.rng)
    )
    r.register_picker("max-score-picker", PickerParams, lambda p, c: MaxScorePicker(p, rng=c.rng))
    r.register_picker("random-picker", PickerParams, lambda p, c: RandomPicker(p, rng=c.rng))
    r.register_picker("round-robin-picker", PickerParams, lambda p, c: RoundRobinPicker(p))
    r.register_picker("weighted-random-picker", PickerParams, lambda p, c: WeightedRandomPicker(p, rng=c.rng))
    # llm-d-router v0.10 types (scheduling/plugins/upstream_plugins.py)
    r.register_scorer("load-aware-scorer", LoadAwareParams, lambda p, c: LoadAwareScorer(p))
    r.register_scorer("active-request-scorer", ActiveRequestParams, lambda p, c: ActiveRequestScorer(p))
    r.register_filter_scorer("context-length-aware", ContextLengthParams, lambda p, c: ContextLengthAware(p))
    r.register_filter("label-selector-filter", LabelSelectorParams, lambda p, c: LabelSelectorFilter(p))
    r.register_filter("by-label-selector", LabelSelectorParams, lambda p, c: LabelSelectorFilter(p))
    r.register_filter("by-label", ByLabelParams, lambda p, c: ByLabelFilter(p))
    r.register_filter("utilization-filter", UtilizationFilterParams, lambda p, c: UtilizationFilter(p))
    r.register_filter("header-based-testing-filter", NoParams, lambda p, c: HeaderBasedTestingFilter())
    r.register_scorer_post_pick("no-hit-lru-scorer", NoHitLRUParams, lambda p, c: NoHitLRUScorer(p))
    r.register_scorer("token-load-scorer", TokenLoadParams, lambda p, c: TokenLoadScorer(p))
    r.register_filter(
        "prefix-cache-affinity-filter",
        PrefixCacheAffinityParams,
        lambda p, c: PrefixCacheAffinityFilter(p, rng=c.rng),
    )
    r.register_profile_handler(
        "header-profile-handler", HeaderProfileParams, lambda p, c: HeaderProfileHandler(p)
    )
    # P/D disaggregation (plugins/disagg.py)
    r.register_profile_handler(
        "disagg-profile-handler",
        DisaggParams,
        lambda p, c: DisaggProfileHandler(p, metrics=c.metrics, name=c.name),
    )
    r.register_helper("prefix-based-pd-decider", PrefixDeciderParams, lambda p, c: PrefixBasedDecider(p))
    r.register_helper("always-disagg-pd-decider", NoParams, lambda p, c: AlwaysDisaggDecider())
    r.register_filter("decode-filter", NoParams, lambda p, c: RoleFilter(DECODE_ROLES, unlabelled=True))
    r.register_filter("prefill-filter", NoParams, lambda p, c: RoleFilter(PREFILL_ROLES, unlabelled=False))
    r.register_scorer_post_pick(
        "session-affinity-scorer", SessionAffinityParams, lambda p, c: SessionAffinityScorer(p, clock=c.clock)
    )
    # P/D: where endpoints are, and prefill placement near the decode pick (plugins/topology.py)
    r.register_helper("topology-extractor", TopologyExtractorParams, lambda p, c: TopologyExtractor(p))
    r.register_filter(
        "topology-affinity-filter", TopologyAffinityParams, lambda p, c: TopologyAffinityFilter(p)
    )
    r.register_scorer(
        "topology-affinity-scorer", TopologyScorerParams, lambda p, c: TopologyAffinityScorer(p)
    )
    r.register_filter_post_pick(
        "session-affinity-filter", SessionAffinityParams, lambda p, c: SessionAffinityFilter(p, clock=c.clock)
    )
    # one named scalar per endpoint (plugins/attributes.py): custom metrics, GPU utilisation
    r.register_filter(
        "endpoint-attribute-filter", EndpointAttributeFilterParams, lambda p, c: EndpointAttributeFilter(p)
    )
    r.register_scorer(
        "endpoint-attribute-scorer", EndpointAttributeScorerParams, lambda p, c: EndpointAttributeScorer(p)
    )
    r.register_filter("concurrency-detector", ConcurrencyDetectorParams, lambda p, c: ConcurrencyFilter(p))
    r.register_helper("latency-slo-admitter", NoParams, lambda p, c: LatencySloAdmitter(name=c.name))
    r.register_filter(
        "slo-headroom-tier-filter", SloHeadroomParams, lambda p, c: SloHeadroomTierFilter(p, rng=c.rng)
    )
    # the Admitter extension point (plugins/admitter.py): run before flow control, never a profile stage
    r.register_helper(
        "probabilistic-admitter",
        ProbabilisticAdmitterParams,
        lambda p, c: ProbabilisticAdmitter(p, rng=c.rng, name=c.name),
    )
    for name, params in INERT_TYPES.items():
        r.register_inert(name, params)
    for name, reason in REFUSED_TYPES.items():
        r.register_refused(name, reason)
    return r
