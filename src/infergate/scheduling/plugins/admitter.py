"""Admission plugins: refuse a request before flow control and scheduling see it.

llm-d-router v0.10's *Admitter* extension point runs once per request, with the pool's endpoints,
before the request is scheduled; the first admitter that refuses ends the request. infergate runs
the configured admitters in ``RequestCore.check_admission`` (after the objective, hence the
priority, is resolved and before flow control), so the built-in proxy, the ext_proc picker and the
digital twin all apply them.

``probabilistic-admitter`` sheds sheddable requests (priority < 0) with a probability that grows
steeply with the pool's saturation, instead of flow control's all-or-nothing cut at saturation 1.0:

- per endpoint, ``score = max(waiting_queue_size / queueDepthThreshold,
  kv_cache_usage / kvCacheUtilThreshold)``, 1.0 for an endpoint whose metrics are stale or were
  never scraped (its load is unknown);
- ``saturation`` is the mean score over the pool's healthy endpoints (uncapped, as upstream);
- the request is refused with probability ``p = min(saturation ** power * k, 1.0)``.

Requests with priority >= 0 are always admitted, and so is every request while the pool has no
endpoint (flow control or scheduling then answers). With the defaults (``power`` 5, ``k`` 300)
``p`` is 2.3 % at saturation 0.15, 9.6 % at 0.2, 73 % at 0.3 and 100 % from
``(1/k) ** (1/power)`` ≈ 0.32 on (upstream's README says ≈ 0.34). The draw comes from the
scheduler's ``random.Random`` (``build_scheduler(rng=...)``), so a seeded gateway or the twin sheds
the same requests every run; no draw is made when ``p`` is 0 or 1, so a pool that never sheds
leaves the pickers' random sequence as it was.
"""

from __future__ import annotations

import random
from collections.abc import Container, Sequence
from typing import ClassVar, Protocol, runtime_checkable

from pydantic import Field

from infergate.scheduling.sdk.framework import Params
from infergate.types import Endpoint, InferenceRequest

__all__ = [
    "Admitter",
    "ProbabilisticAdmitter",
    "ProbabilisticAdmitterParams",
    "shed_probability",
]


@runtime_checkable
class Admitter(Protocol):
    """Decides, before flow control and scheduling, whether a request may go on.

    ``endpoints`` are the pool's healthy endpoints (within the request's subset hint, if any);
    ``stale`` holds the keys of those whose metrics are stale or were never scraped. Returns None to
    admit, or the reason the request is refused (the client receives it in a 429).
    """

    def admit(
        self, request: InferenceRequest, endpoints: Sequence[Endpoint], stale: Container[str], /
    ) -> str | None: ...


class ProbabilisticAdmitterParams(Params):
    """``probabilistic-admitter`` parameters (upstream's names and defaults)."""

    queue_depth_threshold: int = Field(default=5, gt=0)
    kv_cache_util_threshold: float = Field(default=0.8, gt=0.0, le=1.0)
    power: float = Field(default=5.0, gt=0.0, allow_inf_nan=False)
    k: float = Field(default=300.0, gt=0.0, allow_inf_nan=False)


def shed_probability(saturation: float, power: float, k: float) -> float:
    """``min(saturation ** power * k, 1.0)``: how likely a sheddable request is refused."""
    if saturation <= 0.0:
        return 0.0
    try:
        return min(float(saturation**power) * k, 1.0)
    except OverflowError:  # a huge saturation (queue far above the threshold) sheds everything
        return 1.0


class ProbabilisticAdmitter:
    """``probabilistic-admitter``: refuses sheddable requests with probability
    ``min(saturation ** power * k, 1)`` (see the module docstring)."""

    plugin_type: ClassVar[str] = "probabilistic-admitter"

    def __init__(
        self, params: ProbabilisticAdmitterParams | None = None, *, rng: random.Random, name: str = ""
    ) -> None:
        p = params or ProbabilisticAdmitterParams()
        self._queue = float(p.queue_depth_threshold)
        self._kv = p.kv_cache_util_threshold
        self._power = p.power
        self._k = p.k
        self._rng = rng
        self.name = name or "probabilistic-admitter"

    def saturation(self, endpoints: Sequence[Endpoint], stale: Container[str]) -> float:
        """The mean over ``endpoints`` of each one's score (1.0 when its metrics are ``stale``);
        0.0 for no endpoint."""
        if not endpoints:
            return 0.0
        total = 0.0
        for e in endpoints:
            if e.key in stale:
                total += 1.0
                continue
            m = e.metrics
            total += max(m.waiting_queue_size / self._queue, m.kv_cache_usage / self._kv)
        return total / len(endpoints)

    def probability(self, saturation: float) -> float:
        return shed_probability(saturation, self._power, self._k)

    def admit(
        self, request: InferenceRequest, endpoints: Sequence[Endpoint], stale: Container[str], /
    ) -> str | None:
        if request.priority >= 0 or not endpoints:
            return None
        sat = self.saturation(endpoints, stale)
        p = self.probability(sat)
        if not p > 0.0:  # 0, or NaN from a NaN metric: admit
            return None
        if p < 1.0 and self._rng.random() >= p:
            return None
        return f"{self.name}: sheddable request rejected (saturation={sat:.3f}, probability={p:.2f})"
