"""A bounded in-memory log of recent scheduling decisions, read by the live view.

The scheduler calls :meth:`DecisionLog.record` once per successful cycle, on the hot path, so
recording only appends a tuple of references (the request and the immutable result) to a
``deque(maxlen=capacity)``: no formatting, no copying, O(1), and the oldest entry falls out by
itself. Turning entries into JSON-ready dicts happens only in :meth:`DecisionLog.recent`, when
somebody actually looks (the live view polls it twice a second at most).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from infergate.types import InferenceRequest, SchedulingResult

__all__ = ["DecisionLog"]


class DecisionLog:
    """Ring buffer of the last ``capacity`` scheduling decisions.

    Args:
        capacity: how many decisions to keep; older ones are dropped as new ones arrive.
    """

    def __init__(self, capacity: int = 200) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be > 0")
        self._entries: deque[tuple[InferenceRequest, SchedulingResult, float]] = deque(maxlen=capacity)
        self._total = 0

    @property
    def capacity(self) -> int:
        maxlen = self._entries.maxlen
        assert maxlen is not None
        return maxlen

    @property
    def total(self) -> int:
        """Decisions recorded since start (including the ones already dropped)."""
        return self._total

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, request: InferenceRequest, result: SchedulingResult, now: float) -> None:
        """Remember one decision. Cheap: stores references, formats nothing."""
        self._entries.append((request, result, now))
        self._total += 1

    def clear(self) -> None:
        self._entries.clear()

    def recent(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The most recent decisions, newest first, as JSON-ready dicts.

        Each dict holds the request id, client and target model, priority, objective, fairness
        id, the request's own latency bounds in seconds (``x-llm-d-slo-*-ms``; None where not
        sent), the time it was recorded, the profile, the chosen endpoint (key and name), the
        fallbacks, every candidate's weighted total (``scores``) and the raw per-scorer scores
        (``plugin_scores``: scorer name → endpoint key → score).
        """
        entries = list(self._entries)
        entries.reverse()
        if limit is not None:
            entries = entries[: max(limit, 0)]
        return [_format(req, res, at) for req, res, at in entries]


def _format(req: InferenceRequest, res: SchedulingResult, at: float) -> dict[str, Any]:
    primary = res.targets[0] if res.targets else None
    return {
        "request_id": req.request_id,
        "model": req.model,
        "target_model": req.target_model,
        "priority": req.priority,
        "objective": req.objective,
        "fairness_id": req.fairness_id,
        "ttft_slo": req.ttft_slo,
        "tpot_slo": req.tpot_slo,
        "at": at,
        "profile": res.profile,
        "endpoint": primary.key if primary is not None else None,
        "endpoint_name": primary.meta.name if primary is not None else None,
        "fallbacks": [t.key for t in res.targets[1:]],
        "scores": {k: float(v) for k, v in res.scores.items()},
        "plugin_scores": {
            plugin: {k: float(v) for k, v in per_ep.items()} for plugin, per_ep in res.plugin_scores.items()
        },
    }
