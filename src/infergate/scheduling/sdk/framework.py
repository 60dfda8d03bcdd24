"""The scheduling plugin contract: Filter, Scorer, Picker, the PostPick hook, CycleState, registry.

This module owns only contracts and the registry that turns a configured ``(type, name,
parameters)`` into a plugin instance. It runs nothing: the profile (``profile.py``) runs the
stages, clamps scores, applies weights and times every call. Plugins stay synchronous, pure CPU
work over immutable snapshots, and never see their own name, type or weight.
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from infergate.errors import ConfigError
from infergate.scheduling.scores import endpoint_keys
from infergate.types import Clock, Endpoint, InferenceRequest, SchedulingResult, ScoredEndpoint

__all__ = [
    "CycleState",
    "Filter",
    "NoParams",
    "Params",
    "Picker",
    "PluginContext",
    "PluginRegistry",
    "PluginType",
    "PostPick",
    "Scorer",
    "StateKey",
    "candidate_keys",
]

T = TypeVar("T")
P = TypeVar("P", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class StateKey(Generic[T]):
    """A typed key into :class:`CycleState`; the type parameter is the value's type."""

    name: str


class CycleState:
    """Per-request scratch space shared by the plugins of one scheduling cycle.

    A scorer can leave work for a later stage (the prefix scorer leaves the request's block hashes
    for its PostPick hook) without recomputing it.
    """

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[StateKey[Any], object] = {}

    def get(self, key: StateKey[T]) -> T | None:
        return cast("T | None", self._data.get(key))

    def put(self, key: StateKey[T], value: T) -> None:
        self._data[key] = value


_KEYS: StateKey[tuple[Sequence[Endpoint], tuple[str, ...]]] = StateKey("candidate-keys")


def candidate_keys(candidates: Sequence[Endpoint], state: CycleState) -> tuple[str, ...]:
    """``[e.key for e in candidates]``, computed once per cycle and shared by all scorers.

    A tuple: the decision log keeps it (and the profile keeps every score column as a tuple) so
    retained decisions hold only containers the cyclic GC stops tracking, which keeps collection
    pauses off the scheduling path. The profile computes the keys of the list it passes to
    scorers once; a scorer that returns
    :class:`~infergate.scheduling.scores.CandidateScores` over this very tuple lets the profile
    use its values as they are, without any per-key lookup.
    """
    cached = state.get(_KEYS)
    if cached is not None and cached[0] is candidates:
        return cached[1]
    keys = tuple(endpoint_keys(candidates))
    state.put(_KEYS, (candidates, keys))
    return keys


class Filter(Protocol):
    """Removes candidates that must not serve the request; never adds any.

    An empty result ends the cycle with ``NoCapacityError``.
    """

    def filter(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Sequence[Endpoint]: ...


class Scorer(Protocol):
    """Scores candidates in [0, 1], higher is better, keyed by ``Endpoint.key``.

    A missing key counts as 0.0. The framework clamps to [0, 1] and applies the configured weight.
    Any mapping will do; returning ``CandidateScores(candidate_keys(candidates, state), values)``
    (values in candidate order) is the cheap form for dense scores: no dict per cycle.
    """

    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Mapping[str, float]: ...


class Picker(Protocol):
    """Orders the scored candidates: ``[0]`` is the primary target, the rest are fallbacks.

    Must break ties randomly (with the injected ``rng``) so equal endpoints share load. The
    profile passes a ``ScoredCandidates`` (``scores.split_scored`` gives its endpoint and score
    lists without building a ``ScoredEndpoint`` per candidate); any sequence must be accepted.
    """

    def pick(
        self, request: InferenceRequest, scored: Sequence[ScoredEndpoint], state: CycleState, /
    ) -> Sequence[Endpoint]: ...


class PostPick(Protocol):
    """Optional hook run after a successful pick, e.g. to record where a prompt prefix went."""

    def post_pick(
        self, request: InferenceRequest, result: SchedulingResult, state: CycleState, /
    ) -> None: ...


class Params(BaseModel):
    """Base for plugin parameter models: camelCase in YAML, unknown keys rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class NoParams(Params):
    """For plugins that take no parameters."""


class AnyParams(BaseModel):
    """For plugin types accepted for config compatibility but not run by the scheduler."""

    model_config = ConfigDict(extra="allow", frozen=True)


@dataclass(frozen=True, slots=True)
class PluginContext:
    """What a plugin factory may use besides its parameters: shared randomness and time."""

    rng: random.Random = field(default_factory=random.Random)
    clock: Clock | None = None
    metrics: Any = None  # GatewayMetrics | None; typed loosely to keep factories simple


@dataclass(frozen=True, slots=True)
class PluginType:
    """A registered plugin type: its kebab-case name, its Params model and how to build it.

    ``inert`` types (data-layer, parser, saturation-detector plugins of the reference EPP) are
    accepted in ``plugins:`` so reference configs load, but they are not scheduling stages.
    """

    name: str
    params: type[BaseModel]
    factory: Callable[[Any, PluginContext], object]
    inert: bool = False


class PluginRegistry:
    """Maps plugin type names to factories; explicit object, no import-time side effects."""

    def __init__(self) -> None:
        self._types: dict[str, PluginType] = {}

    def register(
        self,
        name: str,
        params: type[P],
        factory: Callable[[P, PluginContext], object],
        *,
        inert: bool = False,
    ) -> None:
        if name in self._types:
            raise ValueError(f"plugin type {name!r} registered twice")
        self._types[name] = PluginType(
            name, params, cast("Callable[[Any, PluginContext], object]", factory), inert
        )

    def register_inert(self, name: str, params: type[BaseModel] = AnyParams) -> None:
        """A type that is not a scheduling stage; ``params`` says which parameters it accepts."""
        self.register(name, params, lambda _p, _c: _Inert(), inert=True)

    def register_refused(self, name: str, reason: str) -> None:
        """A reference type infergate knows but does not implement: naming it is an error."""

        def refuse(_p: object, _c: PluginContext) -> object:
            raise ValueError(f"not supported by infergate: {reason}")

        self.register(name, AnyParams, refuse)

    def get(self, name: str) -> PluginType | None:
        return self._types.get(name)

    def types(self) -> list[str]:
        return sorted(self._types)

    def create(
        self, type_name: str, name: str, parameters: Mapping[str, Any] | None, ctx: PluginContext
    ) -> object:
        """Validate ``parameters`` against the type's Params model and build the plugin.

        Raises:
            ConfigError: unknown type, or invalid parameters; the message names the plugin.
        """
        pt = self._types.get(type_name)
        if pt is None:
            known = ", ".join(self.types())
            close = difflib.get_close_matches(type_name, self.types(), n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"plugin {name!r}: unknown type {type_name!r}{hint} (known: {known})")
        try:
            params = pt.params.model_validate(dict(parameters or {}))
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "parameters"
            raise ConfigError(
                f"plugin {name!r} (type {type_name}): parameters.{loc}: {first['msg']}"
            ) from None
        try:
            return pt.factory(params, ctx)
        except ValueError as exc:
            raise ConfigError(f"plugin {name!r} (type {type_name}): {exc}") from None


class _Inert:
    """Placeholder instance for accepted-but-not-scheduling plugin types."""

    inert: ClassVar[bool] = True
