"""How ``predicted-latency-scorer`` learns from what the data plane observed.

Every pick leaves its predicted TTFT and TPOT (uncorrected) under the request's id; the data plane
reports the request's observed first-token time, time per token, or, for an answer that was not
streamed, its end-to-end time. Each observation moves its endpoint's correction factor (TTFT) or
its relative decode speed (TPOT, :mod:`.latency_tpot`), and is handed to the other gateway
workers as a record. :class:`OnlineCorrections` is the scorer's part that does this, apart from
the model in :mod:`.latency`; it holds no state of its own.
"""

from __future__ import annotations

from collections.abc import Callable

from infergate.scheduling.plugins.latency_records import AccountingRecord, TpotRecord, TtftRecord
from infergate.scheduling.plugins.latency_state import (
    TPOT_RATIO_CAP,
    TTFT_ALPHA,
    EndpointState,
    LatencyParams,
    learning_weight,
)
from infergate.scheduling.plugins.latency_tpot import RelativeTpot
from infergate.types import Clock

__all__ = ["OnlineCorrections"]


class OnlineCorrections:
    """The observation side of :class:`~.latency.PredictedLatencyScorer` (which sets these)."""

    _p: LatencyParams
    _clock: Clock
    _state: dict[str, EndpointState]
    _pending: dict[str, tuple[str, float]]
    _decoding: dict[str, tuple[str, float]]
    _tpot: RelativeTpot
    _export: Callable[[AccountingRecord], None] | None

    def _observed(
        self, pending: dict[str, tuple[str, float]], request_id: str, seconds: float | None
    ) -> tuple[str, EndpointState, float] | None:
        """Take a pick's prediction out of ``pending``: its endpoint, that endpoint's state and the
        predicted milliseconds, or None when there is nothing to learn (an unknown or forgotten
        pick, no observation, an endpoint that left)."""
        entry = pending.pop(request_id, None)
        if entry is None or seconds is None or seconds <= 0:
            return None
        key, predicted = entry
        st = self._state.get(key)
        if st is None or predicted <= 0:
            return None
        return key, st, predicted

    def observe_ttft(self, request_id: str, ttft_seconds: float | None) -> None:
        """The data plane saw the request's first token after ``ttft_seconds`` (None: it failed)."""
        observed = self._observed(self._pending, request_id, ttft_seconds)
        if observed is None or ttft_seconds is None:
            return
        key, st, predicted = observed
        self._teach_ttft(key, st, predicted, ttft_seconds * 1000.0)

    def observe_tpot(self, request_id: str, tpot_seconds: float | None) -> None:
        """The request's tokens came ``tpot_seconds`` apart on average after the first, over its
        first ``TPOT_REPORT_TOKENS`` or all of a shorter answer (None: nothing to learn, e.g. it
        failed, was not streamed or its tokens could not be counted)."""
        observed = self._observed(self._decoding, request_id, tpot_seconds)
        if observed is None or tpot_seconds is None:
            return
        key, st, predicted = observed
        self._teach_tpot(key, st, predicted, tpot_seconds * 1000.0)

    def observe_answer(self, request_id: str, seconds: float | None, output_tokens: int | None) -> None:
        """The request's answer came whole (not streamed) ``seconds`` after it arrived, with
        ``output_tokens`` tokens (None: nothing to learn).

        Nobody saw its first token or timed the rest, so the time is split by what the model
        expects of each part on that endpoint, corrections included: when the first token was
        expected to take at least as long as the rest, the TTFT correction learns from the time
        left after the expected decode (all of it for a one-token answer); otherwise the TPOT
        correction learns from the time after the expected first token, per token. Each part
        is learnt only where it dominates, so the other's error moves it little. Without this a
        pool of clients that do not stream was priced by the uncorrected model alone (paired twin
        runs with no request streamed, mixed-gpus near its SLO rate: the SLO met at 6 of 18
        points without, 18 of 18 with this; docs/benchmarks.md).
        """
        first = self._observed(self._pending, request_id, seconds)
        rest = self._observed(self._decoding, request_id, seconds)
        if first is None or rest is None or seconds is None or not output_tokens:
            return
        key, st, ttft_ms = first
        tpot_ms = rest[2]
        elapsed = seconds * 1000.0
        decode = (output_tokens - 1) * tpot_ms * st.tpot_factor
        prefill = ttft_ms * st.ttft_factor
        if prefill >= decode:
            if elapsed > decode:
                self._teach_ttft(key, st, ttft_ms, elapsed - decode)
        elif elapsed > prefill:
            self._teach_tpot(key, st, tpot_ms, (elapsed - prefill) / (output_tokens - 1))

    def _teach_ttft(self, key: str, st: EndpointState, predicted_ms: float, observed_ms: float) -> None:
        """Learn one observed TTFT against its (uncorrected) prediction, and hand it to the other
        workers."""
        hi = self._p.ttft_correction_limit
        ratio = min(hi, max(1.0 / hi, observed_ms / predicted_ms))
        st.last_predicted_ms = predicted_ms * st.ttft_factor
        st.last_observed_ms = observed_ms
        now = self._clock.now()
        self._learn(st, ratio, now)
        if self._export is not None:
            self._export(TtftRecord(endpoint=key, ratio=ratio, at=now))

    def _teach_tpot(self, key: str, st: EndpointState, predicted_ms: float, observed_ms: float) -> None:
        """Learn one observed time per token against its prediction (one stalled stream counts at
        most ``TPOT_RATIO_CAP`` times), and hand it to the other workers."""
        ratio = min(TPOT_RATIO_CAP, max(1.0 / TPOT_RATIO_CAP, observed_ms / predicted_ms))
        self._tpot.learn(st, ratio)
        if self._export is not None:
            self._export(TpotRecord(endpoint=key, ratio=ratio))

    def _learn(self, st: EndpointState, ratio: float, at: float) -> None:
        """Move the endpoint's TTFT correction factor towards one ratio observed at ``at``: the
        running mean of the first 20, then ``TTFT_ALPHA`` each, bounded by time once the start is
        forgotten (:func:`.latency_state.learning_weight`)."""
        hi = self._p.ttft_correction_limit
        st.observed += 1
        gap = at - st.ttft_at
        if at > st.ttft_at:  # records from other workers may arrive out of order
            st.ttft_at = at
        alpha = learning_weight(TTFT_ALPHA, st.observed, gap) if st.observed > 20 else 1.0 / st.observed
        st.ttft_factor = min(hi, max(1.0 / hi, st.ttft_factor + alpha * (ratio - st.ttft_factor)))
