"""Pickers: turn weighted totals into an ordered list of targets (primary first, then fallbacks).

All randomness comes from the ``random.Random`` injected at build time, so a seeded scheduler is
reproducible (tests, the digital twin) while production still breaks ties at random.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence
from itertools import compress, repeat
from operator import attrgetter, eq

from pydantic import Field

from infergate.scheduling.sdk.framework import CycleState, Params
from infergate.scheduling.sdk.scores import split_scored
from infergate.types import Endpoint, InferenceRequest, ScoredEndpoint

__all__ = [
    "MaxScorePicker",
    "PickerParams",
    "RandomPicker",
    "RoundRobinPicker",
    "WeightedRandomPicker",
    "top_positions",
]

_KEY = attrgetter("meta.key")

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
    take ``maxNumOfEndpoints``", computed cheaper without sorting every candidate: find the
    ``maxNumOfEndpoints`` largest totals, then shuffle only the groups of equal scores that reach
    into those places (see :func:`top_positions`).
    Parameters: ``maxNumOfEndpoints`` (default 3).
    """

    def __init__(self, params: PickerParams | None = None, *, rng: random.Random | None = None) -> None:
        self._n = (params or PickerParams()).max_num_of_endpoints
        self._rng = rng if rng is not None else random.Random()

    def pick(
        self, request: InferenceRequest, scored: Sequence[ScoredEndpoint], state: CycleState, /
    ) -> Sequence[Endpoint]:
        endpoints, scores = split_scored(scored)
        return [endpoints[i] for i in top_positions(scores, self._n, self._rng)]


def top_positions(scores: Sequence[float], k: int, rng: random.Random) -> list[int]:
    """Positions of the ``k`` best scores, best first, equal scores in random order.

    Same result and same use of ``rng`` as "stable-sort by score descending, shuffle each group
    of equal scores that reaches into the first ``k`` places, take ``k``": the ``k`` largest
    values (``heapq.nlargest``, one pass) give the distinct scores that reach the top ``k``; each
    one's positions, in candidate order, come from C-level scans; only those groups are shuffled.
    Cost: one pass plus a scan per distinct top score, instead of a sort of every candidate.
    """
    n = len(scores)
    out: list[int] = []
    if n == 0 or k <= 0:
        return out
    for value in dict.fromkeys(heapq.nlargest(k, scores)):  # distinct, descending
        count = scores.count(value)
        if count == 1:
            out.append(scores.index(value))
            continue
        group = list(compress(range(n), map(eq, scores, repeat(value))))
        if len(group) > 1:
            rng.shuffle(group)
        out.extend(group[: k - len(out)])
        if len(out) >= k:
            break
    return out


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
        endpoints, _ = split_scored(scored)
        return self._rng.sample(list(endpoints), min(self._n, len(endpoints)))


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
        endpoints, _ = split_scored(scored)
        if not endpoints:
            return []
        ordered = sorted(endpoints, key=_KEY)
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
        endpoints, scores = split_scored(scored)
        for e, score in zip(endpoints, scores, strict=True):
            if score > 0.0:
                u = rng.random() or 1e-300
                keyed.append((math.log(u) / score, e))  # log(u^(1/s)), same order
            else:
                zero.append(e)
        keyed.sort(key=lambda t: t[0], reverse=True)
        rng.shuffle(zero)
        out = [e for _, e in keyed] + zero
        return out[: self._n]
