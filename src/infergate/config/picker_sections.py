"""The EndpointPickerConfig sections beside scheduling: what each means for infergate.

The reference picker's config carries, besides ``plugins`` and ``schedulingProfiles``,
``featureGates``, ``flowControl``, ``saturationDetector`` (deprecated top-level spelling of
``flowControl.saturationDetector``), ``dataLayer``, ``parser`` (deprecated spelling of
``requestHandler.parsers``) and ``requestHandler``. An operator who swaps infergate in must never
find one of them silently dropped, so this module either maps each field onto the gateway's own
settings or refuses it with an error naming the field:

- ``flowControl`` TTLs and capacities and the ``utilization-detector`` thresholds become
  :class:`~infergate.config.settings.FlowControlSettings` fields, which the one flow-control builder
  (``flowcontrol.settings.flow_control_from_settings``) reads; so do the ``priorityBands``'
  priorities when the usage-limit policy ranks the priorities in use (:func:`apply_sections`);
- ``featureGates: [flowControl]`` / ``flowControl=false`` switch queueing on/off;
- sections naming behaviour infergate has built in (``metrics-data-source`` scraping ``/metrics``
  over HTTP, ``openai-parser``, FCFS order, round-robin flows) are accepted when they ask for exactly
  that behaviour and refused otherwise.

:func:`check_sections` runs when a config is parsed (so ``infergate epp`` refuses at start);
:func:`apply_sections` turns a valid config into settings.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from infergate.config.picker_schemas import (
    ConcurrencyDetectorParams,
    DataLayerSection,
    FlowControlSection,
    NoParams,
    PassthroughParserParams,
    PluginRefOnly,
    PriorityBand,
    PriorityHoldbackParams,
    ProgramAwareFairnessParams,
    RequestHandlerSection,
    StaticUsageLimitParams,
    StrictModel,
    UtilizationDetectorParams,
)
from infergate.config.picker_units import parse_go_duration, parse_quantity
from infergate.config.settings import RANKED_USAGE_LIMITS, FlowControlSettings, Settings
from infergate.errors import ConfigError

if TYPE_CHECKING:
    from infergate.config.picker import EndpointPickerConfig

__all__ = [
    "FEATURE_GATES",
    "NON_SCHEDULING_TYPES",
    "SectionEffects",
    "apply_sections",
    "check_sections",
    "nearest",
    "passthrough_paths",
]

#: Feature gates the reference registers, and what infergate does with each (None: accepted).
FEATURE_GATES: dict[str, str | None] = {
    "flowControl": None,  # queue under saturation (infergate's default is on)
    "haPopulateNonLeaderDatastore": None,  # no leader election: every replica fills its datastore
    "dataLayer": None,  # GIE v1.5: deprecated no-op
    "enableLegacyMetrics": "infergate has one metrics pipeline (the data-layer scraper); the legacy "
    "per-pod metrics client does not exist here",
}

UTILIZATION_DETECTOR = "utilization-detector"
CONCURRENCY_DETECTOR = "concurrency-detector"
STATIC_USAGE_LIMIT = "static-usage-limit-policy"
PRIORITY_HOLDBACK = "priority-holdback-policy"
SOFT_REFLECTIVE_CEILING = "soft-reflective-ceiling-policy"
#: Usage-limit policy types -> ``flow_control.usage_limit``.
USAGE_LIMIT_SETTING = {
    STATIC_USAGE_LIMIT: "static",
    PRIORITY_HOLDBACK: "priority-holdback",
    SOFT_REFLECTIVE_CEILING: "soft-reflective-ceiling",
}
# Both parsers are always on in infergate (OpenAI paths and /v1/messages); naming them is fine.
# passthrough-parser forwards the paths its ``paths`` parameter lists, unread.
PASSTHROUGH_PARSER = "passthrough-parser"
SUPPORTED_PARSERS = ("openai-parser", "anthropic-parser", PASSTHROUGH_PARSER)
GLOBAL_STRICT = "global-strict-fairness-policy"
PROGRAM_AWARE = "program-aware-fairness"
SUPPORTED_FAIRNESS = ("round-robin-fairness-policy", GLOBAL_STRICT, PROGRAM_AWARE)
#: Fairness policy type -> ``flow_control.fairness``.
FAIRNESS_SETTING = {
    "round-robin-fairness-policy": "round-robin",
    GLOBAL_STRICT: "global-strict",
    PROGRAM_AWARE: "program-aware",
}
SUPPORTED_ORDERING = ("fcfs-ordering-policy", "slo-deadline-ordering-policy", "edf-ordering-policy")
#: Ordering policy type -> ``flow_control.ordering``. Earliest deadline first is first come first
#: served here: every request's deadline is its arrival plus the same TTL (the reference gives no
#: request a TTL of its own either), and a budget switch (pool emptied or refilled) keeps that order.
ORDERING_SETTING = {
    "fcfs-ordering-policy": "fcfs",
    "slo-deadline-ordering-policy": "slo-deadline",
    "edf-ordering-policy": "fcfs",
}
DATA_SOURCES = ("metrics-data-source", "dcgm-data-source")
EXTRACTORS = ("core-metrics-extractor", "dcgm-extractor")
#: Which extractor reads which source's page (each source's page is another format).
EXTRACTOR_OF = {"metrics-data-source": "core-metrics-extractor", "dcgm-data-source": "dcgm-extractor"}
#: Reference plugin types that are not scheduling stages: never part of a generated default profile.
NON_SCHEDULING_TYPES = frozenset(
    {
        *SUPPORTED_PARSERS,
        *SUPPORTED_FAIRNESS,
        *SUPPORTED_ORDERING,
        *DATA_SOURCES,
        *EXTRACTORS,
        UTILIZATION_DETECTOR,
        *USAGE_LIMIT_SETTING,
        "single-profile-handler",
        "header-profile-handler",
        "approx-prefix-cache-producer",
        "burst-prefix-cache-producer",
        "inflight-load-producer",
        "token-producer",
        "endpoint-notification-source",
        "probabilistic-admitter",
        "latency-slo-admitter",
        "topology-extractor",
    }
)


def nearest(name: str, known: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or empty when nothing is close."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


# ------------------------------------------------------------------------- section schemas
# (in :mod:`infergate.config.picker_schemas`)

#: Each usage-limit policy type's parameter schema.
USAGE_LIMIT_PARAMS: dict[str, type[StrictModel]] = {
    STATIC_USAGE_LIMIT: StaticUsageLimitParams,
    PRIORITY_HOLDBACK: PriorityHoldbackParams,
    SOFT_REFLECTIVE_CEILING: NoParams,
}


# ------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class SectionEffects:
    """What the sections change: FlowControlSettings fields, flow control on/off (None: unchanged),
    and the priorities of the listed bands (``flow_control.priority_bands`` when the policy ranks)."""

    settings: dict[str, Any] = field(default_factory=dict)
    flow_control: bool | None = None
    passthrough: tuple[str, ...] = ()
    band_priorities: tuple[int, ...] = ()


def _validate(model: type[StrictModel], data: object, where: str) -> Any:
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
            reason = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"{where}{loc}: {reason}")
        raise ConfigError("\n".join(lines)) from None


class _Reader:
    """Reads one config's sections; every problem is a ConfigError naming the field."""

    def __init__(self, config: EndpointPickerConfig) -> None:
        self.config = config
        self.types = {p.ref: p.type for p in config.plugins}
        self.params = {p.ref: dict(p.parameters) for p in config.plugins}
        self.effects: dict[str, Any] = {}
        self.bands: dict[int, str] = {}  # a listed band's priority -> where it was listed

    def _ref(self, ref: str, where: str, allowed: Sequence[str], what: str) -> str:
        """The type of the plugin ``ref`` names; it must be one of ``allowed``."""
        type_ = self.types.get(ref)
        if type_ is None:
            known = ", ".join(sorted(self.types)) or "none"
            raise ConfigError(f"{where}: no plugin named {ref!r} in plugins (plugins: {known})")
        if type_ not in allowed:
            raise ConfigError(
                f"{where}: plugin {ref!r} has type {type_!r}; infergate supports only "
                f"{', '.join(allowed)} as {what}"
            )
        return type_

    # --- featureGates

    def feature_gates(self) -> bool | None:
        gates: dict[str, bool] = {}
        for i, gate in enumerate(self.config.feature_gates):
            name, sep, value = gate.partition("=")
            name = name.strip()
            where = f"featureGates[{i}]"
            if name not in FEATURE_GATES:
                raise ConfigError(
                    f"{where}: unknown feature gate {name!r}{nearest(name, list(FEATURE_GATES))} "
                    f"(known: {', '.join(FEATURE_GATES)})"
                )
            reason = FEATURE_GATES[name]
            enabled = True
            if sep:
                text = value.strip().lower()
                if text not in ("true", "false", "1", "0", "t", "f"):
                    raise ConfigError(f"{where}: {gate!r}: the value must be true or false")
                enabled = text in ("true", "1", "t")
            if reason is not None and enabled:
                raise ConfigError(f"{where}: feature gate {name!r} is not supported: {reason}")
            gates[name] = enabled
        return gates.get("flowControl")

    # --- saturation detector

    def saturation_detector(self, ref: PluginRefOnly | None, where: str) -> None:
        if ref is None:
            detectors = [n for n, t in self.types.items() if t == UTILIZATION_DETECTOR]
            if len(detectors) != 1:
                return  # none declared: the defaults; several unreferenced: refused in check()
            name = detectors[0]
        else:
            name = ref.plugin_ref
            kinds = (UTILIZATION_DETECTOR, CONCURRENCY_DETECTOR)
            if self._ref(name, f"{where}.pluginRef", kinds, "saturation detector") == CONCURRENCY_DETECTOR:
                c = _validate(ConcurrencyDetectorParams, self.params[name], f"plugins[{name}].parameters")
                self.effects.update(
                    detector="concurrency",
                    concurrency_mode=c.concurrency_mode,
                    max_concurrency=c.max_concurrency,
                    max_token_concurrency=c.max_token_concurrency,
                )
                return
        params = _validate(UtilizationDetectorParams, self.params[name], f"plugins[{name}].parameters")
        self.effects.update(
            queue_threshold=params.queue_depth_threshold,
            kv_threshold=params.kv_cache_util_threshold,
            saturation_staleness=parse_go_duration(params.metrics_staleness_threshold),
        )

    # --- flowControl

    def flow_control(self, data: Mapping[str, Any] | None) -> bool:
        """Map the section; True when it sets anything (so a gate turned off can be refused)."""
        if data is None:
            return False
        fc: FlowControlSection = _validate(FlowControlSection, data, "flowControl")
        where = "flowControl"
        if fc.max_requests is not None:
            total = self._quantity(fc.max_requests, f"{where}.maxRequests")
            self.effects["max_queued_requests_total"] = total or None  # 0: unlimited
        if fc.max_bytes is not None:
            total = self._quantity(fc.max_bytes, f"{where}.maxBytes")
            self.effects["max_queued_bytes_total"] = total or None
        if fc.default_request_ttl is not None:
            ttl = self._duration(fc.default_request_ttl, f"{where}.defaultRequestTTL")
            self.effects["request_ttl"] = ttl
        if fc.no_endpoint_request_ttl is not None:
            # "0s": wait until an endpoint comes (no eviction), as the reference
            where_ttl = f"{where}.noEndpointRequestTTL"
            try:
                seconds = parse_go_duration(fc.no_endpoint_request_ttl)
            except ValueError as exc:
                raise ConfigError(f"{where_ttl}: {exc}") from None
            self.effects["no_endpoint_request_ttl"] = seconds
        if fc.enable_eviction:
            raise ConfigError(f"{where}.enableEviction: evicting in-flight requests is not supported")
        if fc.usage_limit_policy_plugin_ref:
            self._usage_limit(fc.usage_limit_policy_plugin_ref, f"{where}.usageLimitPolicyPluginRef")
        default = fc.default_priority_band
        if default is not None:
            self._band(default, f"{where}.defaultPriorityBand", set_default=True)
        if fc.default_negative_priority_band is not None:
            self._band(fc.default_negative_priority_band, f"{where}.defaultNegativePriorityBand")
        for i, band in enumerate(fc.priority_bands):
            self._band(band, f"{where}.priorityBands[{i}]")
            self._band_priority(band.priority, f"{where}.priorityBands[{i}].priority")
        if self.effects.get("ordering") == "slo-deadline":
            ref = default.ordering_policy_ref if default is not None else ""
            if ORDERING_SETTING.get(self.types.get(ref, ref)) != "slo-deadline":
                raise ConfigError(
                    f"{where}.defaultPriorityBand.orderingPolicyRef: must name slo-deadline-ordering-policy "
                    "when a band does: infergate orders every band's requests the same way"
                )
        return bool(data)

    def _usage_limit(self, name: str, where: str) -> None:
        """The usage-limit policy ``name`` and its parameters, as ``flow_control.usage_limit*``."""
        type_ = self._ref(name, where, tuple(USAGE_LIMIT_SETTING), "usage-limit policy")
        params = _validate(USAGE_LIMIT_PARAMS[type_], self.params[name], f"plugins[{name}].parameters")
        self.effects["usage_limit"] = USAGE_LIMIT_SETTING[type_]
        if isinstance(params, StaticUsageLimitParams):
            self.effects["usage_limit_ceiling"] = params.threshold
        elif isinstance(params, PriorityHoldbackParams):
            if params.min_ceiling >= params.max_ceiling:
                raise ConfigError(
                    f"plugins[{name}].parameters.minCeiling: {params.min_ceiling:g} must be below "
                    f"maxCeiling ({params.max_ceiling:g})"
                )
            self.effects.update(
                usage_limit_ceiling=params.max_ceiling,
                usage_limit_min_ceiling=params.min_ceiling,
                usage_limit_domain=params.domain,
            )

    def _program_aware(self, ref: str) -> None:
        """The ``program-aware-fairness`` plugin's parameters, as ``flow_control.program_*``."""
        name = (
            ref if ref in self.types else next((n for n, t in self.types.items() if t == PROGRAM_AWARE), None)
        )
        data = self.params.get(name) if name is not None else None
        p = _validate(ProgramAwareFairnessParams, data, f"plugins[{name or PROGRAM_AWARE}].parameters")
        self.effects.update(
            program_service_weight=p.las_weight_service,
            program_wait_weight=p.las_weight_head_wait,
            program_half_life=p.las_half_life_seconds,
            program_idle_ttl=p.eviction_ttl_seconds,
            program_sweep_interval=p.eviction_sweep_seconds,
        )

    def _fairness(self, fairness: str, where: str) -> None:
        self._every_band("fairness", fairness, where, "whose flows take turns differently", "fairness")

    def _ordering(self, ordering: str, where: str) -> None:
        self._every_band("ordering", ordering, where, "that order their requests differently", "ordering")

    def _every_band(self, effect: str, value: str, where: str, differ: str, policy: str) -> None:
        """Every band shares its flows, and orders their requests, the same way in infergate: one
        setting each, which a band naming another policy than an earlier one contradicts."""
        chosen = self.effects.get(effect)
        if chosen is not None and chosen != value:
            raise ConfigError(
                f"{where}: bands {differ} are not supported (another band uses {chosen}); "
                f"name one {policy} policy for every band"
            )
        self.effects[effect] = value

    def _band(self, band: PriorityBand, where: str, *, set_default: bool = False) -> None:
        for ref, allowed, what in (
            (band.fairness_policy_ref, SUPPORTED_FAIRNESS, "fairnessPolicyRef"),
            (band.ordering_policy_ref, SUPPORTED_ORDERING, "orderingPolicyRef"),
        ):
            if not ref:
                continue
            type_ = self.types.get(ref, ref)  # a plugin name, or the policy type itself
            if type_ not in allowed:
                raise ConfigError(
                    f"{where}.{what}: {ref!r} is not supported; infergate's bands use {', '.join(allowed)}"
                )
            if what == "orderingPolicyRef":
                self._ordering(ORDERING_SETTING[type_], f"{where}.{what}")
            else:
                self._fairness(FAIRNESS_SETTING[type_], f"{where}.{what}")
                if type_ == PROGRAM_AWARE:
                    self._program_aware(ref)
        requests = self._quantity(band.max_requests, f"{where}.maxRequests") if band.max_requests else 0
        size = self._quantity(band.max_bytes, f"{where}.maxBytes") if band.max_bytes else 0
        if set_default:
            if requests:
                self.effects["max_queued_requests"] = requests
            if size:
                self.effects["max_queued_bytes"] = size
            return
        # Bands share one capacity in infergate: another band may only restate the default's.
        for key, value, name in (
            ("max_queued_requests", requests, "maxRequests"),
            ("max_queued_bytes", size, "maxBytes"),
        ):
            if value and value != self.effects.get(key, getattr(FlowControlSettings(), key)):
                raise ConfigError(
                    f"{where}.{name}: per-band capacities that differ from defaultPriorityBand are "
                    "not supported (every band has the default band's capacity); set "
                    "defaultPriorityBand instead"
                )

    def _band_priority(self, priority: int | None, where: str) -> None:
        """Note a statically configured band's priority (the ranked policies count it from the
        start, as the reference does). Only ``priorityBands`` configure bands: the default bands are
        templates for the priorities no band lists, whose ``priority`` the reference ignores. A
        band giving none adds none; a priority listed twice is refused, as the reference refuses it."""
        if priority is None:
            return
        first = self.bands.setdefault(priority, where)
        if first != where:
            raise ConfigError(f"{where}: duplicate priority level {priority} (also {first})")

    @staticmethod
    def _quantity(value: object, where: str) -> int:
        try:
            return parse_quantity(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    @staticmethod
    def _duration(value: object, where: str) -> float:
        try:
            seconds = parse_go_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if seconds <= 0:
            raise ConfigError(f"{where}: must be > 0 (got {value!r})")
        return seconds

    # --- dataLayer, parsers

    def data_layer(self, data: Mapping[str, Any] | None) -> None:
        if data is None:
            return
        dl: DataLayerSection = _validate(DataLayerSection, data, "dataLayer")
        for name, value in (
            ("discovery", dl.discovery),
            ("peerDiscovery", dl.peer_discovery),
            ("crossReplicaSyncerPluginRef", dl.cross_replica_syncer_plugin_ref or None),
            ("crossReplicaSyncInterval", dl.cross_replica_sync_interval),
        ):
            if value is not None:
                raise ConfigError(
                    f"dataLayer.{name}: not supported: endpoints come from the InferencePool "
                    "(Kubernetes) or -f manifests, and replicas share no state"
                )
        if dl.inject_defaults is False and not dl.sources:
            raise ConfigError(
                "dataLayer.injectDefaults: false without sources would disable metrics collection, "
                "which infergate's scheduling and flow control need"
            )
        for i, source in enumerate(dl.sources):
            where = f"dataLayer.sources[{i}]"
            kind = self._ref(source.plugin_ref, f"{where}.pluginRef", DATA_SOURCES, "data source")
            for j, extractor in enumerate(source.extractors):
                at = f"{where}.extractors[{j}].pluginRef"
                if self._ref(extractor.plugin_ref, at, EXTRACTORS, "extractor") != EXTRACTOR_OF[kind]:
                    raise ConfigError(
                        f"{at}: {extractor.plugin_ref!r} cannot read a {kind}'s page; its extractor is "
                        f"{EXTRACTOR_OF[kind]}"
                    )
            if kind == "dcgm-data-source" and not source.extractors:
                raise ConfigError(
                    f"{where}.extractors: a dcgm-data-source without a dcgm-extractor would be read by "
                    "nothing; list one"
                )

    def dcgm_wiring(self, data: Mapping[str, Any] | None) -> None:
        """A DCGM source or extractor runs only as ``dataLayer.sources`` wires it: one left out
        would do nothing, which is refused rather than ignored."""
        dl: DataLayerSection = _validate(DataLayerSection, data or {}, "dataLayer")
        wired = {s.plugin_ref for s in dl.sources} | {e.plugin_ref for s in dl.sources for e in s.extractors}
        sources = [n for n, t in self.types.items() if t == "dcgm-data-source"]
        if len(sources) > 1:
            raise ConfigError(
                f"plugins: several dcgm-data-source plugins ({', '.join(sources)}); infergate polls one "
                "exporter per endpoint"
            )
        for name, type_ in self.types.items():
            if type_ in ("dcgm-data-source", "dcgm-extractor") and name not in wired:
                raise ConfigError(
                    f"plugins[{name}]: a {type_} that dataLayer.sources does not wire would do nothing; "
                    "list it there (dataLayer: {sources: [{pluginRef: <source>, extractors: "
                    "[{pluginRef: <extractor>}]}]})"
                )

    def parsers(self, parser: Mapping[str, Any] | None, handler: Mapping[str, Any] | None) -> list[str]:
        """Check the parser references; the passthrough paths in force (declared passthrough
        parsers, which an explicit parser list must name)."""
        refs: list[tuple[str, PluginRefOnly]] = []
        if handler is not None:
            rh: RequestHandlerSection = _validate(RequestHandlerSection, handler, "requestHandler")
            refs += [(f"requestHandler.parsers[{i}]", p) for i, p in enumerate(rh.parsers)]
        if parser is not None:
            refs.append(("parser", _validate(PluginRefOnly, parser, "parser")))
        for where, ref in refs:
            self._ref(ref.plugin_ref, f"{where}.pluginRef", SUPPORTED_PARSERS, "parser")
        listed = {ref.plugin_ref for _, ref in refs}
        paths: list[str] = []
        for name, type_ in self.types.items():
            if type_ != PASSTHROUGH_PARSER:
                continue
            if refs and name not in listed:
                raise ConfigError(
                    f"plugins[{name}]: a {PASSTHROUGH_PARSER} that requestHandler.parsers does not list "
                    "would forward nothing; list it there (last) or remove it"
                )
            if "paths" not in self.params[name]:
                raise ConfigError(
                    f"plugins[{name}].parameters.paths: required: list the inference paths to forward "
                    "unread, e.g. [/v1/rerank, /v1/audio/transcriptions]; infergate does not pass every "
                    "unclaimed path, which would expose the model servers' administration paths"
                )
            params = _validate(PassthroughParserParams, self.params[name], f"plugins[{name}].parameters")
            paths += [p for p in params.paths if p not in paths]
        return paths

    def check_plugins(self) -> None:
        detectors = [n for n, t in self.types.items() if t == UTILIZATION_DETECTOR]
        if len(detectors) > 1:
            raise ConfigError(
                f"plugins: several {UTILIZATION_DETECTOR} plugins ({', '.join(detectors)}); "
                "name the one to use in flowControl.saturationDetector.pluginRef"
            )
        for name in detectors:
            _validate(UtilizationDetectorParams, self.params[name], f"plugins[{name}].parameters")
        for name, type_ in self.types.items():
            schema = USAGE_LIMIT_PARAMS.get(type_)
            if schema is not None:
                _validate(schema, self.params[name], f"plugins[{name}].parameters")


def _read(config: EndpointPickerConfig) -> SectionEffects:
    r = _Reader(config)
    r.check_plugins()
    gate = r.feature_gates()
    fc_set = r.flow_control(config.flow_control)
    declared = [n for n, t in r.types.items() if t == PROGRAM_AWARE]
    if declared and r.effects.get("fairness") != "program-aware":
        raise ConfigError(
            f"plugins[{declared[0]}]: program-aware-fairness is declared but no band uses it; "
            "name it in flowControl.defaultPriorityBand.fairnessPolicyRef"
        )
    if "fairness" not in r.effects and r.types.get(GLOBAL_STRICT) == GLOBAL_STRICT:
        # the reference's default fairnessPolicyRef is this plugin's name: declared, it applies
        r.effects["fairness"] = "global-strict"
    unused = [n for n, t in r.types.items() if t == "slo-deadline-ordering-policy"]
    if unused and r.effects.get("ordering") != "slo-deadline":
        raise ConfigError(
            f"plugins[{unused[0]}]: slo-deadline-ordering-policy is declared but no band uses it; "
            "name it in flowControl.defaultPriorityBand.orderingPolicyRef"
        )
    # flowControl.saturationDetector wins over the deprecated top-level spelling, as upstream.
    nested = (config.flow_control or {}).get("saturationDetector")
    if nested is not None:
        ref = _validate(PluginRefOnly, nested, "flowControl.saturationDetector")
        r.saturation_detector(ref, "flowControl.saturationDetector")
    elif config.saturation_detector is not None:
        ref = _validate(PluginRefOnly, config.saturation_detector, "saturationDetector")
        r.saturation_detector(ref, "saturationDetector")
    else:
        r.saturation_detector(None, "saturationDetector")
    if gate is False and fc_set:
        raise ConfigError(
            "flowControl: set while featureGates turns flowControl off (flowControl=false); "
            "remove one of them"
        )
    r.data_layer(config.data_layer)
    r.dcgm_wiring(config.data_layer)
    paths = r.parsers(config.parser, config.request_handler)
    return SectionEffects(
        settings=dict(r.effects), flow_control=gate, passthrough=tuple(paths), band_priorities=tuple(r.bands)
    )


def passthrough_paths(config: EndpointPickerConfig) -> tuple[str, ...]:
    """The path suffixes the config's ``passthrough-parser`` forwards unread (empty: none)."""
    return _read(config).passthrough


def check_sections(config: EndpointPickerConfig) -> None:
    """Raise ConfigError naming the field if any section asks for something infergate cannot do."""
    _read(config)


def apply_sections(config: EndpointPickerConfig, settings: Settings) -> Settings:
    """``settings`` with the config's sections applied (all of them are ``flow_control.*`` settings).

    A ``featureGates`` entry for ``flowControl`` wins over ``flow_control.enabled``. The listed
    bands' priorities join ``flow_control.priority_bands`` only under a policy that ranks the
    priorities in use: ``headroom`` and ``static`` give a band the same ceiling whichever bands
    exist, so there a band's priority changes nothing (as under llm-d-router's static policy), and
    the config, which only restates the default band, still loads.
    """
    effects = _read(config)
    changes = {f"flow_control.{k}": v for k, v in effects.settings.items()}
    if effects.flow_control is not None:
        changes["flow_control.enabled"] = effects.flow_control
    result = settings.replace(changes) if changes else settings
    fc = result.flow_control
    if effects.band_priorities and fc.usage_limit in RANKED_USAGE_LIMITS:
        bands = tuple(dict.fromkeys((*fc.priority_bands, *effects.band_priorities)))
        result = result.replace({"flow_control.priority_bands": bands})
    return result
