"""infergate.scheduling: pick the endpoint for a request (filters → weighted scorers → picker).

Contracts in ``framework``, the run loop in ``profile``/``scheduler``, built-in plugins in
``scorers``, ``prefix``, ``pickers`` and ``filters``, their registry in ``registry``.
"""

from infergate.scheduling.framework import (
    CycleState,
    Filter,
    Picker,
    PluginRegistry,
    PostPick,
    Scorer,
    StateKey,
)
from infergate.scheduling.registry import default_registry
from infergate.scheduling.scheduler import Scheduler, build_scheduler

__all__ = [
    "CycleState",
    "Filter",
    "Picker",
    "PluginRegistry",
    "PostPick",
    "Scheduler",
    "Scorer",
    "StateKey",
    "build_scheduler",
    "default_registry",
]
