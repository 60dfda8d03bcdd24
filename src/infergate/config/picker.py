"""The scheduler's configuration in the reference EndpointPickerConfig shape.

This module owns the schema (``plugins:`` of type/name/parameters, ``schedulingProfiles:`` of
pluginRef/weight), its structural validation, YAML loading/dumping and the built-in default. Which
plugin *types* exist, and which are filters, scorers or pickers, is known only to
``infergate.scheduling``: it reports unknown types and profiles without exactly one picker.

Structural rules checked here: every plugin has a type; instance names (``name`` or, when omitted,
``type``) are unique; profile names are unique; every ``pluginRef`` names a configured plugin and
appears at most once per profile; weights are finite and >= 0. A config with no profiles gets a
``default`` profile referencing every plugin, as the reference loader does. Unknown fields are
errors (the reference decodes strictly).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from infergate.config.picker_folds import fold_burst_producer, fold_precise_producer, fold_prefix_producer
from infergate.config.picker_sections import NON_SCHEDULING_TYPES, check_sections
from infergate.errors import ConfigError

__all__ = [
    "API_VERSION",
    "KIND",
    "LLMD_API_VERSION",
    "EndpointPickerConfig",
    "PluginRef",
    "PluginSpec",
    "ProfileSpec",
    "default_picker_config",
    "dump_picker_config",
    "load_picker_config",
    "parse_picker_config",
    "reference_picker_config",
]

API_VERSION: Final = "inference.networking.x-k8s.io/v1alpha1"
LLMD_API_VERSION: Final = "llm-d.ai/v1alpha1"
KIND: Final = "EndpointPickerConfig"


class _Strict(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class PluginSpec(_Strict):
    """One plugin instance: ``type`` picks the implementation, ``name`` (default: the type) names it."""

    type: str = Field(min_length=1)
    name: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)

    @property
    def ref(self) -> str:
        """The name profiles use in ``pluginRef``."""
        return self.name or self.type

    @field_validator("name")
    @classmethod
    def _non_empty(cls, name: str | None) -> str | None:
        if name is not None and not name.strip():
            raise ValueError("must not be empty (omit it to default to the type)")
        return name


class PluginRef(_Strict):
    """A plugin used by a profile; ``weight`` applies to scorers (unset: 1.0)."""

    plugin_ref: str = Field(min_length=1)
    weight: float | None = None

    @field_validator("weight")
    @classmethod
    def _valid_weight(cls, weight: float | None) -> float | None:
        if weight is not None and (not math.isfinite(weight) or weight < 0):
            raise ValueError("weight must be a finite number >= 0")
        return weight


class ProfileSpec(_Strict):
    """A scheduling profile: filters → weighted scorers → one picker, in the order referenced."""

    name: str = Field(min_length=1)
    plugins: list[PluginRef] = Field(default_factory=list)


class EndpointPickerConfig(_Strict):
    """``EndpointPickerConfig`` as in the reference (``apiVersion inference.networking.x-k8s.io/v1alpha1``).

    ``featureGates``, ``saturationDetector``, ``parser``, ``dataLayer``, ``flowControl`` and
    ``requestHandler`` are kept verbatim here; ``picker_sections`` maps each onto the gateway's
    settings or refuses it, when the config is parsed.
    """

    api_version: Literal["inference.networking.x-k8s.io/v1alpha1", "llm-d.ai/v1alpha1"] = API_VERSION
    kind: Literal["EndpointPickerConfig"] = KIND
    feature_gates: list[str] = Field(default_factory=list)
    plugins: list[PluginSpec] = Field(default_factory=list)
    scheduling_profiles: list[ProfileSpec] = Field(default_factory=list)
    saturation_detector: dict[str, Any] | None = None
    parser: dict[str, Any] | None = None
    data_layer: dict[str, Any] | None = None
    flow_control: dict[str, Any] | None = None
    request_handler: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _references(self) -> EndpointPickerConfig:
        names: set[str] = set()
        for i, p in enumerate(self.plugins):
            if p.ref in names:
                raise ValueError(f"plugins[{i}]: duplicate plugin name {p.ref!r} (give each instance a name)")
            names.add(p.ref)
        profiles: set[str] = set()
        for i, prof in enumerate(self.scheduling_profiles):
            if prof.name in profiles:
                raise ValueError(f"schedulingProfiles[{i}].name: duplicate profile name {prof.name!r}")
            profiles.add(prof.name)
            used: set[str] = set()
            for j, ref in enumerate(prof.plugins):
                where = f"schedulingProfiles[{i}].plugins[{j}].pluginRef"
                if ref.plugin_ref not in names:
                    known = ", ".join(sorted(names)) or "none"
                    raise ValueError(f"{where}: no plugin named {ref.plugin_ref!r} (plugins: {known})")
                if ref.plugin_ref in used:
                    raise ValueError(
                        f"{where}: {ref.plugin_ref!r} is referenced twice in profile {prof.name!r}"
                    )
                used.add(ref.plugin_ref)
        return self

    def plugin(self, ref: str) -> PluginSpec:
        """The plugin instance a ``pluginRef`` names (KeyError if absent; validation prevents that)."""
        for p in self.plugins:
            if p.ref == ref:
                return p
        raise KeyError(ref)

    def with_default_profile(self) -> EndpointPickerConfig:
        """This config, plus a ``default`` profile of every filter, scorer and picker when it declares
        no profile (data-layer, parser, flow-control and admission plugins are not profile stages)."""
        if self.scheduling_profiles or not self.plugins:
            return self
        stages = [p for p in self.plugins if p.type not in NON_SCHEDULING_TYPES]
        profile = ProfileSpec(name="default", plugins=[PluginRef(plugin_ref=p.ref) for p in stages])
        return self.model_copy(update={"scheduling_profiles": [profile]})


def default_picker_config(*, lora: bool, base_models: Sequence[str] = ()) -> EndpointPickerConfig:
    """infergate's default profile: predicted latency, in-flight count at 0.1, max-score picker.

    The in-flight term only breaks near-ties of the latency prediction (within ~10 %), spreading
    requests the model cannot tell apart; on a decode-heavy mix it was worth 6 % of SLO rate.

    It was chosen over the reference profile (:func:`reference_picker_config`) by the regret table
    in ``docs/benchmarks.md``: best or level on six of ten corpus workloads, where the reference
    profile falls to 0.44× round-robin on long-context RAG; below round-robin on one (short chat).
    ``base_models`` (the served base model names) tell the scorer which model names are never
    LoRA adapters; ``lora`` is kept for callers that still pass it (the scorer handles adapters
    whenever a replica reports any).
    """
    del lora
    params: dict[str, Any] = {"baseModels": list(base_models)} if base_models else {}
    return EndpointPickerConfig(
        plugins=[
            PluginSpec(type="predicted-latency-scorer", parameters=params),
            PluginSpec(type="least-in-flight-scorer"),
            PluginSpec(type="max-score-picker"),
        ],
        scheduling_profiles=[
            ProfileSpec(
                name="default",
                plugins=[
                    PluginRef(plugin_ref="predicted-latency-scorer", weight=1.0),
                    PluginRef(plugin_ref="least-in-flight-scorer", weight=0.1),
                    PluginRef(plugin_ref="max-score-picker"),
                ],
            )
        ],
    )


def reference_picker_config(*, lora: bool, base_models: Sequence[str] = ()) -> EndpointPickerConfig:
    """The reference EPP's default profile: queue 2, kv-cache 2, prefix-cache 3, max-score picker.

    With ``lora`` (the pool's servers run LoRA adapters) a ``lora-affinity-scorer`` with weight 2 is
    added, so adapter requests prefer servers that already hold the adapter without overriding load.
    ``base_models`` (the served base model names) keep that scorer neutral for base-model requests.
    Benchmarks compare against it as the ``gie-default`` strategy.
    """
    weights: list[tuple[str, float | None]] = [
        ("queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", 2.0),
        ("prefix-cache-scorer", 3.0),
    ]
    if lora:
        weights.append(("lora-affinity-scorer", 2.0))
    weights.append(("max-score-picker", None))
    # the reference EPP's formulas: infergate's prefix and LoRA scorers weigh load by default
    params: dict[str, dict[str, Any]] = {
        "prefix-cache-scorer": {"loadAware": False},
        "lora-affinity-scorer": {"loadAware": False},
    }
    if lora and base_models:
        params["lora-affinity-scorer"]["baseModels"] = list(base_models)
    return EndpointPickerConfig(
        plugins=[PluginSpec(type=t, parameters=params.get(t, {})) for t, _ in weights],
        scheduling_profiles=[
            ProfileSpec(name="default", plugins=[PluginRef(plugin_ref=t, weight=w) for t, w in weights])
        ],
    )


def _format(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = ""
        for part in err["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        reason = str(err["msg"]).removeprefix("Value error, ")
        if not loc and ": " in reason and reason.split(": ", 1)[0].replace(".", "").replace("[", "").strip():
            loc, reason = reason.split(": ", 1)  # model-level checks name their own field
        value = err.get("input")
        if err["type"] not in {"missing", "extra_forbidden"} and isinstance(value, str | int | float | bool):
            reason += f" (got {value!r})"
        lines.append(f"{source}: {KIND}: {loc or '(config)'}: {reason}")
    return "\n".join(lines)


def parse_picker_config(text: str, *, source: str = "<config>") -> EndpointPickerConfig:
    """Parse EndpointPickerConfig YAML; ConfigError names ``source``, the field path and the reason."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from exc
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: {KIND}: (config): expected a mapping")
    try:
        config = EndpointPickerConfig.model_validate(doc).with_default_profile()
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from exc
    try:
        config = fold_precise_producer(fold_prefix_producer(fold_burst_producer(config)))
        check_sections(config)
    except ConfigError as exc:
        raise ConfigError("\n".join(f"{source}: {KIND}: {line}" for line in str(exc).splitlines())) from None
    return config


def load_picker_config(path: Path) -> EndpointPickerConfig:
    """Read an EndpointPickerConfig file (``--config-file``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    return parse_picker_config(text, source=str(path))


def dump_picker_config(config: EndpointPickerConfig) -> str:
    """YAML in the reference shape (camelCase, unset optional fields left out)."""
    data = config.model_dump(by_alias=True, exclude_none=True, exclude_defaults=False)
    for key in ("featureGates",):
        if not data.get(key):
            data.pop(key, None)
    for plugin in data.get("plugins", []):
        if not plugin.get("parameters"):
            plugin.pop("parameters", None)
    return yaml.safe_dump(data, sort_keys=False)
