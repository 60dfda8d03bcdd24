"""What one ``predicted-latency-scorer`` hands another: the accounting of a pick and the observed
TTFT and TPOT ratios its online corrections learn from.

Several schedulers in front of one pool (gateway worker processes, ``infergate.app.workers``) each
see only their own picks and answers; these records, passed between them, let every scorer account
and learn as one process's would. They are plain values, pickled between processes.
"""

from __future__ import annotations

from infergate.types import typed_frozen

__all__ = ["AccountingRecord", "LatencyRecord", "TpotRecord", "TtftRecord"]


@typed_frozen
class LatencyRecord:
    """What one pick added to the scorer's accounting of its endpoint, for another scorer to add too.

    Several schedulers in front of one pool (gateway worker processes) each see only their own
    picks; without these records each believes an endpoint carries only its share of the prefill
    and frontend work sent there. ``at`` is the sender's clock reading (``CLOCK_MONOTONIC``, the
    same in every process of one host); ``answer_tokens`` 0 means the request set no ``max_tokens``.
    """

    endpoint: str
    prefill_ms: float
    answer_tokens: int
    frontend_ms: float
    at: float


@typed_frozen
class TtftRecord:
    """One observed TTFT on an endpoint, as the online correction learns it: the (clamped) ratio of
    observed to predicted TTFT, the prediction without the correction factor.

    Each gateway worker sees the answers of its own requests only; with these records every
    worker's correction factor learns from every worker's answers, as one process's would (its
    exponentially weighted average then spans the same few dozen requests, not N times as many).
    ``at`` is when the observer saw it (its clock, as :class:`LatencyRecord`'s): the factor's
    memory is bounded in time (:func:`.latency_state.learning_weight`).
    """

    endpoint: str
    ratio: float
    at: float


@typed_frozen
class TpotRecord:
    """One request's observed TPOT on an endpoint, as the online TPOT correction learns
    it: the (clamped) ratio of observed to predicted TPOT, the prediction without the correction.
    Gateway workers pass these to each other as they pass :class:`TtftRecord`."""

    endpoint: str
    ratio: float


AccountingRecord = LatencyRecord | TtftRecord | TpotRecord
"""What one scorer hands another (gateway workers): a pick's accounting or one observed ratio."""
