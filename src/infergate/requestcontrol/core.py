"""The synchronous request-control core: from a raw request to a scheduled endpoint, no I/O.

Every way infergate routes a request goes through this one class: the built-in proxy and the
ext_proc picker (both via the async :class:`~infergate.requestcontrol.director.Director`, which adds
authentication, flow-control waiting, retries and response accounting around it) and the digital
twin (``infergate.bench.twin``), which calls it directly on a virtual clock. Whatever decides where a
request goes — model rewrites, the served-model check, objective and priority resolution, per-objective
limits, the config's admitters (``probabilistic-admitter``), the candidate set (subset hint,
endpoints serving the target model, flow control's "room") and the scheduler — lives here once, so
the twin measures exactly what production runs.

The core never awaits, never reads a clock it was not given and imports no HTTP or gRPC library.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from infergate.errors import BadRequestError, ModelNotFoundError, NoCapacityError, RateLimitedError
from infergate.requestcontrol import headers as H
from infergate.requestcontrol.access import FairnessIds, Principal, RequestLimits, check_scope
from infergate.requestcontrol.parsing import ParsedBody, parse_body, rewrite_model
from infergate.types import (
    ApiKind,
    Endpoint,
    InferenceRequest,
    ModelRewrite,
    Objective,
    SchedulingResult,
    typed_frozen,
)

if TYPE_CHECKING:
    from infergate.telemetry import GatewayMetrics

__all__ = [
    "AdmissionHook",
    "DatastoreView",
    "RequestCore",
    "Resolved",
    "RoomFilter",
    "SchedulerLike",
    "no_capacity",
    "parse_subset",
]


class DatastoreView(Protocol):
    """The part of the Datastore request control reads and the in-flight accounting it writes."""

    def candidates(self) -> list[Endpoint]: ...
    def endpoints(self) -> list[Endpoint]: ...
    def endpoint(self, key: str) -> Endpoint | None: ...
    def served_models(self) -> frozenset[str]: ...
    def models(self, key: str) -> frozenset[str]: ...
    def max_model_len(self) -> int | None: ...
    def objective(self, name: str) -> Objective | None: ...
    def objectives(self) -> list[Objective]: ...
    def rewrites(self) -> list[ModelRewrite]: ...
    def acquire(self, key: str, tokens: int = 0) -> None: ...
    def release(self, key: str, tokens: int = 0, *, started: bool = False) -> None: ...
    def start(self, key: str, tokens: int) -> None: ...
    def with_peer_in_flight(self, endpoints: Sequence[Endpoint]) -> list[Endpoint]: ...


class SchedulerLike(Protocol):
    def schedule(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> SchedulingResult: ...
    def observe_ttft(self, request_id: str, ttft_seconds: float | None) -> None: ...
    def observe_tpot(self, request_id: str, tpot_seconds: float | None) -> None: ...
    def observe_answer(self, request_id: str, seconds: float | None, output_tokens: int | None) -> None: ...


AdmissionHook = Callable[[InferenceRequest, Sequence[Endpoint], Container[str]], "str | None"]
"""The scheduler's admitters (``Scheduler.admit``): the request, the pool's healthy endpoints and the
keys of those with stale or missing metrics; None admits, a string is the reason for refusing."""

RoomFilter = Callable[[Sequence[Endpoint]], list[Endpoint]]
"""Flow control's narrowing of candidates to those with room (``FlowCore.with_room`` bound to now)."""


@typed_frozen
class Resolved:
    """A request the core accepted: what to schedule and the body to send upstream."""

    request: InferenceRequest
    parsed: ParsedBody
    upstream_body: bytes


def parse_subset(value: str | None) -> frozenset[str] | None:
    """The IPs of a subset hint ``ip:port,ip:port`` (``[v6]:port`` too); None when absent.

    The reference (``requestcontrol/candidates.go``) matches on IP only and ignores the port, so a
    pod listed with any of its target ports stays eligible. An empty or blank value is an empty
    subset (nothing eligible → 503), not "no hint", as the protocol says.
    """
    if value is None:
        return None
    ips: set[str] = set()
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):
            ips.add(item[1 : item.find("]")] if "]" in item else item[1:])
            continue
        host, sep, port = item.rpartition(":")
        ips.add(host if sep and port.isdigit() and host.count(":") == 0 else item)
    return frozenset(ips)


