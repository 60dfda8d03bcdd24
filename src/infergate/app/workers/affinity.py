"""Prefix affinity across workers: every worker's prefix index learns every worker's picks.

The approximate ``prefix-cache-scorer`` (and the predicted-latency scorer, which keeps the same
kind of index) learns where prompts went from its own picks (PostPick
credits the chosen endpoint with the prompt's block hashes). With one index per worker, a
tenant's requests that land on another worker find no match there and go wherever load sends
them, so the pool caches the same prefix on several replicas: in the digital twin two workers
cut the many-tenants prefix hit rate from 52 % to 40 %. Here each worker's index also sends its
credits to the gateway process, which passes them on to the other workers; each index then
holds what a single process's index would (up to the channel's delay of a few milliseconds).

The predicted-latency scorer's per-endpoint accounting (the prefill backlog and API-frontend work
each pick adds to its endpoint, the prefill-rate estimate, the average prefill and answer length)
is shared the same way: each pick's :class:`LatencyRecord` travels with the prefix credits, and
the other workers apply it to their scorers. Without it each worker priced an endpoint by its own
picks only, as if the other workers sent nothing there between scrapes: in the twin two workers
missed many-tenants' SLO at 0.98x one worker's rate. The online TTFT correction is shared too:
each worker sees the answers of its own requests only, and each observed ratio
(:class:`TtftRecord`) travels the same way, so every worker's correction factor follows all the
answers, as one process's does; so does each finished request's TPOT ratio (:class:`TpotRecord`).

Each worker's in-flight count per endpoint travels too (:class:`InFlightCount`, the count after
every change, with how many of them were seen to start): the scheduler of every worker counts
every worker's in-flight requests (``Datastore.set_peer_in_flight``), as one process's does, so
the ``least-in-flight-scorer``, the predicted-latency scorer's batch size and its charge for the
streams a prefill stalls see the pool's load, not a third of it. Flow control's
saturation detector keeps counting the worker's own requests (``Endpoint.in_flight``): in the twin
it did worse with the other workers' counts (docs/benchmarks.md, "Several worker processes").

Block hashes use Python's ``hash``, which is salted per process: the gateway process starts every
worker with the same ``PYTHONHASHSEED`` (a random one per gateway run unless set), so the hashes
agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from infergate.scheduling.engine.scheduler import Scheduler
from infergate.scheduling.plugins.latency import (
    AccountingRecord,
    LatencyRecord,
    PredictedLatencyScorer,
    TpotRecord,
    TtftRecord,
)
from infergate.scheduling.plugins.prefix import PrefixIndex

__all__ = [
    "AccountingRecord",
    "Credit",
    "InFlightCount",
    "LatencyRecord",
    "SharedPrefixIndex",
    "TpotRecord",
    "TtftRecord",
    "share_latency_accounting",
    "share_prefix_credits",
]

Credit = tuple[str, tuple[int, ...], int]
"""(endpoint key, block hashes, the index capacity the sender used)."""


@dataclass(frozen=True, slots=True)
class InFlightCount:
    """Worker ``worker`` now has ``count`` requests in flight on ``endpoint``, ``started`` of them
    seen to start (a streamed token came back); ``endpoint`` None:
    the worker exited, forget all its counts (the gateway process sends that one). A count of the
    exited worker still on its way then is replaced by the restarted worker's (same index) first
    count on that endpoint."""

    worker: int
    endpoint: str | None
    count: int = 0
    started: int = 0


class SharedPrefixIndex(PrefixIndex):
    """A prefix index that publishes the credits of its own picks and takes the others'."""

    def __init__(self, publish: Callable[[Credit], None]) -> None:
        super().__init__()
        self._publish = publish

    def add(self, server: str, hashes: Sequence[int], capacity: int) -> None:
        super().add(server, hashes, capacity)
        if capacity > 0 and hashes:
            self._publish((server, tuple(hashes), capacity))

    def add_remote(self, credit: Credit) -> None:
        """Another worker's pick: credit it without publishing it again."""
        server, hashes, capacity = credit
        super().add(server, hashes, capacity)


def share_prefix_credits(scheduler: Scheduler, publish: Callable[[Credit], None]) -> list[SharedPrefixIndex]:
    """Give every plugin of ``scheduler`` that keeps an approximate prefix index in ``index``
    (``prefix-cache-scorer``, the predicted-latency scorer) a :class:`SharedPrefixIndex`."""
    out: list[SharedPrefixIndex] = []
    for plugin in scheduler.plugins():
        if isinstance(getattr(plugin, "index", None), PrefixIndex):
            shared = SharedPrefixIndex(publish)
            setattr(plugin, "index", shared)  # noqa: B010 - any plugin with such an index
            out.append(shared)
    return out


def share_latency_accounting(
    scheduler: Scheduler, publish: Callable[[AccountingRecord], None]
) -> list[PredictedLatencyScorer]:
    """Make every predicted-latency scorer of ``scheduler`` publish its picks' accounting records
    and its TTFT and TPOT observations; the caller applies the other workers' records with
    ``apply_accounting`` on the returned ones."""
    out: list[PredictedLatencyScorer] = []
    for plugin in scheduler.plugins():
        if isinstance(plugin, PredictedLatencyScorer):
            plugin.export_accounting(publish)
            out.append(plugin)
    return out
