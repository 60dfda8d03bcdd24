"""Summaries of a run: latency percentiles, throughput, goodput and the SLO rate.

Two figures answer "how much useful work at the SLO", and both are kept because they answer
different questions:

- **goodput/s** (per request): requests that succeeded *and* met the bounds themselves (TTFT and
  TPOT each below its bound), per second of run time. It is a property of one run at one rate.
- **SLO rate** (per sweep, DistServe's reading of an SLO stated on percentiles): the highest
  request rate at which a run still meets the SLO *as a whole*, i.e. p90 TTFT and p90 TPOT below
  their bounds and at least 99 % of requests succeeding. It is a property of a strategy, found from
  a sweep of rates (:func:`slo_rate_of_sweep`) and optionally refined by bisection
  (:func:`find_slo_rate`, for the twin where a run is cheap).

Percentiles use linear interpolation between closest ranks, like numpy's default, so figures are
comparable with other tools' reports.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

from infergate.bench.loadgen import RequestRecord

__all__ = [
    "Slo",
    "SloRate",
    "Summary",
    "add_slo_arguments",
    "find_slo_rate",
    "percentile",
    "slo_rate_of_sweep",
    "summarise",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Slo:
    """The issue's SLO: p90 TTFT < 1 s and p90 TPOT < 50 ms, with at least 99 % of requests served.

    :meth:`met` applies the bounds to one request (for goodput); :meth:`sustained` applies them to
    a run's p90s (for the SLO rate).
    """

    ttft_s: float = 1.0
    tpot_s: float = 0.050
    min_success: float = 0.99

    def sustained(self, s: Summary) -> bool:
        """Whether a whole run meets the SLO: p90 TTFT and p90 TPOT under the bounds, success ≥ 99 %.

        A run whose answers are all one token long has no TPOT (NaN); that bound then holds.
        """
        if s.requests == 0 or s.succeeded / s.requests < self.min_success:
            return False
        if math.isnan(s.ttft_p90) or s.ttft_p90 >= self.ttft_s:
            return False
        return math.isnan(s.tpot_p90) or s.tpot_p90 < self.tpot_s

    @classmethod
    def of_arguments(cls, args: argparse.Namespace) -> tuple[Slo, bool]:
        """The SLO and whether infergate is told it, from :func:`add_slo_arguments`' options."""
        return cls(ttft_s=args.slo_ttft, tpot_s=args.slo_tpot), not args.untold

    def gateway_settings(self) -> dict[str, float]:
        """The gateway settings that tell infergate these bounds (dotted names): its flow control's
        decode guard judges by them, and the predicted-latency scorer takes them too (the gateway
        gives a pool one SLO). A router told the SLO it is judged by is what an operator runs."""
        return {"flow_control.ttft_slo": self.ttft_s, "flow_control.tpot_slo": self.tpot_s}

    def met(self, r: RequestRecord) -> bool:
        if not r.ok or r.ttft is None or r.ttft >= self.ttft_s:
            return False
        tpot = r.tpot
        return tpot is None or tpot < self.tpot_s


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def add_slo_arguments(parser: argparse.ArgumentParser) -> None:
    """``--slo-ttft``/``--slo-tpot`` (the bounds a twin script judges by, told to infergate) and
    ``--untold`` (judged by them, infergate left at its default SLO); :meth:`Slo.of_arguments`
    reads them back."""
    default = Slo()
    for flag, value, what in (("--slo-ttft", default.ttft_s, "TTFT"), ("--slo-tpot", default.tpot_s, "TPOT")):
        parser.add_argument(flag, type=float, default=value, help=f"p90 {what} bound, s (%(default)g)")
    parser.add_argument(
        "--untold",
        action="store_true",
        help="judge by --slo-* but leave the gateway at its default SLO (an operator who never set it)",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    requests: int
    succeeded: int
    duration_s: float
    requests_per_s: float
    output_tokens_per_s: float
    goodput_per_s: float
    slo_attainment: float
    ttft_p50: float
    ttft_p90: float
    ttft_p99: float
    tpot_p50: float
    tpot_p90: float
    tpot_p99: float
    itl_p50: float
    itl_p90: float
    itl_p99: float
    e2e_p50: float
    e2e_p90: float
    e2e_p99: float
    errors: dict[str, int]
    slo: Slo = Slo()

    @property
    def meets_slo(self) -> bool:
        """Whether this run as a whole meets the SLO it was summarised with (see :meth:`Slo.sustained`)."""
        return self.slo.sustained(self)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def summarise(records: Sequence[RequestRecord], slo: Slo | None = None) -> Summary:
    slo = slo or Slo()
    ok = [r for r in records if r.ok]
    if records:
        end = max(r.sent_at + (r.e2e or 0.0) for r in records)
        begin = min(r.sent_at for r in records)
        duration = max(end - begin, 1e-9)
    else:
        duration = 1e-9
    ttft = [r.ttft for r in ok if r.ttft is not None]
    tpot = [t for r in ok if (t := r.tpot) is not None]
    itl = [x for r in ok for x in r.itl]
    e2e = [r.e2e for r in ok if r.e2e is not None]
    good = sum(1 for r in records if slo.met(r))
    errors = Counter(f"{r.status}" if r.status != 200 else (r.error or "")[:40] for r in records if not r.ok)
    return Summary(
        requests=len(records),
        succeeded=len(ok),
        duration_s=duration,
        requests_per_s=len(ok) / duration,
        output_tokens_per_s=sum(r.completion_tokens for r in ok) / duration,
        goodput_per_s=good / duration,
        slo_attainment=good / len(records) if records else 0.0,
        ttft_p50=percentile(ttft, 50),
        ttft_p90=percentile(ttft, 90),
        ttft_p99=percentile(ttft, 99),
        tpot_p50=percentile(tpot, 50),
        tpot_p90=percentile(tpot, 90),
        tpot_p99=percentile(tpot, 99),
        itl_p50=percentile(itl, 50),
        itl_p90=percentile(itl, 90),
        itl_p99=percentile(itl, 99),
        e2e_p50=percentile(e2e, 50),
        e2e_p90=percentile(e2e, 90),
        e2e_p99=percentile(e2e, 99),
        errors=dict(errors),
        slo=slo,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SloRate:
    """The highest rate (QPS) at which a strategy's runs meet the SLO, with the evidence.

    ``qps`` is the highest probed rate that met the SLO with every lower probed rate also meeting
    it, 0.0 when even the lowest probe failed. ``failing`` is the lowest probed rate that did not
    (None when none failed: ``qps`` is then only a lower bound). The true capacity lies in
    ``[qps, failing)``; ``probes`` lists every (rate, met) pair in ascending rate.
    """

    qps: float
    failing: float | None
    probes: tuple[tuple[float, bool], ...]

    @property
    def bounded(self) -> bool:
        """Whether a failing rate above ``qps`` was seen (else ``qps`` is only a lower bound)."""
        return self.failing is not None

    @property
    def precision(self) -> float | None:
        """Relative width of the bracket, ``failing / qps - 1``; None when not bounded or ``qps`` is 0."""
        if self.failing is None or self.qps <= 0:
            return None
        return self.failing / self.qps - 1.0

    @property
    def monotone(self) -> bool:
        """False when some rate above the first failure met the SLO again (noise at the boundary)."""
        return not any(met for rate, met in self.probes if self.failing is not None and rate > self.failing)

    def as_dict(self) -> dict[str, object]:
        return {
            "qps": self.qps,
            "failing": self.failing,
            "bounded": self.bounded,
            "precision": self.precision,
            "monotone": self.monotone,
            "probes": [list(p) for p in self.probes],
        }


def slo_rate_of_sweep(points: Iterable[tuple[float, bool]]) -> SloRate:
    """The SLO rate of a sweep of ``(rate, met)`` pairs, in any order.

    It is the last passing rate before the first failing one: a rate counts as sustainable only if
    every lower rate of the sweep was too, so a lucky pass above a failure does not raise it.
    Repeated rates must agree (a rate probed twice is the same deterministic run).
    """
    probes: dict[float, bool] = {}
    for rate, met in points:
        if rate in probes and probes[rate] != met:
            raise ValueError(f"rate {rate:g} both met and missed the SLO")
        probes[rate] = met
    ordered = tuple(sorted(probes.items()))
    qps = 0.0
    failing: float | None = None
    for rate, met in ordered:
        if not met:
            failing = rate
            break
        qps = rate
    return SloRate(qps=qps, failing=failing, probes=ordered)


def find_slo_rate(
    met_at: Callable[[float], bool],
    *,
    start: float,
    factor: float = 1.25,
    tolerance: float | None = 0.02,
    min_rate: float = 0.1,
    max_rate: float = 1e4,
) -> SloRate:
    """Search the SLO rate of a strategy whose run at a rate is ``met_at(rate)``.

    From ``start``, step up by ``factor`` while runs pass (or down while they fail) until a passing
    and a failing rate bracket the capacity, then, if ``tolerance`` is given, bisect until
    ``failing / passing - 1 <= tolerance`` (``0.02``: the result is within 2 % below the boundary).
    Every probe is one full run, so this is meant for the twin. The same ``met_at`` and arguments
    always probe the same rates, so the result is as reproducible as the runs are.
    """
    if start <= 0 or factor <= 1:
        raise ValueError("start must be > 0 and factor > 1")
    seen: dict[float, bool] = {}

    def probe(rate: float) -> bool:
        if rate not in seen:
            seen[rate] = met_at(rate)
        return seen[rate]

    rate = start
    if probe(rate):
        while rate * factor <= max_rate and probe(rate * factor):
            rate *= factor
    else:
        while rate / factor >= min_rate and not probe(rate / factor):
            rate /= factor
    result = slo_rate_of_sweep(seen.items())
    if tolerance is None or result.failing is None or result.qps <= 0:
        return result
    lo, hi = result.qps, result.failing
    while hi / lo - 1.0 > tolerance:
        mid = (lo + hi) / 2.0
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return slo_rate_of_sweep(seen.items())
