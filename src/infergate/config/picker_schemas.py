"""Schemas of the EndpointPickerConfig's sections beside scheduling and of the plugins they name.

``flowControl``, ``dataLayer`` and ``requestHandler`` and the parameters of the detectors, parsers
and flow-control policies, as the reference spells them (camelCase, unknown fields refused).
:mod:`infergate.config.picker_sections` reads them into settings; the plugin registry validates
the parameters of the plugins listed in ``plugins:`` with the same models.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from infergate.config.picker_units import parse_go_duration

__all__ = [
    "ConcurrencyDetectorParams",
    "DataLayerSection",
    "DataLayerSource",
    "FlowControlSection",
    "NoParams",
    "PassthroughParserParams",
    "PluginRefOnly",
    "PriorityBand",
    "PriorityHoldbackParams",
    "ProgramAwareFairnessParams",
    "RequestHandlerSection",
    "StaticUsageLimitParams",
    "StrictModel",
    "UtilizationDetectorParams",
]


class StrictModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class PluginRefOnly(StrictModel):
    plugin_ref: str = Field(min_length=1)


class PriorityBand(StrictModel):
    priority: int | None = None
    max_bytes: int | str | None = None
    max_requests: int | str | None = None
    fairness_policy_ref: str = ""
    ordering_policy_ref: str = ""


class FlowControlSection(StrictModel):
    max_bytes: int | str | None = None
    max_requests: int | str | None = None
    default_request_ttl: str | None = Field(default=None, alias="defaultRequestTTL")
    no_endpoint_request_ttl: str | None = Field(default=None, alias="noEndpointRequestTTL")
    default_priority_band: PriorityBand | None = None
    default_negative_priority_band: PriorityBand | None = None
    priority_bands: list[PriorityBand] = Field(default_factory=list)
    usage_limit_policy_plugin_ref: str = ""
    saturation_detector: PluginRefOnly | None = None
    enable_eviction: bool = False


class DataLayerSource(StrictModel):
    plugin_ref: str = Field(min_length=1)
    extractors: list[PluginRefOnly] = Field(default_factory=list)


class DataLayerSection(StrictModel):
    inject_defaults: bool | None = None
    sources: list[DataLayerSource] = Field(default_factory=list)
    discovery: PluginRefOnly | None = None
    peer_discovery: PluginRefOnly | None = None
    cross_replica_syncer_plugin_ref: str = ""
    cross_replica_sync_interval: str | None = None


class RequestHandlerSection(StrictModel):
    parsers: list[PluginRefOnly] = Field(default_factory=list)


class UtilizationDetectorParams(StrictModel):
    """``utilization-detector`` parameters (the reference's names and defaults)."""

    queue_depth_threshold: int = Field(default=5, gt=0)
    kv_cache_util_threshold: float = Field(default=0.8, gt=0.0, le=1.0)
    metrics_staleness_threshold: str = "200ms"
    headroom: float = Field(default=0.0, ge=0.0)

    @field_validator("metrics_staleness_threshold")
    @classmethod
    def _duration(cls, value: str) -> str:
        if parse_go_duration(value) <= 0:
            raise ValueError("must be > 0")
        return value

    @field_validator("headroom")
    @classmethod
    def _no_burst(cls, value: float) -> float:
        if value != 0.0:
            raise ValueError(
                "burst headroom above the thresholds is not supported (the detector is not a "
                "scheduling filter in infergate); omit it or set 0"
            )
        return value


class ConcurrencyDetectorParams(StrictModel):
    """``concurrency-detector`` parameters (the reference's names and defaults); ``headroom`` is
    read by its scheduling-filter role only."""

    concurrency_mode: Literal["requests", "tokens", "hybrid"] = "requests"
    max_concurrency: int = Field(default=100, gt=0)
    max_token_concurrency: int = Field(default=1_000_000, gt=0)
    headroom: float = Field(default=0.0, ge=0.0)


_GATEWAY_PATHS = ("/v1/models", "/health", "/healthz")


class PassthroughParserParams(StrictModel):
    """``passthrough-parser``: forward requests on ``paths`` (path suffixes, e.g. ``/v1/rerank``)
    unread and schedule them on load alone.

    ``paths`` is infergate's own, and required: the reference forwards every path no other parser
    claims, which would also open a model server's administration paths (LoRA load/unload,
    ``/metrics``, ``/reset_prefix_cache``, ...) to every client, so here the operator names the
    inference paths to pass. Paths the OpenAI and Anthropic parsers claim stay theirs.
    """

    paths: list[str] = Field(min_length=1)

    @field_validator("paths")
    @classmethod
    def _suffixes(cls, value: list[str]) -> list[str]:
        for p in value:
            if not p.startswith("/") or p.rstrip("/") == "":
                raise ValueError(f"each path must start with '/' and name something (got {p!r})")
            if p.rstrip("/") in _GATEWAY_PATHS:
                raise ValueError(f"{p!r} is answered by the gateway itself and cannot be passed through")
        return value


class StaticUsageLimitParams(StrictModel):
    threshold: float = Field(default=1.0, gt=0.0, le=1.0)


class PriorityHoldbackParams(StrictModel):
    """``priority-holdback-policy`` parameters (the reference's names and defaults)."""

    shape: Literal["linear"] = "linear"
    domain: Literal["rank", "value"] = "rank"
    min_ceiling: float = Field(ge=0.0, lt=1.0)
    max_ceiling: float = Field(default=1.0, gt=0.0, le=1.0)


class ProgramAwareFairnessParams(StrictModel):
    """``program-aware-fairness`` parameters (the reference's names and defaults)."""

    strategy: Literal["las"] = "las"
    las_weight_service: float = Field(default=0.8, ge=0.0)
    las_weight_head_wait: float = Field(default=0.2, ge=0.0)
    las_half_life_seconds: float = Field(default=60.0, ge=0.0)
    eviction_ttl_seconds: float = Field(default=3600.0, ge=0.0)
    eviction_sweep_seconds: float = Field(default=300.0, gt=0.0)


class NoParams(StrictModel):
    """A plugin that takes no parameters (``soft-reflective-ceiling-policy``)."""
