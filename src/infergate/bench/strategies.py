"""Routing strategies the benchmark compares, as EndpointPickerConfig documents.

Every strategy is a configuration of the real scheduler, so the matrix (real processes) and the
twin (virtual time) run exactly the code a user would. ``round-robin`` stands for a plain
Kubernetes Service; ``gie-default`` is the reference EPP's default profile;
``greedy-true-state`` exists only in the twin, where true engine state can be read: it sends each
request where an estimate of its TTFT from the engines' *true* queues and prefix caches is lowest.
It is a strong heuristic, not an upper bound (a greedy choice per request ignores what later
requests need, and its cost estimate is rough).

``default`` is exactly what the product runs by default: the default picker configuration *with*
the gateway's flow control. Every other strategy runs without flow control unless asked for with a
``+fc`` suffix (``prefix-only+fc``); ``+nofc`` turns it off (``default+nofc``).
"""

from __future__ import annotations

from dataclasses import dataclass

from infergate.config.picker import (
    EndpointPickerConfig,
    PluginSpec,
    default_picker_config,
    parse_picker_config,
    reference_picker_config,
)

__all__ = [
    "BASE_MODEL",
    "GREEDY",
    "PD_AGGREGATED",
    "PRECISE",
    "STRATEGIES",
    "Strategy",
    "pd_picker_config",
    "picker_config",
    "resolve_strategy",
    "strategy_names",
]

# The tutorial pool's base model: LoRA affinity is neutral for requests to it.
BASE_MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def _single(*plugins: tuple[str, float | None]) -> str:
    lines = ["apiVersion: inference.networking.x-k8s.io/v1alpha1", "kind: EndpointPickerConfig", "plugins:"]
    lines += [f"- type: {name}" for name, _ in plugins]
    lines += ["schedulingProfiles:", "- name: default", "  plugins:"]
    for name, weight in plugins:
        lines.append(f"  - pluginRef: {name}" + (f"\n    weight: {weight:g}" if weight is not None else ""))
    return "\n".join(lines) + "\n"


STRATEGIES: dict[str, str] = {
    "round-robin": _single(("round-robin-picker", None)),
    "random": _single(("random-picker", None)),
    "least-in-flight": _single(("least-in-flight-scorer", 1.0), ("max-score-picker", None)),
    "prefix-only": _single(("prefix-cache-scorer", 1.0), ("max-score-picker", None)),
    "lora-only": _single(("lora-affinity-scorer", 1.0), ("max-score-picker", None)),
}


# Greedy with true engine state (twin only): not a bound, a heuristic that cheats by reading the engines.
GREEDY = "greedy-true-state"
# The reference profile with the precise scorer in the approximate one's place (twin only: the
# twin's engines feed their KV events into the scorer's index; real runs would need a ZMQ endpoint).
PRECISE = "precise-prefix"


def strategy_names(*, twin: bool) -> list[str]:
    names = ["default", "gie-default", *STRATEGIES]
    return [*names, PRECISE, GREEDY] if twin else names


@dataclass(frozen=True, slots=True)
class Strategy:
    """A strategy name resolved: its base strategy and whether the gateway's flow control runs.

    ``flow_control`` is None when the name does not say (then the runner's default applies: off in
    the twin); ``default`` says True, ``+fc`` True, ``+nofc`` False.
    """

    name: str
    base: str
    flow_control: bool | None

    @property
    def greedy(self) -> bool:
        return self.base == GREEDY


def resolve_strategy(name: str) -> Strategy:
    """``BASE`` or ``BASE+fc`` / ``BASE+nofc``; an unknown base or suffix is an error naming it."""
    base, plus, suffix = name.partition("+")
    known = strategy_names(twin=True)
    if base not in known:
        raise ValueError(f"unknown strategy {base!r}; known: {', '.join(known)} (optionally +fc or +nofc)")
    if plus and suffix not in ("fc", "nofc"):
        raise ValueError(f"strategy {name!r}: unknown suffix {'+' + suffix!r} (expected +fc or +nofc)")
    if base == GREEDY and suffix == "fc":
        raise ValueError(f"strategy {name!r}: {GREEDY} picks from true engine state, without flow control")
    flow: bool | None = (
        {"fc": True, "nofc": False}.get(suffix) if plus else (True if base == "default" else None)
    )
    return Strategy(name=name, base=base, flow_control=flow)


def picker_config(name: str) -> EndpointPickerConfig:
    """The scheduler configuration of a named strategy (``default`` is the gateway's own default)."""
    name = resolve_strategy(name).base if "+" in name else name
    if name == "default":
        return default_picker_config(lora=True, base_models=[BASE_MODEL])
    if name == "gie-default":  # the reference EPP's profile (+ LoRA affinity 2), for comparison
        return reference_picker_config(lora=True, base_models=[BASE_MODEL])
    if name == PRECISE:
        ref = reference_picker_config(lora=True, base_models=[BASE_MODEL])
        precise = PluginSpec(
            type="precise-prefix-cache-scorer",
            name="prefix-cache-scorer",
            parameters={"kvEventsConfig": {"discoverPods": False}},
        )
        plugins = [precise if p.type == "prefix-cache-scorer" else p for p in ref.plugins]
        return ref.model_copy(update={"plugins": plugins})
    try:
        return parse_picker_config(STRATEGIES[name], source=f"strategy {name}")
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; known: {', '.join(strategy_names(twin=True))}"
        ) from None


# P/D comparisons (bench_pd.py, bench_realtime.py): the same scorers aggregated, or split into
# prefill and decode profiles with the prefix-based decider at a threshold of uncached tokens.
PD_AGGREGATED = """
plugins:
- type: prefix-cache-scorer
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: prefix-cache-scorer, weight: 2}
  - {pluginRef: queue-scorer}
  - {pluginRef: max-score-picker}
"""

_DISAGG = """
plugins:
- type: prefix-cache-scorer
- type: queue-scorer
- type: prefill-filter
- type: decode-filter
- type: max-score-picker
- type: disagg-profile-handler
  parameters: {{deciders: {{prefill: prefix-based-pd-decider}}}}
- type: prefix-based-pd-decider
  parameters: {{nonCachedTokens: {threshold}}}
schedulingProfiles:
- name: prefill
  plugins:
  - {{pluginRef: prefill-filter}}
  - {{pluginRef: prefix-cache-scorer, weight: 2}}
  - {{pluginRef: queue-scorer}}
- name: decode
  plugins:
  - {{pluginRef: decode-filter}}
  - {{pluginRef: prefix-cache-scorer, weight: 2}}
  - {{pluginRef: queue-scorer}}
"""


def pd_picker_config(threshold: int) -> EndpointPickerConfig:
    """The disaggregating configuration with ``nonCachedTokens: threshold``."""
    return parse_picker_config(_DISAGG.format(threshold=threshold), source="P/D configuration")
