"""One scheduling profile: filters → weighted scorers → picker, then PostPick hooks.

The profile, not the plugins, owns the cross-cutting work: clamping every score to [0, 1],
multiplying by the configured weight, summing (not normalised by the sum of weights, as the
reference EPP), keeping the per-scorer scores for the live view, capping the targets, and timing
every plugin call into ``inference_extension_plugin_duration_seconds``.

Cost: a cycle is a handful of passes over position-aligned float tuples (one per scorer, one to
combine them, one for the picker); no dict or object is built per candidate. The per-key dicts
that the live view shows are built from those tuples only when it reads them (``scores.py``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from infergate.errors import NoCapacityError
from infergate.scheduling.sdk.framework import CycleState, Filter, Picker, PostPick, Scorer, candidate_keys
from infergate.scheduling.sdk.scores import CandidateScores, ScoredCandidates
from infergate.types import Endpoint, InferenceRequest, SchedulingResult

__all__ = ["MAX_TARGETS", "FilterSlot", "PickerSlot", "PostPickSlot", "SchedulerProfile", "ScorerSlot"]

MAX_TARGETS = 3
"""Primary plus at most two fallbacks, whatever the picker returns."""

_perf = time.perf_counter


@dataclass(frozen=True, slots=True)
class _Slot:
    name: str
    type: str
    timer: Any  # prometheus Histogram child, or None when metrics are off (observed inline in run)


@dataclass(frozen=True, slots=True)
class FilterSlot(_Slot):
    plugin: Filter


@dataclass(frozen=True, slots=True)
class ScorerSlot(_Slot):
    plugin: Scorer
    weight: float


@dataclass(frozen=True, slots=True)
class PickerSlot(_Slot):
    plugin: Picker


@dataclass(frozen=True, slots=True)
class PostPickSlot(_Slot):
    plugin: PostPick


def _clamp(v: float) -> float:
    if v > 1.0:
        return 1.0
    if v >= 0.0:
        return v
    return 0.0  # negatives and NaN


_FEW = 4
"""Up to this many sparse entries, a C scan of the key list per entry beats building a key → index dict."""


def _column(raw: Mapping[str, float], keys: tuple[str, ...]) -> tuple[float, ...]:
    """One scorer's clamped scores as a tuple aligned with ``keys`` (missing or foreign keys: 0.0).

    Fast path: a ``CandidateScores`` over this cycle's key tuple is used as is (after a
    min/max/sum range check unless it is ``bounded``). Any other mapping is treated as sparse:
    only its own entries are looked up, so the prefix scorer's few matches cost a few lookups.
    Tuples, not lists: kept results (the decision log) then hold nothing the cyclic GC tracks.
    """
    if isinstance(raw, CandidateScores) and raw.key_seq is keys:
        values = raw.value_seq
        if raw.bounded or not values:
            return tuple(values)
        total = sum(values)
        if min(values) >= 0.0 and max(values) <= 1.0 and total == total:  # a NaN makes the sum NaN
            return tuple(values)
        return tuple([v if 0.0 <= v <= 1.0 else _clamp(v) for v in values])
    n = len(keys)
    column = [0.0] * n
    if not raw:
        return tuple(column)
    items = raw.items()
    if len(items) <= _FEW:
        for key, v in items:
            try:
                i = keys.index(key)
            except ValueError:
                continue  # not a candidate of this cycle
            column[i] = v if 0.0 <= v <= 1.0 else _clamp(v)
        return tuple(column)
    position = dict(zip(keys, range(n), strict=True))
    for key, v in items:
        i = position.get(key, -1)
        if i >= 0:
            column[i] = v if 0.0 <= v <= 1.0 else _clamp(v)
    return tuple(column)


def _weighted_sum(columns: list[tuple[float, ...]], weights: list[float], n: int) -> tuple[float, ...]:
    """``sum_j w_j × columns[j][i]`` for every candidate ``i``, added in scorer order.

    The additions happen in the same order as a running total per candidate starting at 0.0,
    so the floats are bit-identical to that loop (scores are clamped and weights finite and
    >= 0, so adding a missing score's 0.0 changes nothing); common arities run as one
    comprehension.
    """
    if len(columns) == 1:
        (a,), (wa,) = columns, weights
        return tuple([0.0 + x * wa for x in a])
    if len(columns) == 2:
        (a, b), (wa, wb) = columns, weights
        return tuple([x * wa + y * wb for x, y in zip(a, b, strict=True)])
    if len(columns) == 3:
        (a, b, c), (wa, wb, wc) = columns, weights
        return tuple([x * wa + y * wb + z * wc for x, y, z in zip(a, b, c, strict=True)])
    if len(columns) == 4:
        (a, b, c, d), (wa, wb, wc, wd) = columns, weights
        return tuple([x * wa + y * wb + z * wc + u * wd for x, y, z, u in zip(a, b, c, d, strict=True)])
    totals = [0.0] * n
    for column, w in zip(columns, weights, strict=True):
        totals = [t + x * w for t, x in zip(totals, column, strict=True)]
    return tuple(totals)


class SchedulerProfile:
    """A named, ordered set of plugins run for every request."""

    def __init__(
        self,
        name: str,
        *,
        filters: Sequence[FilterSlot] = (),
        scorers: Sequence[ScorerSlot] = (),
        picker: PickerSlot,
        post_picks: Sequence[PostPickSlot] = (),
    ) -> None:
        self.name = name
        self.filters = tuple(filters)
        self.scorers = tuple(scorers)
        self.picker = picker
        self.post_picks = tuple(post_picks)

    def run(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState
    ) -> SchedulingResult:
        """Filter, score and pick; raises ``NoCapacityError`` if nothing is left to pick."""
        cands: Sequence[Endpoint] = candidates
        for f in self.filters:
            t0 = _perf()
            cands = f.plugin.filter(request, cands, state)
            if f.timer is not None:
                f.timer.observe(_perf() - t0)
            if not cands:
                raise NoCapacityError(f"no endpoint left after filter {f.name!r}")

        keys = candidate_keys(cands, state)
        columns: list[tuple[float, ...]] = []
        weights: list[float] = []
        plugin_scores: dict[str, CandidateScores] = {}
        for s in self.scorers:
            t0 = _perf()
            raw = s.plugin.score(request, cands, state)
            if s.timer is not None:
                s.timer.observe(_perf() - t0)
            column = _column(raw, keys)
            columns.append(column)
            weights.append(s.weight)
            plugin_scores[s.name] = CandidateScores(keys, column, bounded=True)
        totals = _weighted_sum(columns, weights, len(keys))

        scored = ScoredCandidates(cands, totals)
        picker = self.picker
        t0 = _perf()
        picked = picker.plugin.pick(request, scored, state)
        if picker.timer is not None:
            picker.timer.observe(_perf() - t0)

        targets: list[Endpoint] = []
        seen: set[str] = set()
        for e in picked:
            k = e.key
            if k not in seen and k in keys:  # a C scan; the picked key is usually the same object
                seen.add(k)
                targets.append(e)
                if len(targets) == MAX_TARGETS:
                    break
        if not targets:
            raise NoCapacityError(f"picker {self.picker.name!r} returned no endpoint")
        result = SchedulingResult(
            profile=self.name,
            targets=tuple(targets),
            scores=CandidateScores(keys, totals, bounded=True),
            plugin_scores=plugin_scores,
        )
        for h in self.post_picks:
            t0 = _perf()
            h.plugin.post_pick(request, result, state)
            if h.timer is not None:
                h.timer.observe(_perf() - t0)
        return result
