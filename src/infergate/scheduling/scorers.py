"""Load and LoRA scorers: pure functions of the candidates' metrics snapshots.

Each class docstring states the formula, the inputs it reads and its parameters, with the
reference EPP's plugin type name. The prefix-cache scorer lives in ``prefix.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from pydantic import Field

from infergate.scheduling.framework import CycleState, Params, candidate_keys
from infergate.types import Endpoint, InferenceRequest

__all__ = [
    "KvCacheUtilizationScorer",
    "LeastInFlightScorer",
    "LoraAffinityParams",
    "LoraAffinityScorer",
    "QueueScorer",
    "RunningRequestsScorer",
    "min_max_low_is_best",
]


def min_max_low_is_best(
    candidates: Sequence[Endpoint], value: Callable[[Endpoint], float], state: CycleState | None = None
) -> dict[str, float]:
    """``(max - v) / (max - min)`` over the candidates; 1.0 for everyone when all are equal."""
    if not candidates:
        return {}
    keys = candidate_keys(candidates, state) if state is not None else [e.key for e in candidates]
    values = [value(e) for e in candidates]
    lo, hi = min(values), max(values)
    if hi == lo:
        return dict.fromkeys(keys, 1.0)
    span = hi - lo
    return {k: (hi - v) / span for k, v in zip(keys, values, strict=True)}


class QueueScorer:
    """``queue-scorer``: prefer endpoints with the shortest waiting queue.

    Formula: ``(maxQ - q) / (maxQ - minQ)`` with ``q`` = ``waiting_queue_size`` and min/max over the
    candidates of this cycle; if all queues are equal every endpoint scores 1.0.
    Inputs: ``EndpointMetrics.waiting_queue_size``. Parameters: none.
    """

    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Mapping[str, float]:
        return min_max_low_is_best(candidates, lambda e: e.metrics.waiting_queue_size, state)


class RunningRequestsScorer:
    """``running-requests-size-scorer``: prefer endpoints running the fewest requests.

    Formula: min-max as ``queue-scorer`` on ``running_requests``: ``(maxR - r) / (maxR - minR)``,
    all equal → 1.0. Inputs: ``EndpointMetrics.running_requests``. Parameters: none.
    """

    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Mapping[str, float]:
        return min_max_low_is_best(candidates, lambda e: e.metrics.running_requests, state)


class LeastInFlightScorer:
    """``least-in-flight-scorer``: prefer endpoints with the fewest requests the gateway has in flight.

    Formula: min-max on ``in_flight``: ``(maxF - f) / (maxF - minF)``, all equal → 1.0.
    Inputs: ``Endpoint.in_flight``, counted by the gateway itself (acquire on send, release on
    completion), so it reacts between two metric scrapes, unlike ``queue-scorer``.
    Parameters: none. Not in the reference EPP.
    """

    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Mapping[str, float]:
        return min_max_low_is_best(candidates, lambda e: e.in_flight, state)


class KvCacheUtilizationScorer:
    """``kv-cache-utilization-scorer``: prefer endpoints with free KV-cache.

    Formula: ``1 - kv_cache_usage`` (usage in [0, 1]; the framework clamps anything outside).
    Inputs: ``EndpointMetrics.kv_cache_usage``. Parameters: none.
    """

    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Mapping[str, float]:
        keys = candidate_keys(candidates, state)
        return {k: 1.0 - e.metrics.kv_cache_usage for k, e in zip(keys, candidates, strict=True)}


class LoraAffinityParams(Params):
    """Parameters of ``lora-affinity-scorer``.

    ``base_models``: model names that are never adapters; requests for them score 1.0 everywhere.
    The score values default to the reference EPP's.
    """

    base_models: list[str] = Field(default_factory=list)
    running_score: float = Field(default=1.0, ge=0.0, le=1.0)
    waiting_score: float = Field(default=0.8, ge=0.0, le=1.0)
    free_slot_score: float = Field(default=0.6, ge=0.0, le=1.0)


class LoraAffinityScorer:
    """``lora-affinity-scorer``: prefer endpoints that already hold the requested LoRA adapter.

    Formula, for target model ``m`` on endpoint ``e``, first rule that holds:

    * 1.0 if ``m`` is in ``running_adapters`` (loaded on the GPU and serving);
    * 0.8 if ``m`` is in ``waiting_adapters`` (requests for it are already queued there, so the
      adapter is being brought in and this request batches with them);
    * 0.6 if ``len(running) + len(waiting) < max_active_adapters`` (a free slot: it can be loaded
      without evicting another adapter);
    * 0.0 otherwise.

    The reference EPP (v1.5) checks the free slot before the waiting list and gives it 0.8 and
    waiting 0.6; ``waitingScore: 0.6, freeSlotScore: 0.8`` reproduces its scores, though the
    order of the checks stays this one.

    Requests whose target model is listed in ``baseModels``, or that no candidate reports any LoRA
    information for while the model is also not an adapter anywhere (``max_active_adapters == 0``
    on every candidate: LoRA disabled), score 1.0 on every endpoint so the scorer is neutral.
    Inputs: ``running_adapters``, ``waiting_adapters``, ``max_active_adapters``.
    Parameters: ``baseModels`` (list), ``runningScore``, ``freeSlotScore``, ``waitingScore``.
    """

    def __init__(self, params: LoraAffinityParams | None = None) -> None:
        p = params if params is not None else LoraAffinityParams()
        self._base = frozenset(p.base_models)
        self._running = p.running_score
        self._free = p.free_slot_score
        self._waiting = p.waiting_score

    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Mapping[str, float]:
        model = request.target_model
        keys = candidate_keys(candidates, state)
        if model in self._base or all(e.metrics.max_active_adapters <= 0 for e in candidates):
            return dict.fromkeys(keys, 1.0)
        out: dict[str, float] = {}
        for k, e in zip(keys, candidates, strict=True):
            m = e.metrics
            if model in m.running_adapters:
                out[k] = self._running
            elif model in m.waiting_adapters:
                out[k] = self._waiting
            elif len(m.running_adapters) + len(m.waiting_adapters) < m.max_active_adapters:
                out[k] = self._free
        return out
