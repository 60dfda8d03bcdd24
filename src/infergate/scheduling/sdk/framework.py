"""The scheduling plugin contract: Filter, Scorer, Picker, the PostPick hook, the lifecycle hooks,
CycleState, and the registry.

This module owns only contracts and the registry that turns a configured ``(type, name,
parameters)`` into a plugin instance. It runs nothing: the engine (``scheduling.engine``) runs the
stages, clamps scores, applies weights and times every call. Plugins stay synchronous, pure CPU
work over immutable snapshots, and never see their own name, type or weight.

Registration is typed per extension point (``register_scorer`` takes a factory returning a
:class:`Scorer`, and so on), so mypy rejects a plugin whose methods do not match its extension
point, and the engine fills a profile's slots from what was registered, never by probing methods.
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from infergate.errors import ConfigError
from infergate.scheduling.sdk.scores import endpoint_keys
from infergate.types import Clock, Endpoint, InferenceRequest, SchedulingResult, ScoredEndpoint

__all__ = [
    "CycleState",
    "DebugStateProvider",
    "EndpointStateHolder",
    "ExtensionPoint",
    "Filter",
    "FilterPostPick",
    "FilterScorer",
    "NoParams",
    "Params",
    "Picker",
    "PluginContext",
    "PluginRegistry",
    "PluginType",
    "PostPick",
    "ProfileHandler",
    "ResponseHeaderHook",
    "Scorer",
    "ScorerPostPick",
    "StateKey",
    "TpotObserver",
    "TtftObserver",
    "candidate_keys",
]

T = TypeVar("T")
P = TypeVar("P", bound=BaseModel)


@dataclass(frozen=True, slots=True, eq=False)
class StateKey(Generic[T]):
    """A typed key into :class:`CycleState`; the type parameter is the value's type.

    Keys compare by identity (each is a module constant): a dataclass's generated ``__hash__``
    is a Python call on every lookup, three or more per request.
    """

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
    :class:`~infergate.scheduling.sdk.scores.CandidateScores` over this very tuple lets the profile
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


class FilterScorer(Filter, Scorer, Protocol):
    """A plugin that filters and scores (``context-length-aware``)."""


class FilterPostPick(Filter, PostPick, Protocol):
    """A filter that learns from each pick of its profile (``session-affinity-filter``)."""


class ScorerPostPick(Scorer, PostPick, Protocol):
    """A scorer that records where requests went (prefix cache, predicted latency, sessions)."""


S = TypeVar("S")


class ProfileHandler(Protocol):
    """Chooses the scheduling profile of one request among several (``header-profile-handler``)."""

    @property
    def default_profile(self) -> str: ...

    def choose(self, request: InferenceRequest, profiles: Mapping[str, S]) -> S: ...


# ------------------------------------------------------------------ lifecycle hooks
# Optional interfaces a plugin of any extension point may add; the engine calls them.


@runtime_checkable
class EndpointStateHolder(Protocol):
    """Keeps state per endpoint: told when an endpoint leaves the pool, so the state goes too."""

    def remove_endpoint(self, key: str) -> None: ...


@runtime_checkable
class TtftObserver(Protocol):
    """Learns from outcomes: the observed time to first token of a request it helped schedule
    (``None`` when the request failed first), from when the gateway received the request, so a
    wait in flow control's queues is part of it (docs/scheduling.md says why)."""

    def observe_ttft(self, request_id: str, ttft_seconds: float | None) -> None: ...


@runtime_checkable
class TpotObserver(Protocol):
    """Learns from outcomes: the mean time between the streamed tokens after the first of a request
    it helped schedule, once per request, while it streams or at its end (``None``: nothing to
    learn from)."""

    def observe_tpot(self, request_id: str, tpot_seconds: float | None) -> None: ...


@runtime_checkable
class AnswerObserver(Protocol):
    """Learns from outcomes whose tokens nobody timed: a request it helped schedule whose answer
    came whole (not streamed) took ``seconds`` from its arrival at the gateway to its last byte for
    ``output_tokens`` tokens (``None``: nothing to learn). Called instead of ``observe_ttft`` and
    ``observe_tpot`` for that request; a plugin that observes those but not this one is told
    ``None`` by both, so it forgets the request all the same."""

    def observe_answer(self, request_id: str, seconds: float | None, output_tokens: int | None) -> None: ...


@runtime_checkable
class ResponseHeaderHook(Protocol):
    """Adds headers to the response from the chosen endpoint (``x-session-token``)."""

    def response_headers(self, target: Endpoint) -> dict[str, str]: ...


