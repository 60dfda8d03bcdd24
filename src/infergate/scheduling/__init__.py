"""infergate.scheduling: pick the endpoint for a request (filters → weighted scorers → picker).

Three parts, each importing only the ones after it (an import-linter contract):

- ``engine``: builds the plugins and profiles from an ``EndpointPickerConfig`` and runs one
  scheduling cycle (weights, clamping, timing, the decision log, endpoint departure);
- ``plugins``: the built-in plugins and ``default_registry()``, which registers them;
- ``sdk``: the stable contracts a plugin is written against (``Filter``, ``Scorer``, ``Picker``,
  ``PostPick``, the lifecycle hooks, ``CycleState``/``StateKey``, ``Params``, the typed registry)
  and helpers for plugin tests.

May import: ``datastore``-free core types (``types``, ``errors``, ``config``); never HTTP or gRPC
libraries, request control, servers or the app.
"""

from infergate.scheduling.engine.scheduler import Scheduler, build_scheduler
from infergate.scheduling.plugins.registry import default_registry
from infergate.scheduling.sdk.framework import (
    CycleState,
    Filter,
    Picker,
    PluginRegistry,
    PostPick,
    Scorer,
    StateKey,
)

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
