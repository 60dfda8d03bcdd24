"""The built-in plugin types, registered by their reference EPP type names.

``default_registry()`` builds a fresh :class:`PluginRegistry` each call; nothing is registered
as an import side effect. Types of the reference EPP that are not scheduling stages here (data
layer, parser, saturation detector, profile handler) are accepted as *inert* so that a reference
``EndpointPickerConfig`` loads unchanged.
"""

from __future__ import annotations

from infergate.scheduling.filters import (
    LoraAffinityFilter,
    LoraAffinityFilterParams,
    LowQueueFilter,
    LowQueueFilterParams,
)
from infergate.scheduling.framework import NoParams, PluginRegistry
from infergate.scheduling.latency import LatencyParams, PredictedLatencyScorer
from infergate.scheduling.pickers import (
    MaxScorePicker,
    PickerParams,
    RandomPicker,
    RoundRobinPicker,
    WeightedRandomPicker,
)
from infergate.scheduling.prefix import PrefixCacheParams, PrefixCacheScorer
from infergate.scheduling.scorers import (
    KvCacheUtilizationScorer,
    LeastInFlightScorer,
    LoraAffinityParams,
    LoraAffinityScorer,
    QueueScorer,
    RunningRequestsScorer,
)

__all__ = ["INERT_TYPES", "default_registry"]

INERT_TYPES = (
    "single-profile-handler",
    "metrics-data-source",
    "core-metrics-extractor",
    "approx-prefix-cache-producer",
    "openai-parser",
    "utilization-detector",
    "concurrency-detector",
    "fcfs-ordering-policy",
    "global-strict-fairness-policy",
    "static-usage-limit-policy",
)


def default_registry() -> PluginRegistry:
    """A registry holding every built-in plugin type."""
    r = PluginRegistry()
    r.register("queue-scorer", NoParams, lambda p, c: QueueScorer())
    r.register("kv-cache-utilization-scorer", NoParams, lambda p, c: KvCacheUtilizationScorer())
    r.register("running-requests-size-scorer", NoParams, lambda p, c: RunningRequestsScorer())
    r.register("least-in-flight-scorer", NoParams, lambda p, c: LeastInFlightScorer())
    r.register("lora-affinity-scorer", LoraAffinityParams, lambda p, c: LoraAffinityScorer(p))
    r.register(
        "prefix-cache-scorer",
        PrefixCacheParams,
        lambda p, c: PrefixCacheScorer(p, clock=c.clock, metrics=c.metrics),
    )
    r.register(
        "predicted-latency-scorer", LatencyParams, lambda p, c: PredictedLatencyScorer(p, clock=c.clock)
    )
    r.register("low-queue-filter", LowQueueFilterParams, lambda p, c: LowQueueFilter(p))
    r.register(
        "lora-affinity-filter", LoraAffinityFilterParams, lambda p, c: LoraAffinityFilter(p, rng=c.rng)
    )
    r.register("max-score-picker", PickerParams, lambda p, c: MaxScorePicker(p, rng=c.rng))
    r.register("random-picker", PickerParams, lambda p, c: RandomPicker(p, rng=c.rng))
    r.register("round-robin-picker", PickerParams, lambda p, c: RoundRobinPicker(p))
    r.register("weighted-random-picker", PickerParams, lambda p, c: WeightedRandomPicker(p, rng=c.rng))
    for name in INERT_TYPES:
        r.register_inert(name)
    return r
