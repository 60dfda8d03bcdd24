"""Which shared prompt prefixes carry more of the traffic than the servers holding them can take.

``predicted-latency-scorer`` charges a request the prefill of every prefix block its candidate
does not hold. For one request that is right, but it is paid once: the next requests with that
prefix find it there. A prefix most requests share (one product's system prompt, a few big
tenants) then stays on the servers that took it first, and they carry its whole share of the
traffic while the others idle. On three tenants of 6,000-token prompts over four replicas (the
held-out few-hot-tenants, halved) the replicas got 199-285 requests each where round-robin gave
234-235, and p90 TPOT was 47.6 ms against 36.0 at the same hit rate (docs/benchmarks.md).

So a prefix whose holders are fewer than its share of the requests would need (share × the
candidates) is spread: the request is not charged for the blocks a holder has and its candidate
lacks. Where prefixes are many and each carries little (many-tenants: 160 tenants on 6 replicas)
no holder is ever short, and nothing changes: charging every miss there is what keeps tenants
partitioned, and a discount for all of them lost every paired point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["HOT_PREFIX_BLOCKS", "MIN_REQUESTS", "PREFIX_DEMAND_SECONDS", "PrefixDemand"]

HOT_PREFIX_BLOCKS = 32
"""A prefix is known by its hash at this many blocks (512 tokens of 16), or the whole prompt if
shorter: deep enough to be past a chat template's preamble, shallow enough that all turns of a
conversation on one system prompt share it."""

PREFIX_DEMAND_SECONDS = 10.0
"""The time constant over which each prefix's share of the requests is counted (decaying)."""

MIN_REQUESTS = 20.0
"""Shares are taken of at least this many (decayed) requests: the first requests a scheduler sees
(a worker just started, a pool just switched on) would each look like the whole traffic, and a
prefix one worker's first request finds cached by another worker's would be spread at once."""

_MAX_PREFIXES = 4096  # beyond this many prefixes counted, those asked for once are forgotten


class PrefixDemand:
    """The recent share of the requests each prompt prefix carries (exponentially decayed)."""

    __slots__ = ("_at", "_counts", "_total")

    def __init__(self) -> None:
        self._counts: dict[int, tuple[float, float]] = {}  # prefix hash -> (count, when updated)
        self._total = 0.0
        self._at = 0.0

    def short_of_holders(
        self, hashes: Sequence[int], matched: Mapping[str, int], keys: Sequence[str], now: float
    ) -> bool:
        """Count a request whose prompt has block ``hashes`` and tell whether its prefix is held
        (``matched``: blocks matched per server) by fewer of the candidates ``keys`` than its share
        of the recent requests times ``len(keys)``, and by at least one."""
        if not hashes:
            return False
        depth = len(hashes) if len(hashes) < HOT_PREFIX_BLOCKS else HOT_PREFIX_BLOCKS
        key = hashes[depth - 1]
        total = _decayed(self._total, self._at, now) + 1.0
        self._total, self._at = total, now
        counts = self._counts
        count, at = counts.get(key, (0.0, now))
        count = _decayed(count, at, now) + 1.0
        if key not in counts and len(counts) >= _MAX_PREFIXES:
            self._counts = counts = self._recurring(now)
        counts[key] = (count, now)
        if not matched:
            return False
        holders = 0
        for k in keys:
            if matched.get(k, 0) >= depth:
                holders += 1
        return 0 < holders < count / (total if total > MIN_REQUESTS else MIN_REQUESTS) * len(keys)

    def _recurring(self, now: float) -> dict[int, tuple[float, float]]:
        """The counts of prefixes asked for more than once lately (their decayed count above 1);
        the rest, mostly prompts seen once, make room. None of them if even those are too many."""
        kept = {k: v for k, v in self._counts.items() if _decayed(v[0], v[1], now) > 1.0}
        return kept if len(kept) < _MAX_PREFIXES // 2 else {}


def _decayed(value: float, at: float, now: float) -> float:
    """``value`` counted at ``at``, decayed to ``now`` over ``PREFIX_DEMAND_SECONDS``."""
    return value * math.exp(-(now - at) / PREFIX_DEMAND_SECONDS) if now > at else value
