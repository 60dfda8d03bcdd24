"""Arrival processes for steady-state runs: Poisson or gamma renewal, optionally time-varying.

A real request stream is rarely Poisson: users and agents arrive in bursts. A gamma renewal
process with shape ``k`` has inter-arrival times of mean ``1/rate`` and coefficient of variation
``1/sqrt(k)``: ``k = 1`` is Poisson, ``k = 0.25`` gives CV 2 (bursty), large ``k`` is nearly
periodic. A *rate profile* (a diurnal ramp) makes the rate vary over the run: the process is
generated at unit rate in "operational time" and mapped back through the integrated rate, which
keeps the inter-arrival shape while the mean rate follows the profile.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass

__all__ = ["ArrivalProcess", "RateProfile", "arrival_times", "parse_arrival"]


@dataclass(frozen=True, slots=True)
class ArrivalProcess:
    """``poisson`` or ``gamma`` renewal with ``shape`` (CV = 1/sqrt(shape))."""

    kind: str = "poisson"
    shape: float = 1.0

    @property
    def cv(self) -> float:
        return 1.0 / math.sqrt(self.shape)

    def __str__(self) -> str:
        return "poisson" if self.kind == "poisson" else f"gamma:{self.shape:g}"

    def gap(self, rng: random.Random, rate: float) -> float:
        """One inter-arrival time at ``rate`` requests per second."""
        if self.kind == "poisson":
            return rng.expovariate(rate)
        return rng.gammavariate(self.shape, 1.0 / (self.shape * rate))


def parse_arrival(text: str) -> ArrivalProcess:
    """``poisson`` or ``gamma:SHAPE`` (SHAPE > 0); anything else is an error naming it."""
    text = text.strip()
    if text == "poisson":
        return ArrivalProcess()
    if text.startswith("gamma:"):
        try:
            shape = float(text.removeprefix("gamma:"))
        except ValueError:
            shape = -1.0
        if shape > 0 and math.isfinite(shape):
            return ArrivalProcess(kind="gamma", shape=shape)
    raise ValueError(f"arrival process {text!r}: expected 'poisson' or 'gamma:SHAPE' with SHAPE > 0")


@dataclass(frozen=True, slots=True)
class RateProfile:
    """Rate multipliers at evenly spaced instants of a window, linear in between, mean 1.

    ``points = (0.5, 1.5, 0.5)`` over a 100 s window: half the nominal rate at 0 s, 1.5× at 50 s,
    half again at 100 s. The multipliers are rescaled so that their time average is exactly 1, so
    the nominal rate is the mean rate over the window (what an SLO rate of a ramp means here).
    """

    points: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if not self.points or any(p < 0 or not math.isfinite(p) for p in self.points):
            raise ValueError(f"rate profile {self.points}: needs one or more finite multipliers >= 0")
        if max(self.points) <= 0:
            raise ValueError(f"rate profile {self.points}: all multipliers are 0")

    def normalised(self) -> tuple[float, ...]:
        pts = self.points
        if len(pts) == 1:
            return (1.0,)
        mean = sum((a + b) / 2 for a, b in itertools.pairwise(pts)) / (len(pts) - 1)
        return tuple(p / mean for p in pts)

    def multiplier(self, fraction: float) -> float:
        """The normalised multiplier at ``fraction`` (0..1) of the window, clamped outside."""
        pts = self.normalised()
        if len(pts) == 1:
            return pts[0]
        x = min(max(fraction, 0.0), 1.0) * (len(pts) - 1)
        i = min(int(x), len(pts) - 2)
        return pts[i] + (pts[i + 1] - pts[i]) * (x - i)


def arrival_times(
    process: ArrivalProcess,
    rate: float,
    duration: float,
    rng: random.Random,
    *,
    profile: RateProfile | None = None,
    profile_start: float = 0.0,
    profile_span: float | None = None,
    steps: int = 2000,
) -> list[float]:
    """Arrival instants in ``[0, duration)`` at mean ``rate``, shaped by ``profile`` if given.

    The profile covers ``[profile_start, profile_start + profile_span)`` (default: the whole run)
    and holds its end values outside it. Time-varying rates use time rescaling: arrivals of the
    unit-rate process at operational times ``u`` land where the integrated rate reaches ``u``.
    """
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be > 0")
    if profile is None or len(profile.points) == 1:
        out: list[float] = []
        t = process.gap(rng, rate)
        while t < duration:
            out.append(t)
            t += process.gap(rng, rate)
        return out
    span = duration - profile_start if profile_span is None else profile_span
    # integrated rate on a fine grid (piecewise constant in each cell), inverted by bisection
    dt = duration / steps
    cum = [0.0]
    for s in range(steps):
        mid = (s + 0.5) * dt
        cum.append(cum[-1] + rate * profile.multiplier((mid - profile_start) / span) * dt)
    total = cum[-1]
    out = []
    u = process.gap(rng, 1.0)
    while u < total:
        cell = bisect.bisect_right(cum, u) - 1
        width = cum[cell + 1] - cum[cell]
        within = (u - cum[cell]) / width if width > 0 else 0.0
        out.append((cell + within) * dt)
        u += process.gap(rng, 1.0)
    return out
