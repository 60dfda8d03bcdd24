"""The scheduling plugin SDK: what a plugin is written against, and nothing that runs plugins.

Stable: the extension points (``Filter``, ``Scorer``, ``Picker``, ``PostPick``, ``ProfileHandler``),
the lifecycle hooks (``EndpointStateHolder``, ``TtftObserver``, ``TpotObserver``,
``AnswerObserver``, ``ResponseHeaderHook``, ``DebugStateProvider``), ``CycleState`` with typed
``StateKey``, ``Params`` and the typed ``PluginRegistry``; ``scores`` (dense score containers) and
``testing`` (endpoints for tests).

May import: ``infergate.types``, ``infergate.errors``, pydantic. Not the engine, not the plugins.
"""

from infergate.scheduling.sdk.framework import (
    AnswerObserver,
    CycleState,
    DebugStateProvider,
    EndpointStateHolder,
    ExtensionPoint,
    Filter,
    NoParams,
    Params,
    Picker,
    PluginContext,
    PluginRegistry,
    PostPick,
    ProfileHandler,
    ResponseHeaderHook,
    Scorer,
    StateKey,
    TpotObserver,
    TtftObserver,
)

__all__ = [
    "AnswerObserver",
    "CycleState",
    "DebugStateProvider",
    "EndpointStateHolder",
    "ExtensionPoint",
    "Filter",
    "NoParams",
    "Params",
    "Picker",
    "PluginContext",
    "PluginRegistry",
    "PostPick",
    "ProfileHandler",
    "ResponseHeaderHook",
    "Scorer",
    "StateKey",
    "TpotObserver",
    "TtftObserver",
]
