"""Pickers: turn weighted totals into an ordered list of targets (primary first, then fallbacks).

All randomness comes from the ``random.Random`` injected at build time, so a seeded scheduler is
reproducible (tests, the digital twin) while production still breaks ties at random.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from pydantic import Field

from infergate.scheduling.framework import CycleState, Params
from infergate.types import Endpoint, InferenceRequest, ScoredEndpoint

__all__ = [
    "MaxScorePicker",
    "PickerParams",
    "RandomPicker",
    "RoundRobinPicker",
    "WeightedRandomPicker",
]

DEFAULT_MAX_ENDPOINTS = 3
"""Primary plus two fallbacks: enough for one retry before the first response byte, and a spare."""


class PickerParams(Params):
    """``maxNumOfEndpoints``: how many targets to return (primary + fallbacks); default 3.

    The reference EPP defaults to 1; infergate returns fallbacks so the data plane can retry on
    another endpoint when the primary fails before the first response byte.
    """

    max_num_of_endpoints: int = Field(default=DEFAULT_MAX_ENDPOINTS, ge=1)


class MaxScorePicker:
    """``max-score-picker``: highest weighted total first; ties broken at random.

    Algorithm: the result equals the reference's "shuffle, then stable-sort by score descending,
    take ``maxNumOfEndpoints``", computed cheaper: sort by score, then shuffle only the groups of
    equal scores that reach into the first ``maxNumOfEndpoints`` places.
    Parameters: ``maxNumOfEndpoints`` (default 3).
    """

    def __init__(self, params: PickerParams | None = None, *, rng: random.Random | None = None) -> None:
        self._n = (params or PickerParams()).max_num_of_endpoints
        self._rng = rng if rng is not None else random.Random()

    def pick(
        self, request: InferenceRequest, scored: Sequence[ScoredEndpoint], state: CycleState, /
    ) -> Sequence[Endpoint]:
        items = sorted(scored, key=_score, reverse=True)
        out: list[Endpoint] = []
        i, n = 0, len(items)
        while i < n and len(out) < self._n:
            j = i + 1
            top = items[i].score
            while j < n and items[j].score == top:
                j += 1
            group = items[i:j]
            if len(group) > 1:
                self._rng.shuffle(group)
            out.extend(s.endpoint for s in group[: self._n - len(out)])
            i = j
        return out


def _score(s: ScoredEndpoint) -> float:
    return s.score


class RandomPicker:
    """``random-picker``: uniform random order, scores ignored. A baseline for benchmarks.

    Parameters: ``maxNumOfEndpoints`` (default 3).
    """

    def __init__(self, params: PickerParams | None = None, *, rng: random.Random | None = None) -> None:
        self._n = (params or PickerParams()).max_num_of_endpoints
        self._rng = rng if rng is not None else random.Random()

    def pick(
        self, request: InferenceRequest, scored: Sequence[ScoredEndpoint], state: CycleState, /
    ) -> Sequence[Endpoint]:
        k = min(self._n, len(scored))
        return [s.endpoint for s in self._rng.sample(list(scored), k)]


class RoundRobinPicker:
    """``round-robin-picker``: endpoints in turn, scores ignored. A baseline for benchmarks.

    The candidates are ordered by key and the i-th call starts at position ``i mod n``; fallbacks
    are the next endpoints in that order. Parameters: ``maxNumOfEndpoints`` (default 3).
    """

    def __init__(self, params: PickerParams | None = None) -> None:
        self._n = (params or PickerParams()).max_num_of_endpoints
        self._next = 0

    def pick(
        self, request: InferenceRequest, scored: Sequence[ScoredEndpoint], state: CycleState, /
    ) -> Sequence[Endpoint]:
        if not scored:
            return []
        ordered = sorted((s.endpoint for s in scored), key=lambda e: e.key)
        n = len(ordered)
        start = self._next % n
        self._next = start + 1
        return [ordered[(start + i) % n] for i in range(min(self._n, n))]


class WeightedRandomPicker:
    """``weighted-random-picker``: random choice in proportion to the weighted total score.

    Algorithm (A-Res, as the reference): each candidate with score ``s > 0`` draws the key
    ``u^(1/s)`` with ``u`` uniform in (0, 1); targets are ordered by key, descending. Candidates
    scoring 0 follow in random order (so all-zero degrades to random). Parameters:
    ``maxNumOfEndpoints`` (default 3).
    """

    def __init__(self, params: PickerParams | None = None, *, rng: random.Random | None = None) -> None:
        self._n = (params or PickerParams()).max_num_of_endpoints
        self._rng = rng if rng is not None else random.Random()

    def pick(
        self, request: InferenceRequest, scored: Sequence[ScoredEndpoint], state: CycleState, /
    ) -> Sequence[Endpoint]:
        rng = self._rng
        keyed: list[tuple[float, Endpoint]] = []
        zero: list[Endpoint] = []
        for s in scored:
            if s.score > 0.0:
                u = rng.random() or 1e-300
                keyed.append((math.log(u) / s.score, s.endpoint))  # log(u^(1/s)), same order
            else:
                zero.append(s.endpoint)
        keyed.sort(key=lambda t: t[0], reverse=True)
        rng.shuffle(zero)
        out = [e for _, e in keyed] + zero
        return out[: self._n]
