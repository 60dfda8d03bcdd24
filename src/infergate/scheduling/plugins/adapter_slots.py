"""How short a pool is of LoRA adapter slots: what taking a second slot for an adapter costs.

``predicted-latency-scorer`` loads an adapter into a free slot for ``loraLoadMs``; when the
adapter already runs (or waits) somewhere, that slot may be the one an adapter nobody holds needs
next, and the pick is charged for it: the swap time × the shortage computed here.
"""

from __future__ import annotations

from collections.abc import Sequence

from infergate.types import Endpoint

__all__ = ["ADAPTER_DEMAND_SECONDS", "AdapterDemand"]

ADAPTER_DEMAND_SECONDS = 10.0
"""An adapter requested this recently is in demand: it needs a slot if no endpoint holds it."""

_MAX_NAMES = 256  # beyond this many names, those not requested recently are dropped


class AdapterDemand:
    """The adapters requested recently, and from them the pool's shortage of slots."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[str, float] = {}  # adapter -> when last requested

    def pressure(self, adapter: str, candidates: Sequence[Endpoint], now: float) -> float:
        """Record a request for ``adapter`` at ``now`` and return the pool's shortage of slots
        (0..1) when ``adapter`` is already held somewhere (running or waiting), else 0: the
        adapters requested in the last ``ADAPTER_DEMAND_SECONDS`` that no candidate holds, over
        the slots still free, at most the pool's slot use (held adapters over slots).

        The slot use alone stood for it before. It stayed at 0.7-0.8 in a pool with half again
        as many slots as adapters, and kept the hottest adapter packed on two of six replicas
        (lora-steep, held out: the SLO met at 16 of 24 paired twin points, ``lora-only`` 24; with
        this 23; docs/benchmarks.md). Where adapters wait for slots the shortage reaches the slot
        use, as before.
        """
        last = self._last
        last[adapter] = now
        if len(last) > _MAX_NAMES:
            self._last = last = {a: t for a, t in last.items() if now - t < ADAPTER_DEMAND_SECONDS}
        used = slots = 0
        resident = False
        for e in candidates:
            m = e.metrics
            held = m.running_adapters | m.waiting_adapters if m.waiting_adapters else m.running_adapters
            resident = resident or adapter in held
            n = len(held)
            used += m.max_active_adapters if m.max_active_adapters < n else n
            slots += m.max_active_adapters
        if not resident or not slots:
            return 0.0
        use = used / slots
        free = slots - used
        if free <= 0:  # every slot taken: the adapters held anywhere need not be collected
            return use
        held_anywhere: set[str] = set()
        for e in candidates:
            held_anywhere |= e.metrics.running_adapters
            held_anywhere |= e.metrics.waiting_adapters
        window = ADAPTER_DEMAND_SECONDS
        homeless = sum(1 for a, t in last.items() if now - t < window and a not in held_anywhere)
        short = homeless / free
        return short if short < use else use
