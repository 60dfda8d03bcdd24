"""Load and LoRA scorers: pure functions of the candidates' metrics snapshots.

Each class docstring states the formula, the inputs it reads and its parameters, with the
reference EPP's plugin type name. The prefix-cache scorer lives in ``prefix.py``. Every scorer
here is dense: it computes one float per candidate in a single pass and returns them as a
``CandidateScores`` over the cycle's shared key list, so no per-candidate dict or object is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from pydantic import Field

from infergate.scheduling.sdk.framework import CycleState, Params, candidate_keys
from infergate.scheduling.sdk.scores import CandidateScores, endpoint_keys
from infergate.types import Endpoint, EndpointMetrics, InferenceRequest

__all__ = [
    "KvCacheUtilizationScorer",
    "LeastInFlightScorer",
    "LoraAffinityParams",
    "LoraAffinityScorer",
    "QueueScorer",
    "RunningRequestsScorer",
    "endpoint_load",
    "min_max_low_is_best",
]


def min_max_low_is_best(
    candidates: Sequence[Endpoint], value: Callable[[Endpoint], float], state: CycleState | None = None
) -> CandidateScores:
    """``(max - v) / (max - min)`` over the candidates; 1.0 for everyone when all are equal."""
    keys = candidate_keys(candidates, state) if state is not None else endpoint_keys(candidates)
    return _min_max(keys, [value(e) for e in candidates])


def _min_max(keys: Sequence[str], values: list[float]) -> CandidateScores:
    if not values:
        return CandidateScores(keys, [], bounded=True)
    lo, hi = min(values), max(values)
    if hi == lo:
        return CandidateScores(keys, [1.0] * len(values), bounded=True)
    span = hi - lo
    # Bounded only for finite inputs (a NaN anywhere makes the sum NaN, an infinity makes the
    # span infinite); otherwise the profile clamps as for any other scorer.
    total = sum(values)
    bounded = span == span and total == total and span not in (math.inf, -math.inf)
    return CandidateScores(keys, [(hi - v) / span for v in values], bounded=bounded)


class QueueScorer:
    """``queue-scorer``: prefer endpoints with the shortest waiting queue.

    Formula: ``(maxQ - q) / (maxQ - minQ)`` with ``q`` = ``waiting_queue_size`` and min/max over the
    candidates of this cycle; if all queues are equal every endpoint scores 1.0.
    Inputs: ``EndpointMetrics.waiting_queue_size``. Parameters: none.
    """

    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> CandidateScores:
        return _min_max(candidate_keys(candidates, state), [e.metrics.waiting_queue_size for e in candidates])


class RunningRequestsScorer:
    """``running-requests-size-scorer``: prefer endpoints running the fewest requests.

    Formula: min-max as ``queue-scorer`` on ``running_requests``: ``(maxR - r) / (maxR - minR)``,
    all equal → 1.0. Inputs: ``EndpointMetrics.running_requests``. Parameters: none.
    """

    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> CandidateScores:
        return _min_max(candidate_keys(candidates, state), [e.metrics.running_requests for e in candidates])


class LeastInFlightScorer:
    """``least-in-flight-scorer``: prefer endpoints with the fewest requests the gateway has in flight.

    Formula: min-max on ``in_flight``: ``(maxF - f) / (maxF - minF)``, all equal → 1.0.
    Inputs: ``Endpoint.in_flight``, counted by the gateway itself (acquire on send, release on
    completion), so it reacts between two metric scrapes, unlike ``queue-scorer``.
    Parameters: none. Not in the reference EPP.
    """

    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> CandidateScores:
        return _min_max(candidate_keys(candidates, state), [e.in_flight for e in candidates])


class KvCacheUtilizationScorer:
    """``kv-cache-utilization-scorer``: prefer endpoints with free KV-cache.

    Formula: ``1 - kv_cache_usage`` (usage in [0, 1]; the framework clamps anything outside).
    Inputs: ``EndpointMetrics.kv_cache_usage``. Parameters: none.
    """

    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> CandidateScores:
        keys = candidate_keys(candidates, state)
        return CandidateScores(keys, [1.0 - e.metrics.kv_cache_usage for e in candidates])


class LoraAffinityParams(Params):
    """Parameters of ``lora-affinity-scorer``.

    ``base_models``: model names that are never adapters; requests for them score 1.0 everywhere.
    The three score values default to this scorer's reference rule (see the scorer);
    ``load_aware: false`` turns the load term off and gives the fixed scores alone.
    """

    base_models: list[str] = Field(default_factory=list)
    load_aware: bool = True
    running_score: float = Field(default=1.0, ge=0.0, le=1.0)
    waiting_score: float = Field(default=0.8, ge=0.0, le=1.0)
    free_slot_score: float = Field(default=0.6, ge=0.0, le=1.0)


def endpoint_load(e: Endpoint) -> int:
    """Requests on ``e``: the gateway's own fresh in-flight count, or the scraped queue plus batch
    when that is higher (it also counts other gateways' requests)."""
    m = e.metrics
    return max(e.in_flight, m.waiting_queue_size + m.running_requests)


def _blocked(model: str, m: EndpointMetrics) -> bool:
    """``model`` waits on ``m``'s endpoint only because every adapter slot is busy with others."""
    r = m.running_adapters
    return model not in r and model in m.waiting_adapters and len(r) >= m.max_active_adapters


class LoraAffinityScorer:
    """``lora-affinity-scorer``: send adapter requests where the adapter is, unless that is busy.

    Rule, for target model ``m`` on endpoint ``e`` (first that holds), the fixed *slot score*:

    * ``runningScore`` (1.0) if ``m`` is in ``running_adapters`` (loaded on the GPU and serving);
    * ``waitingScore`` (0.8) if ``m`` is in ``waiting_adapters`` (requests for it are already
      queued there, so the adapter is being brought in and this request batches with them);
    * ``freeSlotScore`` (0.6) if ``len(running) + len(waiting) < max_active_adapters`` (a free
      slot: it can be loaded without evicting another adapter);
    * 0.0 otherwise: every slot is busy with other adapters, so the request would wait until one
      of them drains.

    With ``loadAware: false`` the slot score is the score. Those fixed scores pack every request
    for an adapter onto the endpoints that hold it, however many requests that is: a popular
    adapter overloads its one or two endpoints while the others idle.

    Load-aware (the default): ``n_e`` = the endpoint's requests (``max(in_flight, waiting +
    running)``), ``load_e = n_e / (mean n over the candidates + 1)`` (relative to the pool; the +1
    keeps an idle pool from reading one request as a large relative load), and a cost per endpoint
    that can take the request (slot score above 0):

    * holding the adapter: ``1 − slot_e`` (0 running, 0.2 waiting), or 1.0 when it only waits
      there behind ``max_active_adapters`` other running adapters (it is stuck, not coming in);
    * a free slot: ``1 − freeSlotScore`` (0.4), plus, when some endpoint already holds the
      adapter, the pool's slot use ``min(1, Σ(len(running) + len(waiting)) / Σ max_active_adapters)``:
      a second slot for one adapter is a slot another adapter may need next;
    * ``cost_e = that + load_e``; ``score_e = clamp(1 − (cost_e − min cost), 0, 1)``; endpoints
      with slot score 0 keep 0.

    So an adapter stays packed where it runs — a cold one included, since its holder is rarely far
    busier than the pool — until its endpoints carry 0.4 to 1.4 of the pool's mean load more than
    an endpoint with a free slot (more the fuller the pool's slots); then its requests open a slot
    there and a hot adapter spreads over as many endpoints as its traffic needs. Among endpoints
    that hold it the less loaded wins. An endpoint that would have to evict another adapter never
    wins over one that would not; when every endpoint would, all score 0.

    The reference EPP (v1.5) checks the free slot before the waiting list and gives it 0.8 and
    waiting 0.6; ``loadAware: false, waitingScore: 0.6, freeSlotScore: 0.8`` reproduces its
    scores, though the order of the checks stays this one.

    Requests whose target model is listed in ``baseModels``, or that no candidate reports any LoRA
    information for while the model is also not an adapter anywhere (``max_active_adapters == 0``
    on every candidate: LoRA disabled), score 1.0 on every endpoint so the scorer is neutral.
    Inputs: ``running_adapters``, ``waiting_adapters``, ``max_active_adapters``, and for the load
    ``in_flight``, ``waiting_queue_size``, ``running_requests``.
    Parameters: ``baseModels`` (list), ``loadAware``, ``runningScore``, ``freeSlotScore``,
    ``waitingScore``.
    """

    def __init__(self, params: LoraAffinityParams | None = None) -> None:
        p = params if params is not None else LoraAffinityParams()
        self._base = frozenset(p.base_models)
        self._load_aware = p.load_aware
        self._running = p.running_score
        self._free = p.free_slot_score
        self._waiting = p.waiting_score

    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> CandidateScores:
        model = request.target_model
        keys = candidate_keys(candidates, state)
        metrics = [e.metrics for e in candidates]
        if model in self._base or all(m.max_active_adapters <= 0 for m in metrics):
            return CandidateScores(keys, [1.0] * len(keys), bounded=True)
        running, waiting, free = self._running, self._waiting, self._free
        # One comprehension (no per-item method call): first rule that holds, as documented above.
        slots = [
            running
            if model in (r := m.running_adapters)
            else waiting
            if model in (w := m.waiting_adapters)
            else free
            if len(r) + len(w) < m.max_active_adapters
            else 0.0
            for m in metrics
        ]
        if not self._load_aware or len(candidates) < 2:
            return CandidateScores(keys, slots, bounded=True)
        return self._load_aware_scores(model, candidates, keys, slots)

    def _load_aware_scores(
        self, model: str, candidates: Sequence[Endpoint], keys: Sequence[str], slots: list[float]
    ) -> CandidateScores:
        """The load-aware formula of the class docstring, over the slot scores already computed."""
        metrics = [e.metrics for e in candidates]
        held = [model in m.running_adapters or model in m.waiting_adapters for m in metrics]
        open_cost = 1.0 - self._free
        if any(held):  # taking one more slot for an adapter that has one: the pool's slot use
            used = sum(len(m.running_adapters) + len(m.waiting_adapters) for m in metrics)
            open_cost += min(1.0, used / max(1, sum(m.max_active_adapters for m in metrics)))
        loads = [endpoint_load(e) for e in candidates]
        scale = sum(loads) / len(loads) + 1.0
        costs = [
            (((1.0 if _blocked(model, m) else 1.0 - s) if h else open_cost) + n / scale)
            for s, h, n, m in zip(slots, held, loads, metrics, strict=True)
        ]
        open_costs = [c for c, s in zip(costs, slots, strict=True) if s > 0.0]
        if not open_costs:
            return CandidateScores(keys, slots, bounded=True)  # all 0: every endpoint must evict
        best = min(open_costs)
        out = [max(0.0, 1.0 - (c - best)) if s > 0.0 else 0.0 for c, s in zip(costs, slots, strict=True)]
        return CandidateScores(keys, out, bounded=True)
