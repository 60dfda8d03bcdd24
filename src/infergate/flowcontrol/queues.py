"""The waiting room: priority bands of per-flow FIFO queues, with no notion of time or asyncio.

Structure (the reference's three tiers):

* a **band** per priority value; the dispatcher always serves the highest non-empty band first;
* inside a band, one **flow** queue per fairness id, served **round-robin** (a flow that was just
  served goes to the back of the rotation; a new flow joins at the back), or with
  ``fairness="global-strict"`` (the reference's ``global-strict-fairness-policy``) as one queue:
  the flow whose head comes first in the ordering below is served, whoever else waits; or with
  ``fairness="program-aware"`` the flow a :data:`FlowChooser` names (least attained service,
  :mod:`.program_aware`);
* inside a flow, **FCFS**, or with ``ordering="slo-deadline"`` (the reference's
  ``slo-deadline-ordering-policy``) the earliest deadline first: arrival plus the request's own
  TTFT bound (``x-llm-d-slo-ttft-ms``); a request without one comes after every request with one,
  and equal deadlines go first come first served.

Removing an arbitrary item (cancellation, TTL expiry) is O(flow length) and takes effect at once,
so counts and bytes are always exact. This module is pure data structure so that it can be property
tested and driven by the digital twin on a virtual clock.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from infergate.types import InferenceRequest

__all__ = [
    "FAIRNESS",
    "ORDERINGS",
    "BandSnapshot",
    "FlowSnapshot",
    "ItemState",
    "PriorityQueues",
    "QueuedItem",
]

#: How the requests of one flow are ordered (see the module docstring).
ORDERINGS = ("fcfs", "slo-deadline")
#: How the flows of one band take turns (see the module docstring).
FAIRNESS = ("round-robin", "global-strict", "program-aware")

FlowChooser = Callable[[Sequence[str], Callable[[str], float], "float | None"], str]
"""Picks the flow to serve: (waiting flows in rotation order, a flow's head enqueue time, now)."""


class ItemState(StrEnum):
    """Where a queued request stands (its metrics' ``outcome`` label is spelled as llm-d-router's,
    see :mod:`infergate.flowcontrol.core`)."""

    QUEUED = "queued"
    DISPATCHED = "dispatched"
    REJECTED = "rejected"
    EVICTED_TTL = "evicted_ttl"
    EVICTED_NO_ENDPOINTS = "evicted_no_endpoints"
    CANCELLED = "cancelled"


@dataclass(eq=False, slots=True, kw_only=True)
class QueuedItem:
    """One waiting request. Identity-compared: two equal requests are still two items."""

    request: InferenceRequest
    size: int
    enqueued_at: float
    deadline: float | None
    seq: int
    pool: str = ""
    state: ItemState = ItemState.QUEUED

    @property
    def priority(self) -> int:
        return self.request.priority

    @property
    def due(self) -> tuple[float, int]:
        """The slo-deadline order: arrival plus the request's TTFT bound (none: after all), then
        first come first served."""
        r = self.request
        if r.ttft_slo is None:
            return (math.inf, self.seq)
        return ((r.arrived_at or self.enqueued_at) + r.ttft_slo, self.seq)

    @property
    def fairness_id(self) -> str:
        return self.request.fairness_id


@dataclass(frozen=True, slots=True)
class FlowSnapshot:
    fairness_id: str
    queued: int
    bytes: int
    oldest_enqueued_at: float


@dataclass(frozen=True, slots=True)
class BandSnapshot:
    """One priority band as the live view shows it."""

    priority: int
    flows: tuple[FlowSnapshot, ...]
    queued: int
    bytes: int


class _DueQueue(deque[QueuedItem]):
    """One flow's queue in deadline order (:attr:`QueuedItem.due`), with the deque methods the band
    uses: ``append`` inserts in order, ``popleft`` and ``[0]`` take the earliest deadline."""

    def append(self, item: QueuedItem) -> None:
        due = item.due
        if not self or self[-1].due <= due:  # the usual case: no bound, or bounds arriving in order
            super().append(item)
        else:
            self.insert(bisect.bisect_right(self, due, key=_due), item)


def _due(item: QueuedItem) -> tuple[float, int]:
    return item.due


def _seq(item: QueuedItem) -> int:
    return item.seq


@dataclass(slots=True)
class _Band:
    priority: int
    by_deadline: bool = False
    strict: bool = False  # global-strict: the flow whose head comes first, not the next in turn
    chooser: FlowChooser | None = None  # program-aware: the policy names the flow
    flows: dict[str, deque[QueuedItem]] = field(default_factory=dict)
    rotation: deque[str] = field(default_factory=deque)  # non-empty flows, next to serve first
    count: int = 0
    bytes: int = 0

    def _head_enqueued_at(self, fid: str) -> float:
        return self.flows[fid][0].enqueued_at

    def _first_flow(self, now: float | None = None) -> str:
        """The flow to serve next: the rotation's head, (global-strict) the flow whose head item
        comes first in the band's ordering, or the one the chooser names."""
        if self.chooser is not None:
            return self.chooser(self.rotation, self._head_enqueued_at, now)
        if not self.strict or len(self.rotation) == 1:
            return self.rotation[0]
        order = _due if self.by_deadline else _seq
        flows = self.flows
        return min(self.rotation, key=lambda fid: order(flows[fid][0]))

    def push(self, item: QueuedItem) -> None:
        queue = self.flows.get(item.fairness_id)
        if queue is None:
            queue = self.flows[item.fairness_id] = _DueQueue() if self.by_deadline else deque()
            self.rotation.append(item.fairness_id)
        queue.append(item)
        self.count += 1
        self.bytes += item.size

    def peek(self, now: float | None = None) -> QueuedItem | None:
        if not self.rotation:
            return None
        return self.flows[self._first_flow(now)][0]

    def pop(self, now: float | None = None) -> QueuedItem:
        fid = self._first_flow(now)
        queue = self.flows[fid]
        item = queue.popleft()
        if fid == self.rotation[0]:
            self.rotation.popleft()
            if queue:
                self.rotation.append(fid)
        elif not queue:
            self.rotation.remove(fid)
        if not queue:
            del self.flows[fid]
        self.count -= 1
        self.bytes -= item.size
        return item

    def remove(self, item: QueuedItem) -> bool:
        queue = self.flows.get(item.fairness_id)
        if queue is None:
            return False
        try:
            queue.remove(item)
        except ValueError:
            return False
        if not queue:
            del self.flows[item.fairness_id]
            self.rotation.remove(item.fairness_id)
        self.count -= 1
        self.bytes -= item.size
        return True


class PriorityQueues:
    """Bands of flows of items; strict priority between bands, round-robin (or global-strict)
    between flows."""

    def __init__(
        self, ordering: str = "fcfs", fairness: str = "round-robin", *, chooser: FlowChooser | None = None
    ) -> None:
        if ordering not in ORDERINGS:
            raise ValueError(f"ordering must be one of {', '.join(ORDERINGS)} (got {ordering!r})")
        if fairness not in FAIRNESS:
            raise ValueError(f"fairness must be one of {', '.join(FAIRNESS)} (got {fairness!r})")
        if (fairness == "program-aware") != (chooser is not None):
            raise ValueError("a chooser goes with fairness 'program-aware', and only with it")
        self.ordering = ordering
        self.fairness = fairness
        self._strict = fairness == "global-strict"
        self._chooser = chooser
        self._by_deadline = ordering == "slo-deadline"
        self._bands: dict[int, _Band] = {}
        self._priorities: list[int] = []  # ascending; only non-empty bands
        self._count = 0
        self._bytes = 0
        # deadline order: the item queued longest, remembered until it leaves (then found again by
        # a scan), since it may be anywhere in its flow; None while unknown or nothing is queued
        self._oldest: QueuedItem | None = None
        self._oldest_known = True

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def bands(self) -> list[int]:
        """The priorities with requests queued, lowest first."""
        return sorted(self._bands)

    def band_count(self, priority: int) -> int:
        band = self._bands.get(priority)
        return band.count if band is not None else 0

    def band_bytes(self, priority: int) -> int:
        band = self._bands.get(priority)
        return band.bytes if band is not None else 0

    def flow_count(self, priority: int, fairness_id: str) -> int:
        band = self._bands.get(priority)
        if band is None:
            return 0
        queue = band.flows.get(fairness_id)
        return len(queue) if queue is not None else 0

    def push(self, item: QueuedItem) -> None:
        band = self._bands.get(item.priority)
        if band is None:
            band = self._bands[item.priority] = _Band(
                item.priority, self._by_deadline, self._strict, self._chooser
            )
            bisect.insort(self._priorities, item.priority)
        band.push(item)
        self._count += 1
        self._bytes += item.size
        oldest = self._oldest
        if (
            self._by_deadline
            and self._oldest_known
            and (oldest is None or item.enqueued_at < oldest.enqueued_at)
        ):
            self._oldest = item

    def peek(self, now: float | None = None) -> QueuedItem | None:
        """The item :meth:`pop` would return (given the same ``now``), without removing it.
        ``now`` is for a program-aware chooser (a head's wait); others ignore it."""
        if not self._priorities:
            return None
        return self._bands[self._priorities[-1]].peek(now)

    def pop(self, now: float | None = None) -> QueuedItem | None:
        """Remove and return the next item: highest band, next flow in rotation (global-strict:
        the flow whose head comes first), first in flow."""
        if not self._priorities:
            return None
        band = self._bands[self._priorities[-1]]
        item = band.pop(now)
        self._count -= 1
        self._bytes -= item.size
        if band.count == 0:
            self._drop_band(band.priority)
        if item is self._oldest:
            self._oldest, self._oldest_known = None, False
        return item

    def remove(self, item: QueuedItem) -> bool:
        """Take ``item`` out wherever it is; False if it is not queued here."""
        band = self._bands.get(item.priority)
        if band is None or not band.remove(item):
            return False
        self._count -= 1
        self._bytes -= item.size
        if band.count == 0:
            self._drop_band(band.priority)
        if item is self._oldest:
            self._oldest, self._oldest_known = None, False
        return True

    def oldest_enqueued_at(self) -> float | None:
        """When the request queued longest was queued, whatever its band (None: nothing queued).
        A first-come-first-served flow holds it at its head; a deadline-ordered one anywhere, so
        that item is remembered and the queues scanned only after it left (the decode guard asks
        on every release attempt, and a queue may hold thousands)."""
        if self._by_deadline:
            if not self._oldest_known:
                self._oldest = min(self, key=lambda i: i.enqueued_at, default=None)
                self._oldest_known = True
            return None if self._oldest is None else self._oldest.enqueued_at
        oldest: float | None = None
        for band in self._bands.values():
            for queue in band.flows.values():
                at = queue[0].enqueued_at
                if oldest is None or at < oldest:
                    oldest = at
        return oldest

    def __iter__(self) -> Iterator[QueuedItem]:
        """Every queued item, highest band first (not in dispatch order inside a band)."""
        for priority in reversed(self._priorities):
            for queue in self._bands[priority].flows.values():
                yield from queue

    def snapshot(self) -> list[BandSnapshot]:
        """Bands from highest to lowest priority, flows in their current rotation order."""
        out: list[BandSnapshot] = []
        for priority in reversed(self._priorities):
            band = self._bands[priority]
            flows = tuple(
                FlowSnapshot(
                    fairness_id=fid,
                    queued=len(band.flows[fid]),
                    bytes=sum(i.size for i in band.flows[fid]),
                    oldest_enqueued_at=min(i.enqueued_at for i in band.flows[fid]),
                )
                for fid in band.rotation
            )
            out.append(BandSnapshot(priority=priority, flows=flows, queued=band.count, bytes=band.bytes))
        return out

    def _drop_band(self, priority: int) -> None:
        del self._bands[priority]
        index = bisect.bisect_left(self._priorities, priority)
        del self._priorities[index]
