"""One scheduling profile: filters → weighted scorers → picker, then PostPick hooks.

The profile, not the plugins, owns the cross-cutting work: clamping every score to [0, 1],
multiplying by the configured weight, summing (not normalised by the sum of weights, as the
reference EPP), keeping the per-scorer scores for the live view, capping the targets, and timing
every plugin call into ``inference_extension_plugin_duration_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from infergate.errors import NoCapacityError
from infergate.scheduling.framework import CycleState, Filter, Picker, PostPick, Scorer, candidate_keys
from infergate.types import Endpoint, InferenceRequest, SchedulingResult, ScoredEndpoint

__all__ = ["MAX_TARGETS", "FilterSlot", "PickerSlot", "PostPickSlot", "SchedulerProfile", "ScorerSlot"]

MAX_TARGETS = 3
"""Primary plus at most two fallbacks, whatever the picker returns."""

_perf = time.perf_counter


@dataclass(frozen=True, slots=True)
class _Slot:
    name: str
    type: str
    timer: Any  # prometheus Histogram child, or None when metrics are off

    def observe(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.observe(seconds)


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
            f.observe(_perf() - t0)
            if not cands:
                raise NoCapacityError(f"no endpoint left after filter {f.name!r}")

        keys = candidate_keys(cands, state)
        totals = dict.fromkeys(keys, 0.0)
        plugin_scores: dict[str, dict[str, float]] = {}
        for s in self.scorers:
            t0 = _perf()
            raw = s.plugin.score(request, cands, state)
            s.observe(_perf() - t0)
            weight = s.weight
            clamped = dict.fromkeys(keys, 0.0)
            for key, v in raw.items():
                if key not in clamped:
                    continue  # not a candidate of this cycle
                if not 0.0 <= v <= 1.0:
                    v = _clamp(v)
                clamped[key] = v
                totals[key] += v * weight
            plugin_scores[s.name] = clamped

        scored = [ScoredEndpoint(e, totals[k]) for k, e in zip(keys, cands, strict=True)]
        t0 = _perf()
        picked = self.picker.plugin.pick(request, scored, state)
        self.picker.observe(_perf() - t0)

        targets: list[Endpoint] = []
        seen: set[str] = set()
        for e in picked:
            k = e.key
            if k in totals and k not in seen:
                seen.add(k)
                targets.append(e)
                if len(targets) == MAX_TARGETS:
                    break
        if not targets:
            raise NoCapacityError(f"picker {self.picker.name!r} returned no endpoint")
        result = SchedulingResult(
            profile=self.name, targets=tuple(targets), scores=totals, plugin_scores=plugin_scores
        )
        for h in self.post_picks:
            t0 = _perf()
            h.plugin.post_pick(request, result, state)
            h.observe(_perf() - t0)
        return result
