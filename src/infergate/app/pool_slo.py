"""One latency SLO per pool: routing and flow control judge by the same bounds.

Two components read the pool's SLO. ``predicted-latency-scorer`` weighs each candidate's predicted
TTFT and TPOT against ``ttftSloSeconds`` and ``tpotSloSeconds`` (routing configuration), and flow
control's decode guard holds newcomers while the running streams' TPOT reaches
``flow_control.tpot_slo``, as long as TTFTs stay within ``flow_control.ttft_slo`` (gateway
settings). Setting one and forgetting the other would have each judge by a different SLO, so the
composition root reconciles them before building either:

* bounds a scorer is given become flow control's (the routing configuration refines the settings,
  as its ``flowControl`` sections do) and every other scorer's of the pool;
* bounds set only in the settings reach every scorer;
* a bound set in both to different values, or two scorers of one pool that disagree, is a
  :class:`~infergate.errors.ConfigError` naming both, since a pool has one SLO.

A setting counts as set when it differs from its default, so a value written out that equals the
default defers to the scorer's.
"""

from __future__ import annotations

from pydantic import ValidationError

from infergate.config.picker import EndpointPickerConfig, PluginSpec
from infergate.config.settings import FlowControlSettings, Settings
from infergate.errors import ConfigError
from infergate.scheduling.plugins.latency_state import LatencyParams

__all__ = ["SCORER_TYPE", "reconcile_slo"]

SCORER_TYPE = "predicted-latency-scorer"

_BOUNDS = (
    # (scorer field, its YAML key, flow-control setting)
    ("ttft_slo_seconds", "ttftSloSeconds", "ttft_slo"),
    ("tpot_slo_seconds", "tpotSloSeconds", "tpot_slo"),
)


def _given(spec: PluginSpec) -> dict[str, float] | None:
    """The SLO bounds a scorer's parameters give (by scorer field), None when they do not validate
    (the scheduler's build reports that with the plugin's name)."""
    try:
        params = LatencyParams.model_validate(spec.parameters)
    except ValidationError:
        return None
    return {f: getattr(params, f) for f, _, _ in _BOUNDS if f in params.model_fields_set}


def reconcile_slo(picker: EndpointPickerConfig, settings: Settings) -> tuple[EndpointPickerConfig, Settings]:
    """``picker`` and ``settings`` with one SLO between them (module docstring); raises ConfigError
    when they name two."""
    scorers = [(i, p) for i, p in enumerate(picker.plugins) if p.type == SCORER_TYPE]
    given = [(p, g) for _, p in scorers if (g := _given(p)) is not None]
    fc = settings.flow_control
    defaults = FlowControlSettings.model_fields
    changes: dict[str, float] = {}
    fill: list[tuple[str, str, float]] = []  # (scorer field, YAML key, value) every scorer gets
    for field, key, setting in _BOUNDS:
        named = [(p, g[field]) for p, g in given if field in g]
        values = {v for _, v in named}
        if len(values) > 1:
            listed = ", ".join(f"plugins[{p.ref}].parameters.{key}={v:g}" for p, v in named)
            raise ConfigError(f"{listed}: one pool has one SLO; give every {SCORER_TYPE} the same {key}")
        current = getattr(fc, setting)
        explicit = current != defaults[setting].default
        if values:
            (value,) = values
            if explicit and current != value:
                p = named[0][0]
                raise ConfigError(
                    f"plugins[{p.ref}].parameters.{key}={value:g} and flow_control.{setting}={current:g}: "
                    f"routing and flow control judge by one SLO; set one of them (the other follows)"
                )
            if current != value:
                changes[f"flow_control.{setting}"] = value
            fill.append((field, key, value))
        elif explicit:
            fill.append((field, key, current))
    plugins = list(picker.plugins)
    for i, p in scorers:
        # a scorer that names the bound (camelCase or its snake_case field) keeps its own
        if missing := {k: v for f, k, v in fill if k not in p.parameters and f not in p.parameters}:
            plugins[i] = p.model_copy(update={"parameters": {**p.parameters, **missing}})
    if plugins != picker.plugins:
        picker = picker.model_copy(update={"plugins": plugins})
    return picker, (settings.replace(changes) if changes else settings)
