"""The scheduler: builds plugins and the profile from an EndpointPickerConfig and runs one cycle.

``build_scheduler`` is the two-phase loader of the reference EPP in one function: instantiate
every entry of ``plugins:`` once (unknown type, duplicate name or bad parameters → ConfigError
naming the plugin), then assemble the profile from ``pluginRef``/``weight``, applying the
reference defaults (scorer weight 1.0, no profile → one ``default`` profile holding every
scheduling plugin, no picker → ``max-score-picker``). ``Scheduler.schedule`` times the whole
cycle into ``inference_extension_scheduler_e2e_duration_seconds``. Admitters
(``probabilistic-admitter``) are plugins too, but no profile stage: ``Scheduler.admit`` runs them for
request control, before flow control, each timed into the plugin-duration histogram at extension
point ``Admission``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Awaitable, Callable, Container, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from infergate.errors import ConfigError, NoCapacityError
from infergate.scheduling.engine.profile import (
    FilterSlot,
    PickerSlot,
    PostPickSlot,
    SchedulerProfile,
    ScorerSlot,
)
from infergate.scheduling.plugins.admitter import Admitter
from infergate.scheduling.plugins.disagg import DisaggProfileHandler
from infergate.scheduling.plugins.pickers import MaxScorePicker
from infergate.scheduling.plugins.registry import default_registry
from infergate.scheduling.sdk.framework import (
    AnswerObserver,
    CycleState,
    DebugStateProvider,
    EndpointStateHolder,
    ExtensionPoint,
    Filter,
    Picker,
    PluginContext,
    PluginRegistry,
    PluginType,
    PostPick,
    ProfileHandler,
    ResponseHeaderHook,
    Scorer,
    TpotObserver,
    TtftObserver,
)
from infergate.types import Clock, Endpoint, InferenceRequest, SchedulingResult

if TYPE_CHECKING:
    from infergate.scheduling.engine.decisions import DecisionLog
    from infergate.telemetry import GatewayMetrics

__all__ = ["PickerConfigLike", "Scheduler", "build_scheduler"]


class PluginSpecLike(Protocol):
    @property
    def type(self) -> str: ...
    @property
    def name(self) -> str | None: ...
    @property
    def parameters(self) -> Mapping[str, Any]: ...


class PluginRefLike(Protocol):
    @property
    def plugin_ref(self) -> str: ...
    @property
    def weight(self) -> float | None: ...


class ProfileSpecLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def plugins(self) -> Sequence[PluginRefLike]: ...


class PickerConfigLike(Protocol):
    """The shape of ``infergate.config.picker.EndpointPickerConfig`` that scheduling reads."""

    @property
    def plugins(self) -> Sequence[PluginSpecLike]: ...
    @property
    def scheduling_profiles(self) -> Sequence[ProfileSpecLike]: ...


class Scheduler:
    """Runs the configured profile for one request over a given candidate list.

    Also exposes the plugin instances by name (``plugin``) and ``forget_endpoint``, which the
    composition root subscribes to the datastore's endpoint removals so every plugin with
    per-endpoint state (:class:`EndpointStateHolder`) drops it when an endpoint leaves the pool.
    With a ``decision_log``, every successful result is appended to it (by reference) for the live
    view. The configured :class:`~infergate.scheduling.plugins.admitter.Admitter` plugins, in
    ``plugins:`` order, are run by :meth:`admit`.
    """

    def __init__(
        self,
        profile: SchedulerProfile,
        *,
        plugins: Mapping[str, object] | None = None,
        metrics: GatewayMetrics | None = None,
        decision_log: DecisionLog | None = None,
        clock: Clock | None = None,
        profiles: Mapping[str, SchedulerProfile] | None = None,
        handler: ProfileHandler | None = None,
    ) -> None:
        self.profile = profile
        """The default profile (the only one unless a profile handler chooses among several)."""
        self.profiles = dict(profiles or {profile.name: profile})
        self._handler = (
            handler if len(self.profiles) > 1 or isinstance(handler, DisaggProfileHandler) else None
        )
        self._plugins = dict(plugins or {})
        self._metrics = metrics
        self._e2e = metrics.scheduler_e2e_duration if metrics is not None else None
        # (target model, pod, namespace, port) -> its attempts counter child, resolved once
        self._attempts: dict[tuple[str, str, str, int], Any] = {}
        self.decision_log = decision_log
        self._clock = clock
        plugins_ = list(self._plugins.values())
        self._observers = [p for p in plugins_ if isinstance(p, TtftObserver)]
        self._tpot_observers = [p for p in plugins_ if isinstance(p, TpotObserver)]
        self._answer_observers = [p for p in plugins_ if isinstance(p, AnswerObserver)]
        # told None by observe_answer, so they forget the request: they do not learn from answers
        self._ttft_only: list[TtftObserver] = []
        self._tpot_only: list[TpotObserver] = []
        for p in plugins_:
            if isinstance(p, AnswerObserver):
                continue
            if isinstance(p, TtftObserver):
                self._ttft_only.append(p)
            if isinstance(p, TpotObserver):
                self._tpot_only.append(p)
        self._header_hooks = [p for p in plugins_ if isinstance(p, ResponseHeaderHook)]
        self._holders = [p for p in plugins_ if isinstance(p, EndpointStateHolder)]
        self._admitters = [
            (p, _timer(metrics, "Admission", getattr(p, "plugin_type", type(p).__name__), name))
            for name, p in self._plugins.items()
            if isinstance(p, Admitter)
        ]

    @property
    def admitters(self) -> tuple[Admitter, ...]:
        """The configured admission plugins, in ``plugins:`` order (empty: every request is admitted)."""
        return tuple(p for p, _ in self._admitters)

    def admit(
        self, request: InferenceRequest, endpoints: Sequence[Endpoint], stale: Container[str]
    ) -> str | None:
        """Run the admitters in order over the pool's healthy ``endpoints`` (``stale``: keys of those
        whose metrics are stale or missing); the first refusal's reason, None when all admit."""
        for admitter, timer in self._admitters:
            t0 = time.perf_counter()
            reason = admitter.admit(request, endpoints, stale)
            if timer is not None:
                timer.observe(time.perf_counter() - t0)
            if reason is not None:
                return reason
        return None

    def plugin(self, name: str) -> object | None:
        return self._plugins.get(name)

    def plugins(self) -> list[object]:
        """Every configured plugin instance (the twin feeds KV events to the ones that read them)."""
        return list(self._plugins.values())

    def response_headers(self, target: Endpoint) -> dict[str, str]:
        """Headers plugins add to the response from ``target`` (``x-session-token``)."""
        out: dict[str, str] = {}
        for hook in self._header_hooks:
            out.update(hook.response_headers(target))
        return out

    def forget_endpoint(self, key: str) -> None:
        """Tell every plugin with per-endpoint state that ``key`` is gone."""
        for holder in self._holders:
            holder.remove_endpoint(key)

    def background_tasks(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """Long-running loops plugins need (the KV-event subscriber), for the app to supervise."""
        out: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        for p in self._plugins.values():
            tasks = getattr(p, "background_tasks", None)
            if callable(tasks):
                out.extend(tasks())
        return out

    def sync_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """Tell plugins that follow the pool's membership (``sync_endpoints``) what it is now."""
        for p in self._plugins.values():
            sync = getattr(p, "sync_endpoints", None)
            if callable(sync):
                sync(endpoints)

    def debug_state(self) -> dict[str, dict[str, dict[str, float]]]:
        """Each stateful plugin's per-endpoint state (``debug_state()``), by plugin name."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for name, p in self._plugins.items():
            if isinstance(p, DebugStateProvider):
                out[name] = p.debug_state()
        return out

    def observe_ttft(self, request_id: str, ttft_seconds: float | None) -> None:
        """Report a scheduled request's observed time to first token (None: it failed first).

        Plugins that learn from outcomes (``predicted-latency-scorer``) correct their model with it.
        """
        for observer in self._observers:
            observer.observe_ttft(request_id, ttft_seconds)

    def observe_tpot(self, request_id: str, tpot_seconds: float | None) -> None:
        """Report a scheduled request's mean time per streamed token after the first, once per
        request: at its ``TPOT_REPORT_TOKENS``-th token or its end (None: nothing to learn, e.g. it
        failed or was not streamed)."""
        for observer in self._tpot_observers:
            observer.observe_tpot(request_id, tpot_seconds)

    def observe_answer(self, request_id: str, seconds: float | None, output_tokens: int | None) -> None:
        """Report a scheduled request whose answer came whole (not streamed): ``seconds`` from
        dispatch to its last byte for ``output_tokens`` tokens (None: nothing to learn). Instead
        of :meth:`observe_ttft` and :meth:`observe_tpot`, which observers that do not learn from
        whole answers get with ``None``, so they forget the request."""
        for answer_observer in self._answer_observers:
            answer_observer.observe_answer(request_id, seconds, output_tokens)
        for ttft_observer in self._ttft_only:
            ttft_observer.observe_ttft(request_id, None)
        for tpot_observer in self._tpot_only:
            tpot_observer.observe_tpot(request_id, None)

    def schedule(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> SchedulingResult:
        """Pick a primary target and up to two fallbacks among ``candidates``.

        Raises:
            NoCapacityError: no candidate given, a filter left none, or the picker chose none.
        """
        t0 = time.perf_counter()
        try:
            if not candidates:
                raise NoCapacityError("no ready endpoint in the pool")
            handler = self._handler
            if isinstance(handler, DisaggProfileHandler):
                result = handler.run(request, candidates, self.profiles, CycleState())
            else:
                profile = self.profile if handler is None else handler.choose(request, self.profiles)
                result = profile.run(request, candidates, CycleState())
        except NoCapacityError:
            self._record(request, None, t0)
            raise
        self._record(request, result.primary, t0)
        if self.decision_log is not None:
            now = self._clock.now() if self._clock is not None else time.monotonic()
            self.decision_log.record(request, result, now)
        return result

    def _record(self, request: InferenceRequest, target: Endpoint | None, t0: float) -> None:
        m = self._metrics
        if m is None:
            return
        if self._e2e is not None:
            self._e2e.observe(time.perf_counter() - t0)
        if target is None:
            m.scheduler_attempts_total.labels(
                status="failure", target_model_name=request.target_model, pod_name="", namespace="", port=""
            ).inc()
        else:
            meta = target.meta
            key = (request.target_model, meta.name, meta.namespace, meta.port)
            child = self._attempts.get(key)
            if child is None:
                if len(self._attempts) >= 4096:  # client-chosen model names: stay bounded
                    self._attempts.clear()
                child = self._attempts[key] = m.scheduler_attempts_total.labels(
                    status="success",
                    target_model_name=request.target_model,
                    pod_name=meta.name,
                    namespace=meta.namespace,
                    port=str(meta.port),
                )
            child.inc()


def _timer(metrics: GatewayMetrics | None, point: str, type_: str, name: str) -> Any:
    if metrics is None:
        return None
    return metrics.plugin_duration.labels(extension_point=point, plugin_type=type_, plugin_name=name)


def build_scheduler(
    config: PickerConfigLike,
    *,
    metrics: GatewayMetrics | None = None,
    rng: random.Random | None = None,
    clock: Clock | None = None,
    registry: PluginRegistry | None = None,
    decision_log: DecisionLog | None = None,
) -> Scheduler:
    """Instantiate the configured plugins and assemble the scheduling profiles (several only with a
    ``header-profile-handler`` choosing one per request).

    Raises:
        ConfigError: unknown plugin type, duplicate plugin name, invalid parameters, a profile
            referencing an unknown plugin, a negative or non-finite weight, two pickers in a
            profile, or several profiles without a profile handler. The message names the plugin or
            profile.
    """
    reg = registry if registry is not None else default_registry()
    ctx = PluginContext(rng=rng if rng is not None else random.Random(), clock=clock, metrics=metrics)

    instances: dict[str, object] = {}
    types: dict[str, PluginType] = {}
    for i, spec in enumerate(config.plugins):
        name = spec.name or spec.type
        if not spec.type:
            raise ConfigError(f"plugins[{i}]: type is required")
        if name in instances:
            raise ConfigError(f"plugins[{i}]: duplicate plugin name {name!r}")
        instances[name] = reg.create(spec.type, name, spec.parameters, ctx)
        registered = reg.get(spec.type)
        assert registered is not None  # create() raised otherwise
        types[name] = registered

    # plugins that read another plugin of the config (topology plugins read its topology-extractor)
    everyone = {name: (inst, types[name].name) for name, inst in instances.items()}
    for name, inst in instances.items():
        bind_plugins = getattr(inst, "bind_plugins", None)
        if callable(bind_plugins):
            try:
                bind_plugins(everyone)
            except ValueError as exc:
                raise ConfigError(f"plugins[{name}]: {exc}") from None

    profiles = list(config.scheduling_profiles)
    handlers = [n for n, t in types.items() if ExtensionPoint.PROFILE_HANDLER in t.points]
    if len(handlers) > 1:
        raise ConfigError(f"plugins: several profile handlers ({', '.join(handlers)}); configure one")
    # registered with register_profile_handler, whose factory returns a ProfileHandler
    handler = cast(ProfileHandler, instances[handlers[0]]) if handlers else None
    if isinstance(handler, DisaggProfileHandler):
        try:
            handler.bind(instances)
        except ValueError as exc:
            raise ConfigError(f"plugins[{handlers[0]}].parameters.{exc}") from None
    if len(profiles) > 1 and handler is None:
        names = ", ".join(p.name for p in profiles)
        raise ConfigError(
            f"schedulingProfiles: {len(profiles)} profiles ({names}) need a profile handler that picks "
            "one per request (header-profile-handler, disagg-profile-handler)"
        )
    built: dict[str, SchedulerProfile] = {}
    if profiles:
        for prof in profiles:
            pname = prof.name or "default"
            refs: list[tuple[str, float | None]] = []
            for ref in prof.plugins:
                if ref.plugin_ref not in instances:
                    raise ConfigError(
                        f"schedulingProfiles[{pname}]: pluginRef {ref.plugin_ref!r} "
                        "names no plugin in plugins:"
                    )
                refs.append((ref.plugin_ref, ref.weight))
            built[pname] = _build_profile(pname, refs, instances, types, metrics, ctx)
    else:
        stages = [n for n, t in types.items() if t.points and ExtensionPoint.PROFILE_HANDLER not in t.points]
        refs = [(n, None) for n in stages]
        built["default"] = _build_profile("default", refs, instances, types, metrics, ctx)
    if isinstance(handler, DisaggProfileHandler):
        _check_disagg(handlers[0], handler, built, config, types)
    elif handler is not None and len(built) > 1 and handler.default_profile not in built:
        raise ConfigError(
            f"plugins[{handlers[0]}].parameters.defaultProfile: no scheduling profile named "
            f"{handler.default_profile!r} (profiles: {', '.join(built)})"
        )
    return Scheduler(
        next(iter(built.values())),
        plugins=instances,
        metrics=metrics,
        decision_log=decision_log,
        clock=clock,
        profiles=built,
        handler=handler,
    )


def _build_profile(
    pname: str,
    refs: list[tuple[str, float | None]],
    instances: dict[str, object],
    types: dict[str, PluginType],
    metrics: GatewayMetrics | None,
    ctx: PluginContext,
) -> SchedulerProfile:
    """One profile's stages, in the order referenced; a profile without a picker gets max-score.

    A plugin fills the slots of the extension points its type was registered for; the casts hold
    because each ``register_*`` method's factory returns that extension point's protocol.
    """
    filters: list[FilterSlot] = []
    scorers: list[ScorerSlot] = []
    pickers: list[PickerSlot] = []
    post_picks: list[PostPickSlot] = []
    for name, weight in refs:
        inst, registered = instances[name], types[name]
        type_, points = registered.name, registered.points
        if isinstance(inst, Admitter):
            continue  # not a stage: runs once per request before flow control (upstream lists it so)
        if not points or ExtensionPoint.PROFILE_HANDLER in points:
            raise ConfigError(
                f"schedulingProfiles[{pname}]: plugin {name!r} (type {type_}) is not a filter, scorer "
                "or picker in infergate; remove it from the profile"
            )
        if weight is not None and not 0 <= weight < math.inf:  # NaN fails both comparisons
            raise ConfigError(
                f"schedulingProfiles[{pname}]: plugin {name!r}: weight must be a finite number >= 0"
            )
        if ExtensionPoint.FILTER in points:
            filters.append(
                FilterSlot(name, type_, _timer(metrics, "Filter", type_, name), cast(Filter, inst))
            )
        if ExtensionPoint.SCORER in points:
            w = 1.0 if weight is None else float(weight)
            scorers.append(
                ScorerSlot(name, type_, _timer(metrics, "Scorer", type_, name), cast(Scorer, inst), w)
            )
        if ExtensionPoint.PICKER in points:
            pickers.append(
                PickerSlot(name, type_, _timer(metrics, "Picker", type_, name), cast(Picker, inst))
            )
        if ExtensionPoint.POST_PICK in points:
            post_picks.append(
                PostPickSlot(name, type_, _timer(metrics, "PostPick", type_, name), cast(PostPick, inst))
            )
    # plugins that read another plugin of the same profile (prefix-cache-affinity-filter reads the
    # prefix-cache-scorer's index) find it here
    members = {name: (instances[name], types[name]) for name, _ in refs}
    for name, _ in refs:
        bind = getattr(instances[name], "bind_profile", None)
        if callable(bind):
            try:
                bind(members)
            except ValueError as exc:
                raise ConfigError(f"schedulingProfiles[{pname}]: plugin {name!r}: {exc}") from None
    if len(pickers) > 1:
        names = ", ".join(p.name for p in pickers)
        raise ConfigError(f"schedulingProfiles[{pname}]: more than one picker ({names})")
    if not pickers:
        default = MaxScorePicker(rng=ctx.rng)
        name = "max-score-picker"
        pickers.append(PickerSlot(name, name, _timer(metrics, "Picker", name, name), default))
        instances.setdefault(name, default)
    return SchedulerProfile(pname, filters=filters, scorers=scorers, picker=pickers[0], post_picks=post_picks)


_PREFIX_TYPES = frozenset({"prefix-cache-scorer", "precise-prefix-cache-scorer"})


def _check_disagg(
    name: str,
    handler: DisaggProfileHandler,
    built: Mapping[str, SchedulerProfile],
    config: PickerConfigLike,
    types: Mapping[str, PluginType],
) -> None:
    """Every profile the handler runs exists, every profile exists to be run, and a decider that
    reads the decode endpoint's cached prefix has a prefix scorer in the decode profile."""
    needed = handler.profile_names()
    for pname in needed:
        if pname not in built:
            raise ConfigError(
                f"plugins[{name}]: no scheduling profile named {pname!r} (profiles: {', '.join(built)})"
            )
    unused = [p for p in built if p not in needed]
    if unused:
        hint = "; set parameters.deciders.prefill to run a prefill profile" if handler.decider is None else ""
        raise ConfigError(f"schedulingProfiles: {', '.join(unused)} never run by {name}{hint}")
    if getattr(handler.decider, "needs_prefix_info", False):
        refs = next(p for p in config.scheduling_profiles if (p.name or "default") == handler.decode_profile)
        if not any(r.plugin_ref in types and types[r.plugin_ref].name in _PREFIX_TYPES for r in refs.plugins):
            raise ConfigError(
                f"schedulingProfiles[{handler.decode_profile}]: {handler.decider_name} reads the decode "
                "endpoint's cached prefix; add prefix-cache-scorer or precise-prefix-cache-scorer"
            )