@runtime_checkable
class DebugStateProvider(Protocol):
    """Shows its per-endpoint state in ``/debug`` and the live view."""

    def debug_state(self) -> dict[str, dict[str, float]]: ...


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
    """What a plugin factory may use besides its parameters: shared randomness and time, the
    metrics, and the name the configuration gives the plugin (the ``plugin_name`` label of the
    metrics it records itself)."""

    rng: random.Random = field(default_factory=random.Random)
    clock: Clock | None = None
    metrics: Any = None  # GatewayMetrics | None; typed loosely to keep factories simple
    name: str = ""


class ExtensionPoint:
    """Names of the extension points a plugin type was registered for (the metrics' labels)."""

    FILTER = "Filter"
    SCORER = "Scorer"
    PICKER = "Picker"
    POST_PICK = "PostPick"
    PROFILE_HANDLER = "ProfileHandler"


@dataclass(frozen=True, slots=True)
class PluginType:
    """A registered plugin type: its kebab-case name, its Params model, how to build it and the
    extension points its instances serve.

    ``inert`` types (data-layer, parser, saturation-detector plugins of the reference EPP) are
    accepted in ``plugins:`` so reference configs load, but they are not scheduling stages.
    """

    name: str
    params: type[BaseModel]
    factory: Callable[[Any, PluginContext], object]
    points: frozenset[str] = frozenset()
    inert: bool = False


class PluginRegistry:
    """Maps plugin type names to factories; explicit object, no import-time side effects.

    One ``register_*`` method per extension point: the factory's return type is the extension
    point's protocol, so mypy checks the plugin against it.
    """

    def __init__(self) -> None:
        self._types: dict[str, PluginType] = {}

    def register_filter(
        self, name: str, params: type[P], factory: Callable[[P, PluginContext], Filter]
    ) -> None:
        self._add(name, params, factory, ExtensionPoint.FILTER)

    def register_scorer(
        self, name: str, params: type[P], factory: Callable[[P, PluginContext], Scorer]
    ) -> None:
        self._add(name, params, factory, ExtensionPoint.SCORER)

    def register_picker(
        self, name: str, params: type[P], factory: Callable[[P, PluginContext], Picker]
    ) -> None:
        self._add(name, params, factory, ExtensionPoint.PICKER)

    def register_filter_post_pick(
        self, name: str, params: type[P], factory: Callable[[P, PluginContext], FilterPostPick]
    ) -> None:
        """A filter whose PostPick hook runs after every successful pick of its profile."""
        self._add(name, params, factory, ExtensionPoint.FILTER, ExtensionPoint.POST_PICK)

    def register_scorer_post_pick(
        self, name: str, params: type[P], factory: Callable[[P, PluginContext], ScorerPostPick]
    ) -> None:
        """A scorer whose PostPick hook runs after every successful pick of its profile."""
        self._add(name, params, factory, ExtensionPoint.SCORER, ExtensionPoint.POST_PICK)

    def register_filter_scorer(
        self, name: str, params: type[P], factory: Callable[[P, PluginContext], FilterScorer]
    ) -> None:
        self._add(name, params, factory, ExtensionPoint.FILTER, ExtensionPoint.SCORER)

    def register_profile_handler(
        self, name: str, params: type[P], factory: Callable[[P, PluginContext], ProfileHandler]
    ) -> None:
        self._add(name, params, factory, ExtensionPoint.PROFILE_HANDLER)

    def _add(
        self,
        name: str,
        params: type[P],
        factory: Callable[[P, PluginContext], object],
        *points: str,
        inert: bool = False,
    ) -> None:
        if name in self._types:
            raise ValueError(f"plugin type {name!r} registered twice")
        self._types[name] = PluginType(
            name, params, cast("Callable[[Any, PluginContext], object]", factory), frozenset(points), inert
        )

    def register_helper(
        self, name: str, params: type[P], factory: Callable[[P, PluginContext], object]
    ) -> None:
        """A plugin another plugin uses by name (a P/D decider): built from its parameters, never
        a stage of a profile."""
        self._add(name, params, factory)

    def register_inert(self, name: str, params: type[BaseModel] = AnyParams) -> None:
        """A type that is not a scheduling stage; ``params`` says which parameters it accepts."""
        self._add(name, params, lambda _p, _c: _Inert(), inert=True)

    def register_refused(self, name: str, reason: str) -> None:
        """A reference type infergate knows but does not implement: naming it is an error."""

        def refuse(_p: object, _c: PluginContext) -> object:
            raise ValueError(f"not supported by infergate: {reason}")

        self._add(name, AnyParams, refuse)

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
            return pt.factory(params, replace(ctx, name=name))
        except ValueError as exc:
            raise ConfigError(f"plugin {name!r} (type {type_name}): {exc}") from None


class _Inert:
    """Placeholder instance for accepted-but-not-scheduling plugin types."""

    inert: ClassVar[bool] = True
