"""The decode guard: hold new requests briefly while the pool's streams decode slower than the TPOT bound.

Saturation (:mod:`infergate.flowcontrol.saturation`) asks whether a model server can *start* one
more request now. A vLLM server nearly always can: it admits a request as soon as its blocks fit
and its step has token budget, and every request it starts joins the batch that every running
stream waits on, token after token. So a pool can keep every time to first token short while its
batches grow until the streams' time per output token is over its bound. That happens when the
offered load rises past what the pool decodes within the bound (a daily ramp's peak): seen in the
twin's diurnal-ramp at 388 QPS, where ``default`` kept p90 TTFT at 0.14 s and let p90 TPOT reach
51-58 ms against a 50 ms bound, while a picker that let requests wait in the servers' queues (p90
TTFT 0.98 s) kept TPOT under it.

The guard spends that TTFT slack on purpose. It keeps, over the last ``window`` seconds, the TPOT
the data plane reports for each stream (at its ``TPOT_REPORT_TOKENS``-th token, or at its end when
shorter) and each request's TTFT counted from dispatch. It *holds* while all of these are true:

* the 90th percentile of those TPOTs is at or above ``tpot_slo`` (of at least ``min_samples``);
* their 10th percentile is under it: if even the fastest tenth of streams is over the bound the
  pool is slow, not overloaded (a larger model than the bound was set for), and holding would only
  add to every TTFT;
* the 90th percentile of those TTFTs plus ``hold`` is within ``ttft_slo``: a request held the
  whole ``hold`` still meets its TTFT bound. Where prefill binds (long prompts) TTFT has no such
  slack and holding only moved the misses from TPOT to TTFT (in a first version without this
  condition long-context-rag's SLO rate fell by a third and classify's by 13 %).

What flow control does while the guard holds (:class:`~infergate.flowcontrol.core.FlowCore`): the
pool's in-flight count may not grow past where it stood when holding began, so a newcomer waits
until a request finishes or it has waited ``hold`` seconds, whichever comes first; the batches
stop growing, and no request pays more than ``hold`` of TTFT for it. The count stays frozen after
the guard lets go until the requests it held have gone, unless the streams have recovered
(p90 TPOT under ``RECOVERED`` × the bound): a second version released them all the moment the
batches had shrunk enough, and on a pool running at the bound those bursts of prefill pushed the
streams back over it (the twin's many-tenants near its SLO rate, 12 seeds: SLO met at 6 against 8
without the guard; draining until the streams recover, 10). Draining however far TPOT had fallen
held bursty pools' requests for nothing (heavy-tail: 11 of 18 paired points against 13; with the
recovery rule, 14). A first version held every
newcomer its whole ``hold`` instead, so admissions resumed at the arrival rate after a pause, and
every time the guard let go the requests it had held started together: in the twin's
prefill-decode-mix (half of it 4,000-token prompts) those bursts of prefill stalled the running
streams, and the SLO rate fell by 10 % (63.6 to 57.1 QPS); with the count frozen it is 65.3.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sized

__all__ = ["DecodeGuard", "GuardCap"]

#: Seconds between two computations of the percentiles: ``holding`` runs for every arriving
#: request, the sort over the window at most this often.
REFRESH = 0.05

#: The streams have *recovered* once their 90th-percentile TPOT is under this share of the bound
#: (or too few reported to judge): then what the guard held may go at once, since a burst of
#: prefills has 10 % of the bound to spend. Between it and the bound the held queue drains one
#: request per finished one (:class:`~infergate.flowcontrol.core.FlowCore`).
RECOVERED = 0.9


class DecodeGuard:
    """Whether the pool's recent time per output token is over its bound (see the module docstring).

    Args:
        tpot_slo: the TPOT bound, seconds.
        ttft_slo: the TTFT bound, seconds: the guard holds only while recent TTFTs plus ``hold``
            stay within it.
        hold: longest a request is held for it, seconds.
        window: seconds of reported TPOTs the percentiles are taken over.
        min_samples: reports needed within the window before the guard holds at all.
    """

    def __init__(
        self, *, tpot_slo: float, ttft_slo: float, hold: float, window: float = 1.0, min_samples: int = 20
    ) -> None:
        if tpot_slo <= 0 or ttft_slo <= 0 or hold <= 0 or window <= 0 or min_samples < 1:
            raise ValueError("tpot_slo, ttft_slo, hold and window must be > 0 and min_samples >= 1")
        self.tpot_slo = tpot_slo
        self.ttft_slo = ttft_slo
        self.hold = hold
        self.window = window
        self.min_samples = min_samples
        self._samples: deque[tuple[float, float]] = deque()  # (reported at, seconds per token)
        self._ttfts: deque[tuple[float, float]] = deque()  # (reported at, seconds from dispatch)
        self._computed_at = float("-inf")
        self._holding = False
        self._slack = True
        self._recovered = True

    def observe(self, tpot_seconds: float, now: float) -> None:
        """One streamed request's time per output token after the first, reported at ``now``."""
        self._keep(self._samples, (now, tpot_seconds))

    def observe_ttft(self, seconds: float, now: float) -> None:
        """One request's time to first token counted from its dispatch, reported at ``now``."""
        self._keep(self._ttfts, (now, seconds))

    def _keep(self, samples: deque[tuple[float, float]], sample: tuple[float, float]) -> None:
        """Append, dropping what left the window: reports keep coming while the pool is saturated
        and nobody asks :meth:`holding`, so the window is kept here too."""
        samples.append(sample)
        horizon = sample[0] - self.window
        while samples[0][0] < horizon:
            samples.popleft()

    def holding(self, now: float) -> bool:
        """True while new requests should wait (up to ``hold`` seconds) for the batches to shrink."""
        if now - self._computed_at < REFRESH:
            return self._holding
        self._computed_at = now
        horizon = now - self.window
        for samples in (self._samples, self._ttfts):
            while samples and samples[0][0] < horizon:
                samples.popleft()
        self._slack = self._ttft_to_spare()
        tpots = self._ordered(self._samples)  # sorted once for both verdicts
        slo = self.tpot_slo
        p90 = tpots[(9 * len(tpots)) // 10] if tpots else None
        self._recovered = p90 is None or p90 < RECOVERED * slo
        # over the bound, but not even the fastest tenth under it: a slow pool is not held
        self._holding = self._slack and p90 is not None and p90 >= slo and tpots[len(tpots) // 10] < slo
        return self._holding

    @property
    def tpot_recovered(self) -> bool:
        """Whether, at the last :meth:`holding`, p90 TPOT was under ``RECOVERED`` × the bound."""
        return self._recovered

    @property
    def ttft_to_spare(self) -> bool:
        """Whether, at the last :meth:`holding`, recent TTFTs left room for a whole ``hold``:
        flow control keeps requests back after the guard let go only while they do."""
        return self._slack

    def _ttft_to_spare(self) -> bool:
        ordered = self._ordered(self._ttfts)
        return bool(ordered) and ordered[(9 * len(ordered)) // 10] + self.hold <= self.ttft_slo

    def _ordered(self, samples: deque[tuple[float, float]]) -> list[float]:
        """The window's values in order; empty below ``min_samples`` (too few to judge by)."""
        return sorted(t for _, t in samples) if len(samples) >= self.min_samples else []

    @property
    def kept(self) -> tuple[int, int]:
        """TPOT and TTFT reports in the window now (at most one window's worth)."""
        return len(self._samples), len(self._ttfts)

    def released_at(self, enqueued_at: float) -> float:
        """When a request queued at ``enqueued_at`` goes however long the guard holds."""
        return enqueued_at + self.hold


class GuardCap:
    """The cap the decode guard puts on the pool: while it holds, the pool may not have more
    requests in flight than when holding began.

    The cap begins when the guard holds and lasts until the queue it built has drained, not only
    while the guard holds: once the batches shrink the guard lets go, and releasing every request
    it held at that instant started their prefills together, which slowed the streams again. Held
    requests still go one per finished request, or each after its ``hold``. The cap ends at once
    when the streams have recovered (p90 TPOT under 90 % of the bound: a burst is affordable then;
    draining regardless held bursty pools' requests for nothing) or when recent TTFTs leave no room
    for a whole hold (waiting would cost TTFTs their bound).
    """

    __slots__ = ("_cap", "_capped", "_guard", "_held", "capped_now")

    def __init__(self, guard: DecodeGuard) -> None:
        self._guard = guard
        self._held = False  # the guard's last verdict
        self._cap = 0  # the in-flight count the held pool may not grow past
        self._capped = False  # the cap holds: the guard holds, or the queue it built still waits
        self.capped_now = False
        """The last call's answer: requests are kept back (capped, and at the cap)."""

    def holding(self, now: float, *, queued: Sized, in_flight: Callable[[], int]) -> bool | None:
        """Judge ``now`` (the answer in :attr:`capped_now`; ``queued``: the waiting requests, only
        counted when it matters); the guard's new verdict when it changed (for its gauge), else None."""
        guard = self._guard
        holding = guard.holding(now)
        began = False
        changed: bool | None = None
        if holding is not self._held:
            self._held = changed = holding
            if holding and not self._capped:
                self._cap = in_flight()
                began = True
        capped = holding or (
            self._capped and len(queued) > 0 and guard.ttft_to_spare and not guard.tpot_recovered
        )
        self._capped = capped
        self.capped_now = capped and (began or in_flight() >= self._cap)
        return changed
