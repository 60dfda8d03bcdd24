"""The datastore: the gateway's in-memory picture of one pool.

It owns the pool spec, the endpoints (identity, latest metrics snapshot, health, the gateway's own
in-flight count, the model names each one serves), the InferenceObjectives and the
InferenceModelRewrites. Every endpoint is held as an immutable :class:`~infergate.types.Endpoint`;
any change builds a new object with :func:`dataclasses.replace` and swaps it in, so a snapshot
handed to the scheduler can never change under its feet.

The datastore is owned by the event loop: it is not thread-safe and never awaits. It does no I/O;
sources (manifests, Kubernetes watches, the metrics scraper) write into it, request control and
flow control read from it. Listeners are called synchronously after each endpoint change so
waiters (flow control) can react without polling.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from infergate.config.settings import Settings
from infergate.types import (
    CORE_METRICS_PRODUCER,
    NO_ATTRIBUTES,
    Clock,
    Endpoint,
    EndpointMeta,
    EndpointMetrics,
    ModelRewrite,
    MonotonicClock,
    Objective,
    PoolSpec,
)

__all__ = ["Datastore"]

log = logging.getLogger(__name__)

Listener = Callable[[], None]


class Datastore:
    """Pool, endpoints, objectives and rewrites for one gateway.

    Args:
        clock: time source used to judge metrics freshness in :meth:`candidates`.
        staleness: seconds after the last successful scrape during which an endpoint's metrics
            still count as fresh. An endpoint never scraped (``updated_at == 0``) is never fresh.
    """

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock | None = None) -> Datastore:
        """A datastore judging metrics stale after ``scrape.staleness``."""
        return cls(clock, staleness=settings.scrape.staleness)

    def __init__(self, clock: Clock | None = None, *, staleness: float = 2.0) -> None:
        if staleness <= 0:
            raise ValueError("staleness must be > 0")
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._staleness = staleness
        self._pool: PoolSpec | None = None
        self._endpoints: dict[str, Endpoint] = {}
        self._models: dict[str, frozenset[str]] = {}
        self._context: dict[str, int] = {}
        self._objectives: dict[str, Objective] = {}
        self._rewrites: dict[str, ModelRewrite] = {}
        self._listeners: list[Listener] = []
        # listeners that follow membership, health, metrics and models, not in-flight counts
        self._state_listeners: list[Listener] = []
        self._departure_listeners: list[Callable[[str], None]] = []
        self._membership = 0
        # other gateway workers' in-flight counts per endpoint: (in flight, of them seen to start)
        self._peers: dict[int, dict[str, tuple[int, int]]] = {}
        # Aggregates every request reads, kept here instead of recomputed per request over every
        # endpoint (or objective): None means "recompute on the next read".
        self._healthy = 0
        self._served: frozenset[str] | None = frozenset()
        self._max_context: tuple[int | None] | None = (None,)
        self._top_priority: tuple[int | None] | None = (None,)
        self._priorities_differ: bool | None = False  # None: to be worked out again

    # -- pool -------------------------------------------------------------------------------

    @property
    def pool(self) -> PoolSpec | None:
        """The pool this gateway serves, once known."""
        return self._pool

    @property
    def staleness(self) -> float:
        return self._staleness

    @property
    def clock(self) -> Clock:
        return self._clock

    def set_pool(self, pool: PoolSpec) -> None:
        self._pool = pool
        self._notify()

    # -- endpoints --------------------------------------------------------------------------

    def upsert_endpoint(self, meta: EndpointMeta) -> None:
        """Add an endpoint, or replace the identity of a known one keeping its live state.

        Metrics, health and in-flight count survive an update of labels or name, because a pod
        relabel must not make the scheduler forget what it knows about that server.
        """
        old = self._endpoints.get(meta.key)
        if old is None:
            endpoint = self._endpoints[meta.key] = Endpoint(meta=meta)
            self._healthy += endpoint.healthy
            self._membership += 1
        elif old.meta == meta:
            return
        else:
            self._endpoints[meta.key] = replace(old, meta=meta)
        self._notify()

    def remove_endpoint(self, key: str) -> None:
        """Forget an endpoint; unknown keys are ignored (removals may race with scrapes)."""
        old = self._endpoints.pop(key, None)
        if old is None:
            return
        self._healthy -= old.healthy
        if self._models.pop(key, None):
            self._served = None
        if self._context.pop(key, None) is not None:
            self._max_context = None
        for counts in self._peers.values():
            counts.pop(key, None)
        self._membership += 1
        for departed in tuple(self._departure_listeners):
            try:
                departed(key)
            except Exception:
                log.exception("datastore departure listener %r failed", departed)
        self._notify()

    def endpoint(self, key: str) -> Endpoint | None:
        return self._endpoints.get(key)

    # -- other gateway workers' in-flight requests ---------------------------------------------
    def set_peer_in_flight(self, peer: int, key: str, count: int, started: int = 0) -> None:
        """Another gateway worker (``proxy.workers``) now has ``count`` requests in flight on ``key``,
        ``started`` of them seen to start.

        Only scheduling sees these (:meth:`with_peer_in_flight`): ``Endpoint.in_flight`` stays what
        this process sent, which flow control's saturation detector and the late-scrape correction
        of a worker's datastore count. Listeners are not notified.
        """
        counts = self._peers.setdefault(peer, {})
        if count > 0:
            counts[key] = (count, started if started < count else count)
        else:
            counts.pop(key, None)

    def forget_peer(self, peer: int) -> None:
        """A gateway worker exited: its requests are gone with it."""
        self._peers.pop(peer, None)

    def with_peer_in_flight(self, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        """``endpoints`` with every gateway worker's in-flight requests in ``in_flight`` and those
        seen to start in ``in_flight_started``: this process's own plus the others' latest counts
        (:meth:`set_peer_in_flight`)."""
        if not self._peers:
            return list(endpoints)
        out: list[Endpoint] = []
        for e in endpoints:
            extra = started = 0
            for counts in self._peers.values():
                c = counts.get(e.key)
                if c is not None:
                    extra += c[0]
                    started += c[1]
            if extra:
                e = e.with_load(e.in_flight + extra, e.in_flight_tokens, e.in_flight_started + started)
            out.append(e)
        return out

    @property
    def membership_version(self) -> int:
        """Changes whenever an endpoint joins, leaves or changes health (not on metrics or in-flight
        changes), so a listener that only cares about rotation can skip the frequent other changes."""
        return self._membership

    def endpoints(self) -> list[Endpoint]:
        """Every known endpoint, healthy or not, fresh or not."""
        return list(self._endpoints.values())

    def has_healthy(self) -> bool:
        """Whether any endpoint is healthy (fresh metrics or not): a count kept as endpoints come,
        go and change health, since flow control asks for every request."""
        return self._healthy > 0

    def is_fresh(self, endpoint: Endpoint, now: float | None = None) -> bool:
        """True when the endpoint's metrics were scraped within ``staleness`` seconds of ``now``."""
        updated = endpoint.metrics.updated_at
        if updated <= 0.0:
            return False
        t = self._clock.now() if now is None else now
        return t - updated <= self._staleness

    def candidates(self) -> list[Endpoint]:
        """Endpoints the scheduler may pick: healthy and with fresh metrics.

        Fresh means scraped at least once (``updated_at > 0``) and no longer than ``staleness``
        seconds ago by this datastore's clock.
        """
        now = self._clock.now()
        limit = now - self._staleness
        return [
            e
            for e in self._endpoints.values()
            if e.healthy and e.metrics.updated_at > 0.0 and e.metrics.updated_at >= limit
        ]

    def update_metrics(self, key: str, metrics: EndpointMetrics) -> None:
        """Swap in a new metrics snapshot; ignored if the endpoint was removed meanwhile.

        The snapshot is the model server's own page: its attributes are those of
        ``core-metrics-extractor``. Attributes other producers set (:meth:`set_attributes`, on
        their own schedule) carry over.
        """
        old = self._endpoints.get(key)
        if old is None:
            return
        if old.metrics.attributes is not NO_ATTRIBUTES:  # only where some source set attributes
            carried = old.metrics.attributes.with_producer(
                CORE_METRICS_PRODUCER, metrics.attributes.of(CORE_METRICS_PRODUCER)
            )
            if carried is not metrics.attributes:
                metrics = replace(metrics, attributes=carried)
        self._endpoints[key] = replace(old, metrics=metrics)
        self._notify()

    def replace_metrics(self, key: str, metrics: EndpointMetrics) -> None:
        """Swap in a snapshot holding every producer's attributes (a worker's copy of the
        gateway's datastore): nothing carries over."""
        old = self._endpoints.get(key)
        if old is None:
            return
        self._endpoints[key] = replace(old, metrics=metrics)
        self._notify()

    def set_attributes(self, key: str, producer: str, values: Mapping[str, float]) -> None:
        """Replace the attributes ``producer`` publishes for one endpoint (empty: remove them);
        the metrics and the other producers' attributes stay. Ignored for an unknown endpoint."""
        old = self._endpoints.get(key)
        if old is None:
            return
        attributes = old.metrics.attributes.with_producer(producer, values)
        if attributes is old.metrics.attributes:
            return
        self._endpoints[key] = replace(old, metrics=replace(old.metrics, attributes=attributes))
        self._notify()

    def set_healthy(self, key: str, healthy: bool) -> None:
        old = self._endpoints.get(key)
        if old is None or old.healthy == healthy:
            return
        self._endpoints[key] = replace(old, healthy=healthy)
        self._healthy += 1 if healthy else -1
        self._membership += 1
        self._notify()

    def set_models(self, key: str, models: frozenset[str]) -> None:
        """Record the model names (base models and adapters) one endpoint serves."""
        if key not in self._endpoints or self._models.get(key) == models:
            return
        self._models[key] = frozenset(models)
        self._served = None

    def set_max_model_len(self, key: str, tokens: int | None) -> None:
        """Record the context length one endpoint reports for its base model (None: unknown)."""
        if key not in self._endpoints or self._context.get(key) == tokens:
            return
        if tokens is None:
            self._context.pop(key, None)
        else:
            self._context[key] = tokens
        self._max_context = None

    def max_model_len(self) -> int | None:
        """The longest context any endpoint reports: a prompt longer than that fits nowhere in the
        pool, so the gateway refuses it instead of letting a model server spend work on it."""
        cached = self._max_context
        if cached is None:
            cached = self._max_context = (max(self._context.values(), default=None),)
        return cached[0]

    def context_lengths(self) -> dict[str, int]:
        """Every endpoint's reported context length (what worker processes receive)."""
        return dict(self._context)

    def models(self, key: str) -> frozenset[str]:
        """The model names last reported by one endpoint (empty if not known yet)."""
        return self._models.get(key, frozenset())

    def served_models(self) -> frozenset[str]:
        """Union of the model names served by every known endpoint, healthy or not.

        Unhealthy endpoints count so that a pool that is briefly down answers 503 (no capacity)
        rather than 404 (unknown model).
        """
        served = self._served
        if served is None:
            out: set[str] = set()
            for models in self._models.values():
                out |= models
            served = self._served = frozenset(out)
        return served

    def acquire(self, key: str, tokens: int = 0) -> None:
        """Count one more request the gateway has sent to ``key`` and not yet seen finish (nor
        start), with ``tokens`` estimated prompt tokens still to prefill."""
        old = self._endpoints.get(key)
        if old is None:
            return
        self._endpoints[key] = old.with_load(old.in_flight + 1, old.in_flight_tokens + max(0, tokens))
        self._notify(in_flight=True)

    def release(self, key: str, tokens: int = 0, *, started: bool = False) -> None:
        """Count one request to ``key`` as finished, with the ``tokens`` it still held; never goes
        below zero. ``started``: :meth:`start` already counted it as started."""
        old = self._endpoints.get(key)
        if old is None or old.in_flight == 0:
            return
        left = max(0, old.in_flight_tokens - max(0, tokens))
        seen = old.in_flight_started
        if started or seen >= old.in_flight:
            seen = max(0, seen - 1)
        self._endpoints[key] = old.with_load(old.in_flight - 1, left, seen)
        self._notify(in_flight=True)

    def start(self, key: str, tokens: int) -> None:
        """A request on ``key`` streamed its first token: its prefill is done, so its ``tokens``
        no longer load the endpoint and it no longer waits there, though it stays in flight.

        A change listeners hear (flow control may release a request into the room it left).
        """
        old = self._endpoints.get(key)
        if old is None or old.in_flight_started >= old.in_flight:
            return
        self._endpoints[key] = old.with_load(
            old.in_flight, max(0, old.in_flight_tokens - max(0, tokens)), old.in_flight_started + 1
        )
        self._notify(in_flight=True)

    # -- objectives and rewrites ------------------------------------------------------------

    def upsert_objective(self, o: Objective) -> None:
        self._objectives[o.name] = o
        self._top_priority = self._priorities_differ = None

    def remove_objective(self, name: str) -> None:
        if self._objectives.pop(name, None) is not None:
            self._top_priority = self._priorities_differ = None

    def objective(self, name: str) -> Objective | None:
        return self._objectives.get(name)

    def objectives(self) -> list[Objective]:
        return list(self._objectives.values())

    def priorities_differ(self) -> bool:
        """Whether requests can differ in priority: some objective's priority is not the default 0
        (flow control asks at every decision, so it is kept until the objectives change)."""
        cached = self._priorities_differ
        if cached is None:
            cached = self._priorities_differ = any(o.priority != 0 for o in self._objectives.values())
        return cached

    def top_priority(self) -> int | None:
        """The highest priority of any objective (None without objectives)."""
        cached = self._top_priority
        if cached is None:
            cached = self._top_priority = (
                max((o.priority for o in self._objectives.values()), default=None),
            )
        return cached[0]

    def upsert_rewrite(self, r: ModelRewrite) -> None:
        self._rewrites[r.name] = r

    def remove_rewrite(self, name: str) -> None:
        self._rewrites.pop(name, None)

    def rewrites(self) -> list[ModelRewrite]:
        """Rewrites in insertion order (the order rules were loaded in)."""
        return list(self._rewrites.values())

    # -- listeners --------------------------------------------------------------------------

    def add_listener(self, fn: Listener, *, in_flight: bool = True) -> Callable[[], None]:
        """Call ``fn()`` synchronously after every endpoint, metrics, health or in-flight change.

        ``in_flight=False`` leaves out the in-flight counts, which change twice per request
        (:meth:`acquire`, :meth:`release`): a listener that follows membership, health or metrics
        only (a task woken through an ``asyncio.Event``, say) is then not run, or woken, for every
        request.

        Returns a function that unsubscribes ``fn``; calling it twice is harmless. A listener that
        raises is logged and does not stop the others or the change itself.
        """
        listeners = self._listeners if in_flight else self._state_listeners
        listeners.append(fn)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                listeners.remove(fn)

        return unsubscribe

    def add_departure_listener(self, fn: Callable[[str], None]) -> Callable[[], None]:
        """Call ``fn(key)`` when an endpoint leaves the pool (whoever removes it: the manifests
        re-applied, a pod deleted in the cluster), before the general listeners run. Plugins with
        per-endpoint state are told this way (``Scheduler.forget_endpoint``)."""
        self._departure_listeners.append(fn)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._departure_listeners.remove(fn)

        return unsubscribe

    def _notify(self, *, in_flight: bool = False) -> None:
        """Run the listeners of a change: for an in-flight count only those that asked for them."""
        # a copy: a listener may unsubscribe while they run
        called = (*self._listeners,) if in_flight else (*self._listeners, *self._state_listeners)
        for fn in called:
            try:
                fn()
            except Exception:
                log.exception("datastore listener %r failed", fn)
