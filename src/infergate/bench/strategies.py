"""Routing strategies the benchmark compares, as EndpointPickerConfig documents.

Every strategy is a configuration of the real scheduler, so the matrix (real processes) and the
twin (virtual time) run exactly the code a user would. ``round-robin`` stands for a plain
Kubernetes Service; ``gie-default`` is the reference EPP's default profile; ``oracle`` exists only
in the twin, where true engine state can be read.
"""

from __future__ import annotations

from infergate.config.picker import (
    EndpointPickerConfig,
    default_picker_config,
    parse_picker_config,
    reference_picker_config,
)

__all__ = ["BASE_MODEL", "STRATEGIES", "picker_config", "strategy_names"]

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


def strategy_names(*, twin: bool) -> list[str]:
    names = ["default", "gie-default", *STRATEGIES]
    return [*names, "oracle"] if twin else names


def picker_config(name: str) -> EndpointPickerConfig:
    """The scheduler configuration of a named strategy (``default`` is the gateway's own default)."""
    if name == "default":
        return default_picker_config(lora=True, base_models=[BASE_MODEL])
    if name == "gie-default":  # the reference EPP's profile (+ LoRA affinity 2), for comparison
        return reference_picker_config(lora=True, base_models=[BASE_MODEL])
    try:
        return parse_picker_config(STRATEGIES[name], source=f"strategy {name}")
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; known: {', '.join(strategy_names(twin=True))}"
        ) from None
