"""The predicted-latency scorer's TPOT correction: each endpoint priced against the pool's fastest.

Each finished streamed request with a token count reports its time per token after the first; the
slowly moving (``TPOT_ALPHA`` per answer) average ratio of observed to predicted TPOT is kept per
endpoint (``EndpointState.tpot_factor``), and its ratio to the lowest such factor in the pool,
beyond a band of ``TPOT_BAND`` (the spread the model's own error leaves between equal replicas) and
at most ``tpotCorrectionLimit``, scales the TPOT the cost uses. A replica on a slower GPU than the
rest (a pool of mixed GPUs) is then priced slower; a bias every replica shares moves nothing,
because an absolute factor would reweigh TPOT against TTFT for the whole pool (which sent tenants
off their cached replicas in the twin's many-tenants).

Kept apart from :mod:`infergate.scheduling.plugins.latency` because it is the one correction that
depends on every endpoint at once (the floor), and the scoring loop writes its arithmetic out:
:meth:`RelativeTpot.scale` is the reference the loop must agree with.
"""

from __future__ import annotations

from infergate.scheduling.plugins.latency_state import TPOT_ALPHA, TPOT_BAND, EndpointState

__all__ = ["RelativeTpot"]


class RelativeTpot:
    """The pool-relative TPOT factor over the scorer's endpoint states (see the module docstring).

    Args:
        states: the scorer's endpoint states, by key (the same dict, read as it changes).
        limit: ``tpotCorrectionLimit``: the scale stays within ``[1 / limit, limit]``.
    """

    def __init__(self, states: dict[str, EndpointState], limit: float) -> None:
        self._states = states
        self.limit = limit
        self._floor: float | None = None  # lowest tpot_factor of an observed endpoint (None: to find)

    def floor(self) -> float | None:
        """The lowest TPOT factor of the endpoints observed (the fastest decoder), found again only
        after the one that held it slowed down or left."""
        floor = self._floor
        if floor is None:
            observed = [st.tpot_factor for st in self._states.values() if st.tpot_observed]
            floor = self._floor = min(observed) if observed else None
        return floor

    def relative(self, st: EndpointState) -> float:
        """The endpoint's TPOT factor over the fastest observed endpoint's (1 before its first
        observation)."""
        floor = self.floor()
        if not st.tpot_observed or not floor:
            return 1.0
        return st.tpot_factor * (1.0 / floor)  # as the scoring loop multiplies

    def scale(self, st: EndpointState) -> float:
        """What scales the endpoint's TPOT predictions: its relative factor beyond the band the
        model's own error spans between equal replicas, within the limit."""
        if not st.tpot_observed:
            return 1.0
        relative = self.relative(st)
        if relative > TPOT_BAND:
            relative /= TPOT_BAND
        elif relative < 1.0 / TPOT_BAND:
            relative *= TPOT_BAND
        else:
            relative = 1.0
        hi = self.limit
        return min(hi, max(1.0 / hi, relative))

    def learn(self, st: EndpointState, ratio: float) -> None:
        """Move the endpoint's TPOT factor towards one observed ratio (and the pool's floor)."""
        st.tpot_observed += 1
        old = st.tpot_factor
        # slowly, from 1, even at first: an endpoint's first few ratios swing with what happened to
        # be running beside them, and early swings moved tenants off replicas their prefixes then
        # stayed away from (many-tenants in the twin: 2 of 12 paired runs met the SLO, against 10
        # with this); a GPU's real speed shows in a few hundred answers all the same
        st.tpot_factor += TPOT_ALPHA * (ratio - st.tpot_factor)
        floor = self._floor  # None: not known (found again when needed)
        if floor is not None:
            if st.tpot_factor <= floor:
                self._floor = st.tpot_factor
            elif old <= floor and st.tpot_observed > 1:
                self._floor = None  # it may have been the fastest, and slowed down

    def forget(self, st: EndpointState) -> None:
        """``st``'s endpoint left the pool: the floor may have been its factor."""
        if st.tpot_observed:
            self._floor = None
