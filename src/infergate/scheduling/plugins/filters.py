"""Filters: drop candidates before scoring (the reference EPP's legacy decision-tree filters).

Both filters here fail open: when no candidate passes they return every candidate, so a filter
expressing a preference never turns an overloaded pool into 503s (flow control owns shedding).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from pydantic import Field

from infergate.config.picker_schemas import ConcurrencyDetectorParams
from infergate.scheduling.sdk.framework import CycleState, Params
from infergate.types import ConcurrencyMode, Endpoint, InferenceRequest, concurrency_load

__all__ = ["LoraAffinityFilter", "LoraAffinityFilterParams", "LowQueueFilter", "LowQueueFilterParams"]


class LowQueueFilterParams(Params):
    threshold: int = Field(default=128, ge=0)


class LowQueueFilter:
    """``low-queue-filter``: keep endpoints whose waiting queue is at most ``threshold``.

    Rule: keep ``e`` iff ``waiting_queue_size <= threshold``; none kept → all kept.
    Parameters: ``threshold`` (default 128, as the reference's legacy config).
    """

    def __init__(self, params: LowQueueFilterParams | None = None) -> None:
        self._threshold = (params or LowQueueFilterParams()).threshold

    def filter(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Sequence[Endpoint]:
        kept = [e for e in candidates if e.metrics.waiting_queue_size <= self._threshold]
        return kept or candidates


class LoraAffinityFilterParams(Params):
    threshold: float = Field(default=0.999, ge=0.0, le=1.0)
    base_models: list[str] = Field(default_factory=list)


class LoraAffinityFilter:
    """``lora-affinity-filter``: soft affinity to endpoints that hold the requested adapter.

    Splits candidates into *affinity* (target model in ``running_adapters`` or
    ``waiting_adapters``) and *available* (a free adapter slot:
    ``len(running) + len(waiting) < max_active_adapters``). If both are non-empty, returns
    *affinity* with probability ``threshold`` (default 0.999) and *available* otherwise, so
    adapters slowly spread to more endpoints; if one is empty the other is returned; if both are
    empty every candidate is kept. Requests for ``baseModels``, or when no candidate has LoRA
    enabled (``max_active_adapters == 0``), pass unfiltered.
    Parameters: ``threshold``, ``baseModels``.
    """

    def __init__(
        self, params: LoraAffinityFilterParams | None = None, *, rng: random.Random | None = None
    ) -> None:
        p = params or LoraAffinityFilterParams()
        self._threshold = p.threshold
        self._base = frozenset(p.base_models)
        self._rng = rng if rng is not None else random.Random()

    def filter(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Sequence[Endpoint]:
        model = request.target_model
        if model in self._base or all(e.metrics.max_active_adapters <= 0 for e in candidates):
            return candidates
        affinity: list[Endpoint] = []
        available: list[Endpoint] = []
        for e in candidates:
            m = e.metrics
            if model in m.running_adapters or model in m.waiting_adapters:
                affinity.append(e)
            elif len(m.running_adapters) + len(m.waiting_adapters) < m.max_active_adapters:
                available.append(e)
        if affinity and available:
            return affinity if self._rng.random() < self._threshold else available
        return affinity or available or candidates


class ConcurrencyFilter:
    """``concurrency-detector`` in a profile: drops endpoints whose in-flight load has reached
    ``capacity x (1 + headroom)`` (requests, estimated prompt tokens, or either in ``hybrid``);
    none left: all kept. Its role in flow control is :mod:`infergate.flowcontrol.concurrency`'s."""

    def __init__(self, params: ConcurrencyDetectorParams | None = None) -> None:
        p = params or ConcurrencyDetectorParams()
        self._mode: ConcurrencyMode = p.concurrency_mode
        self._max = (p.max_concurrency, p.max_token_concurrency)
        self._limit = 1.0 + p.headroom

    def filter(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Sequence[Endpoint]:
        kept = [e for e in candidates if concurrency_load(e, self._mode, *self._max) < self._limit]
        return kept or candidates