def no_capacity(subset: frozenset[str] | None) -> NoCapacityError:
    """The 503 for "nothing to schedule on", naming the subset hint when one narrowed the pool.

    Carries the reference's ``x-llm-d-request-dropped-reason: rejected-no-endpoints``."""
    reason = {"x-llm-d-request-dropped-reason": "rejected-no-endpoints"}
    if subset is not None:
        return NoCapacityError(
            "no ready endpoint in the pool matches the destination endpoint subset", headers=reason
        )
    return NoCapacityError("no ready endpoint in the pool can serve the request", headers=reason)


def _pick_weighted(rng: random.Random, rewrite: ModelRewrite, model: str) -> str | None:
    """First matching rule's target by weight (uniform when all weights are zero)."""
    for rule in rewrite.rules:
        if rule.match_models and model not in rule.match_models:
            continue
        if not rule.targets:
            continue
        total = sum(max(t.weight, 0) for t in rule.targets)
        if total <= 0:
            return rng.choice(rule.targets).model
        x = rng.randrange(total)
        for t in rule.targets:
            x -= max(t.weight, 0)
            if x < 0:
                return t.model
    return None


class RequestCore:
    """Resolves and schedules requests for one pool; owned by one event loop (or the twin's loop).

    Args:
        datastore: the pool's endpoints, objectives and rewrites.
        scheduler: the configured scheduler; its ``admit`` (when it has ``admitters``) is run by
            :meth:`check_admission`, drawing from the scheduler's own ``random.Random``.
        rng: randomness for weighted model rewrites.
        metrics: where rewrite decisions are counted; None counts nothing.
        limits: per-objective ``max_tokens`` ceilings and the message-count limit.
        check_models: answer 404 for a model no server, objective or rewrite knows.
    """

    def __init__(
        self,
        *,
        datastore: DatastoreView,
        scheduler: SchedulerLike,
        rng: random.Random | None = None,
        metrics: GatewayMetrics | None = None,
        limits: RequestLimits | None = None,
        check_models: bool = True,
    ) -> None:
        self._ds = datastore
        self._scheduler = scheduler
        self._rng = rng or random.Random()
        self._metrics = metrics
        self.limits = limits or RequestLimits()
        self._check_models = check_models
        self._fairness = FairnessIds()
        admit = getattr(scheduler, "admit", None)
        has_admitters = bool(getattr(scheduler, "admitters", ()))
        self._admission: AdmissionHook | None = admit if callable(admit) and has_admitters else None
        self.passthrough: tuple[str, ...] = ()
        """Path suffixes the ``passthrough-parser`` forwards unread (set by the app from the config)."""

    # ---------------------------------------------------------------- resolution
    def known_models(self) -> frozenset[str]:
        """Models a request may name: served, objectives, rewrite sources/targets, adapters seen."""
        names: set[str] = set(self._ds.served_models())
        names.update(o.name for o in self._ds.objectives())
        for rw in self._ds.rewrites():
            for rule in rw.rules:
                names.update(rule.match_models)
                names.update(t.model for t in rule.targets)
        for ep in self._ds.candidates():
            names.update(ep.metrics.running_adapters)
            names.update(ep.metrics.waiting_adapters)
        return frozenset(names)

    def rewrite(self, model: str, forced: str | None) -> str:
        """The target model: the forced name (header) or ``model``, then the first matching rewrite."""
        target = forced or model
        if not target:  # a passthrough request names no model: nothing to rewrite
            return target
        for rw in self._ds.rewrites():
            chosen = _pick_weighted(self._rng, rw, target)
            if chosen is not None:
                if self._metrics is not None:
                    self._metrics.model_rewrite_decisions_total.labels(
                        model_rewrite_name=rw.name, model_name=model, target_model=chosen
                    ).inc()
                return chosen
        return target

    def objective_for(self, header: str | None, model: str, target: str) -> Objective | None:
        """The objective named by the header, else the one named like the model, else the target."""
        if header:
            found = self._ds.objective(header)
            if found is not None:
                return found
        return self._ds.objective(model) or (self._ds.objective(target) if target != model else None)

    def resolve(
        self,
        *,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        request_id: str,
        now: float,
        principal: Principal | None = None,
    ) -> Resolved:
        """Parse, rewrite, check the model, resolve the objective, apply its limits and run the
        config's admitters.

        ``headers`` must be lower-cased (or case-insensitive). Raises the ``RequestError`` the client
        is to receive: 400 (body), 403 (the key's scope), 404 (unknown model), 429 (an admitter
        refused). The director runs the steps itself to label error metrics with the model names
        and priority known when a step failed.
        """
        parsed = self.parse(path, body)
        target = self.rewrite(parsed.model, H.model_name_rewrite_of(headers))
        resolved = self.admit(
            parsed, target, headers=headers, body=body, request_id=request_id, now=now, principal=principal
        )
        self.check_admission(resolved.request)
        return resolved

    def parse(self, path: str, body: bytes) -> ParsedBody:
        """The body's routing fields (400 when malformed, over the message limit or, for token-id
        prompts, over the context length: refused before the costly part of parsing)."""
        context = self.limits.max_model_len or self._ds.max_model_len()
        return parse_body(
            path,
            body,
            max_messages=self.limits.max_messages,
            max_prompt_ids=context,
            passthrough=self.passthrough,
        )

    def admit(
        self,
        parsed: ParsedBody,
        target: str,
        *,
        headers: Mapping[str, str],
        body: bytes,
        request_id: str,
        now: float,
        principal: Principal | None = None,
    ) -> Resolved:
        """Check the model is known, resolve the objective, check the key's scope and the limits."""
        model = parsed.model
        passthrough = parsed.api is ApiKind.PASSTHROUGH
        if passthrough:  # the body is not read: no model to check or rewrite, forwarded as sent
            target = model
        # Only judge once some server has told us what it serves (a pool still starting
        # answers 503, not 404).
        served = self._ds.served_models()
        if self._check_models and not passthrough and served and model not in served and target not in served:
            known = self.known_models()
            if model not in known and target not in known:
                raise ModelNotFoundError(f"The model `{model}` does not exist.", param="model")
        objective = self.objective_for(H.objective_of(headers), model, target)
        # The name access and limits are judged by: the objective, else the requested model.
        scope = objective.name if objective is not None else model
        if principal is not None:  # the key must cover the objective and the final target model
            check_scope(
                principal,
                scope=scope,
                target=target,
                requested_target=H.model_name_rewrite_of(headers) or model,
                objective_named=lambda name: self._ds.objective(name) is not None,
            )
        self.limits.check_body(parsed, scope, context=self._ds.max_model_len())
        plugin_headers = H.scheduling_headers(headers)  # a plain lower-case dict: cheap lookups
        try:
            ttft_slo, tpot_slo = H.slo_of(plugin_headers)
        except H.HeaderValueError as exc:
            raise BadRequestError(str(exc), param=exc.header) from None
        request = InferenceRequest(
            request_id=request_id,
            model=model,
            target_model=target,
            api=parsed.api,
            objective=objective.name if objective else None,
            priority=objective.priority if objective else 0,
            fairness_id=self._fairness(H.fairness_id_of(headers)),
            prompt=parsed.prompt,
            stream=parsed.stream,
            max_tokens=parsed.max_tokens,
            body_size=len(body),
            arrived_at=now,
            ttft_slo=ttft_slo,
            tpot_slo=tpot_slo,
            headers=plugin_headers,
            body=parsed.data,
        )
        upstream = body if target == model else rewrite_model(parsed, target)
        return Resolved(request=request, parsed=parsed, upstream_body=upstream)

    def check_admission(self, request: InferenceRequest, subset: frozenset[str] | None = None) -> None:
        """Run the config's admitters (llm-d-router's Admitter extension point) before the request
        waits in flow control or is scheduled: 429 when one refuses.

        They see the pool's healthy endpoints (those the subset hint lists, with one), each with its
        last metrics; one whose metrics are stale or were never scraped is passed as such, and
        ``probabilistic-admitter`` counts it fully saturated. The refusal carries
        ``x-llm-d-request-dropped-reason: rejected-saturated``, as flow control's shedding does.
        """
        hook = self._admission
        if hook is None:
            return
        fresh = {e.key for e in self._ds.candidates()}
        pool = [e for e in self._ds.endpoints() if e.healthy and (subset is None or e.meta.address in subset)]
        reason = hook(request, pool, {e.key for e in pool if e.key not in fresh})
        if reason is not None:
            raise RateLimitedError(reason, headers={"x-llm-d-request-dropped-reason": "rejected-saturated"})

    def observe_ttft(self, request_id: str, ttft_seconds: float | None) -> None:
        """The data plane saw the request's first byte after ``ttft_seconds`` (None: it failed first)."""
        self._scheduler.observe_ttft(request_id, ttft_seconds)

    def observe_tpot(self, request_id: str, tpot_seconds: float | None) -> None:
        """The request's tokens streamed ``tpot_seconds`` apart after the first, so far or in all
        (once per request; None: nothing to learn)."""
        self._scheduler.observe_tpot(request_id, tpot_seconds)

    def observe_answer(self, request_id: str, seconds: float | None, output_tokens: int | None) -> None:
        """The request's answer came whole (not streamed) ``seconds`` after it arrived, with
        ``output_tokens`` tokens; instead of the two above (None: nothing to learn)."""
        self._scheduler.observe_answer(request_id, seconds, output_tokens)

    # ---------------------------------------------------------------- scheduling
    def eligible(self, subset: frozenset[str] | None = None, exclude: Sequence[str] = ()) -> list[Endpoint]:
        """Ready endpoints not excluded and, with a subset hint, whose IP the hint lists."""
        return [
            c
            for c in self._ds.candidates()
            if c.meta.key not in exclude and (subset is None or c.meta.address in subset)
        ]

    def schedule(
        self,
        request: InferenceRequest,
        *,
        exclude: Sequence[str] = (),
        subset: frozenset[str] | None = None,
        room: RoomFilter | None = None,
    ) -> SchedulingResult:
        """Pick endpoints for ``request``: eligible, serving its target model, with room, then scheduled.

        Endpoints that list the target model in ``/v1/models`` (e.g. hold the LoRA adapter) are the
        only ones that can answer it; when none lists it (not polled yet) all may try. With ``room``
        (flow control queueing), only endpoints that have room are scheduled on unless none has:
        the gateway's priority order, not a full replica's own queue, decides who waits. The full
        ones stay last-resort fallbacks, since a retry there beats no retry at all.
        """
        candidates = self.eligible(subset, exclude)
        if not candidates:
            raise no_capacity(subset)
        target = request.target_model
        models = self._ds.models
        serving = [c for c in candidates if target in models(c.meta.key)] or candidates
        held_back: list[Endpoint] = []
        if room is not None:
            roomy = room(serving)
            if len(roomy) < len(serving):
                keys = {e.key for e in roomy}
                held_back = [e for e in serving if e.key not in keys]
                serving = roomy
        # the scheduler counts every gateway worker's in-flight requests; flow control's room
        # filter above, this process's own (see Datastore.set_peer_in_flight)
        try:
            result = self._scheduler.schedule(request, self._ds.with_peer_in_flight(serving))
        except NoCapacityError:
            result = None
        if result is None or not result.targets:
            # The profiles' filters (P/D roles, label selectors) kept none of these candidates.
            # Live endpoints left out only for being full or for late metrics (a busy server
            # answers its scrape late: under a burst, a P/D pool's decode servers, while idle
            # prefill servers stay fresh) still serve: the request waits in their queues, as on
            # an aggregated pool, rather than failing with 503.
            wider = self._live(subset, exclude, target, {e.key for e in serving})
            if not wider:
                raise NoCapacityError("failed to find a target endpoint for the request")
            result = self._scheduler.schedule(request, self._ds.with_peer_in_flight(serving + wider))
            if not result.targets:
                raise NoCapacityError("failed to find a target endpoint for the request")
            return result
        if held_back:
            result = replace(result, targets=result.targets + tuple(held_back))
        return result

    def _live(
        self, subset: frozenset[str] | None, exclude: Sequence[str], target: str, taken: set[str]
    ) -> list[Endpoint]:
        """Healthy endpoints outside ``taken`` that ``schedule`` may fall back on: in the subset
        hint, not excluded, and serving ``target`` when any live one lists it."""
        live = [
            e
            for e in self._ds.endpoints()
            if e.healthy and e.key not in exclude and (subset is None or e.meta.address in subset)
        ]
        models = self._ds.models
        live = [e for e in live if target in models(e.key)] or live
        return [e for e in live if e.key not in taken]
