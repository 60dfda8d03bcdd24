"""Usage-limit policies: how far the pool may fill before a priority band must wait.

Flow control admits or releases a request only while the pool's saturation is below its band's
*ceiling*; a band at or over its ceiling waits (head-of-line: a lower band never overtakes a
higher one). The policy decides the ceilings, from the saturation and the priority levels in use,
as the reference's ``UsageLimitPolicy`` plugins do:

* :class:`HeadroomLimit` (infergate's default, ``flow_control.usage_limit: headroom``): the top
  band up to 1.0, every other band up to ``1 - headroom``, so a flood of lower-priority work
  never takes the last room a higher-priority request arriving next would need.
* :class:`StaticLimit` (``static-usage-limit-policy``): one ceiling for every band.
* :class:`PriorityHoldback` (``priority-holdback-policy``): ceilings spread linearly from
  ``max_ceiling`` for the highest level to ``min_ceiling`` for the lowest, by rank or by value.
* :class:`SoftReflectiveCeiling` (``soft-reflective-ceiling-policy``): no parameters; band ``i``
  of ``N`` is open while ``saturation < 1 - i * saturation / (N - 1)``, and past that it is open
  on one decision in ``round(saturation / (1 - saturation))``, so its dispatch rate falls
  continuously as the pool fills instead of stopping at a step.

Policies are pure apart from the soft ceiling's decision counter; :class:`FlowCore` keeps the
priority levels (:class:`PriorityLevels`) and asks for one band's ceiling per decision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

__all__ = [
    "BAND_IDLE_SECONDS",
    "USAGE_LIMITS",
    "HeadroomLimit",
    "PriorityHoldback",
    "PriorityLevels",
    "SoftReflectiveCeiling",
    "StaticLimit",
    "UsageLimitPolicy",
    "usage_limit_policy",
]

BAND_IDLE_SECONDS = 600.0
"""A priority level no request has used for this long stops counting (the reference collects an
idle, dynamically provisioned band after ten minutes)."""


class UsageLimitPolicy(Protocol):
    """Decides the saturation up to which one band may be admitted or released."""

    @property
    def ranked(self) -> bool:
        """Whether the ceiling depends on the priority levels in use (else ``levels`` is empty)."""
        ...

    def ceiling(self, saturation: float, priority: int, levels: Sequence[int]) -> float:
        """The ceiling of ``priority``'s band; ``levels`` holds the levels in use, highest first,
        ``priority`` among them. Called once per admission or release decision."""
        ...


class HeadroomLimit:
    """1.0 for the top band, ``1 - headroom`` below it.

    ``top`` gives the top priority when asked (the setting, else the highest of the pool's
    objectives, which change at run time); None: every priority counts as top.
    """

    ranked = False

    def __init__(self, headroom: float, top: Callable[[], int | None] = lambda: None) -> None:
        if not 0.0 <= headroom < 1.0:
            raise ValueError("headroom must be in [0, 1)")
        self.headroom = headroom
        self._top = top

    def ceiling(self, saturation: float, priority: int, levels: Sequence[int]) -> float:
        if self.headroom <= 0.0:
            return 1.0
        top = self._top()
        return 1.0 if top is None or priority >= top else 1.0 - self.headroom


class StaticLimit:
    """The same ceiling for every band (1.0: no band waits before the pool is full)."""

    ranked = False

    def __init__(self, threshold: float = 1.0) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")
        self.threshold = threshold

    def ceiling(self, saturation: float, priority: int, levels: Sequence[int]) -> float:
        return self.threshold


class PriorityHoldback:
    """Ceilings from ``max_ceiling`` (highest level) down to ``min_ceiling`` (lowest).

    ``rank``: equal steps by position, ``max - i * (max - min) / (N - 1)``; ``value``: in
    proportion to the priority's value within the levels' range. One level in use: ``max_ceiling``
    (nothing to hold back for).
    """

    ranked = True

    def __init__(
        self, min_ceiling: float, max_ceiling: float = 1.0, domain: Literal["rank", "value"] = "rank"
    ) -> None:
        if not 0.0 <= min_ceiling < 1.0:
            raise ValueError("min_ceiling must be in [0, 1)")
        if not 0.0 < max_ceiling <= 1.0:
            raise ValueError("max_ceiling must be in (0, 1]")
        if min_ceiling >= max_ceiling:
            raise ValueError("min_ceiling must be below max_ceiling")
        if domain not in ("rank", "value"):
            raise ValueError("domain must be 'rank' or 'value'")
        self.min_ceiling = min_ceiling
        self.max_ceiling = max_ceiling
        self.domain = domain

    def ceiling(self, saturation: float, priority: int, levels: Sequence[int]) -> float:
        lo, hi = self.min_ceiling, self.max_ceiling
        n = len(levels)
        if n <= 1:
            return hi
        if self.domain == "rank":
            return hi - levels.index(priority) * (hi - lo) / (n - 1)
        top, bottom = levels[0], levels[-1]
        if top == bottom:
            return hi
        return lo + (priority - bottom) / (top - bottom) * (hi - lo)


class SoftReflectiveCeiling:
    """Band ``i`` of ``N`` open below ``1 - i * s / (N - 1)``; past it, open one decision in
    ``round(s / (1 - s))``; at ``s >= 1`` every band but the top one closed.

    One counter for every band, advanced on each decision while any band is past its reflective
    ceiling (``s >= 1 - s``): on a given decision every gated band is open or every one is closed,
    so a lower band's open turns never fall on a higher band's closed ones (the dispatcher stops at
    the first band that must wait).
    """

    ranked = True

    def __init__(self) -> None:
        self._tick = 0

    def ceiling(self, saturation: float, priority: int, levels: Sequence[int]) -> float:
        n = len(levels)
        if n <= 1:
            return 1.0
        open_turn = False
        if 1.0 - saturation <= saturation < 1.0:
            # Go's math.Round: halves away from zero (Python's round() goes to even)
            period = max(1, math.floor(saturation / (1.0 - saturation + 1e-9) + 0.5))
            self._tick += 1
            open_turn = self._tick % period == 0
        rank = levels.index(priority)
        if rank == 0 or saturation < 1.0 - rank * saturation / (n - 1):
            return 1.0
        if saturation >= 1.0:
            return 0.0
        return 1.0 if open_turn else 0.0


class PriorityLevels:
    """The priority levels in use: the configured bands', the pool's objectives' and those of
    requests seen lately.

    The reference provisions a band per priority it meets and drops one idle for ten minutes, but
    never drops a band its configuration lists (``flowControl.priorityBands``): ``configured``
    holds those (``flow_control.priority_bands``), counted from the start and never expired, so a
    ranked policy's ceilings are spread over the operator's bands before their first request, as
    there. infergate counts the objectives' priorities too (``declared`` on each call, since
    objectives change at run time), for the same reason.
    """

    __slots__ = ("_configured", "_idle", "_seen")

    def __init__(self, configured: Sequence[int] = (), idle: float = BAND_IDLE_SECONDS) -> None:
        self._configured = frozenset(configured)
        self._idle = idle
        self._seen: dict[int, float] = {}

    def levels(self, priority: int, now: float, declared: Sequence[int]) -> list[int]:
        """Note that ``priority`` was used at ``now``; the levels in use, highest first."""
        seen = self._seen
        seen[priority] = now
        if len(seen) > 1 and min(seen.values()) < now - self._idle:
            for p in [p for p, at in seen.items() if at < now - self._idle]:
                del seen[p]
        return sorted({*seen, *declared, *self._configured}, reverse=True)


USAGE_LIMITS = ("headroom", "static", "priority-holdback", "soft-reflective-ceiling")
"""The ``flow_control.usage_limit`` names."""


def usage_limit_policy(
    name: str,
    *,
    headroom: float = 0.2,
    top: Callable[[], int | None] = lambda: None,
    ceiling: float = 1.0,
    min_ceiling: float | None = None,
    domain: Literal["rank", "value"] = "rank",
) -> UsageLimitPolicy:
    """The policy ``name`` (one of :data:`USAGE_LIMITS`) with its parameters."""
    if name == "headroom":
        return HeadroomLimit(headroom, top)
    if name == "static":
        return StaticLimit(ceiling)
    if name == "priority-holdback":
        if min_ceiling is None:
            raise ValueError("priority-holdback needs min_ceiling")
        return PriorityHoldback(min_ceiling, ceiling, domain)
    if name == "soft-reflective-ceiling":
        return SoftReflectiveCeiling()
    raise ValueError(f"unknown usage limit {name!r} (known: {', '.join(USAGE_LIMITS)})")
