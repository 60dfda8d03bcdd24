"""Summaries of a run: latency percentiles, throughput and goodput at an SLO.

Goodput counts only requests that succeeded *and* met the SLO (TTFT and TPOT each below its bound),
per second of run time. Percentiles use linear interpolation between closest ranks, like numpy's
default, so figures are comparable with other tools' reports.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from infergate.bench.loadgen import RequestRecord

__all__ = ["Slo", "Summary", "percentile", "summarise"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Slo:
    """Per-request bounds; the default is the issue's: TTFT < 1 s and TPOT < 50 ms (p90 targets)."""

    ttft_s: float = 1.0
    tpot_s: float = 0.050

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
    )
