"""Steady-state load points in the twin: a duration of virtual time, a warm-up left out, SLO rates.

A load point at a fixed *count* of requests is a transient: at a high rate a big pool absorbs the
whole run as one burst and "meets the SLO" far beyond what it could sustain. Here every load point
runs for a *duration*: arrivals (Poisson or gamma, optionally with a rate profile) fill
``warm-up + measured window + cool-down``; only requests that arrive inside the measured window
count, so the queues and caches they meet are those of a pool that has been running; arrivals go
on through the cool-down so the last measured requests still see load. The measured window is
``max(60 s, 20 × the unloaded end-to-end latency)`` (the latency of the workload's requests served
one at a time by one idle replica), the warm-up ``max(10 s, 5 ×)`` that latency.

Each load point draws a fresh request stream (seeded by the rate), identical for every strategy at
that rate. A run stops as soon as every measured request has finished, or as soon as the SLO
verdict can no longer change (enough measured requests already failed or missed a bound that the
p90 or the 99 % success rate must miss): the same verdict, at a fraction of the cost above capacity.

With ``closed_loop`` a load is a count of clients instead, each sending its next request when its
last one ended (agents, batch workers, a benchmark client's ``--max-concurrency``): the measured
requests are those *sent* in the window, the run goes on until each of them has finished, and the
search finds the most clients whose measured requests meet the SLO; its warm-up is longer
(:data:`~infergate.bench.steady_plan.CLOSED_LOOP_WARMUP_LATENCIES`).

The plan and the pool's shape are :mod:`infergate.bench.steady_plan`'s; their names are
re-exported here, where the runner's callers look for them.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from infergate.bench.arrivals import arrival_times
from infergate.bench.loadgen import RequestRecord
from infergate.bench.stats import Slo, SloRate, Summary, find_slo_rate, slo_rate_of_sweep, summarise
from infergate.bench.steady_plan import (
    CLOSED_LOOP_WARMUP_LATENCIES,
    PoolShape,
    SteadyPlan,
    closed_loop_warmup,
    held_at_bounds,
    map_models,
    plan_for,
    resolve_pool,
    unloaded_e2e,
)
from infergate.bench.twin import TwinResult, run_twin
from infergate.bench.twin_pool import settings_for_slo
from infergate.bench.workloads import BenchRequest, BurstWorkload, WorkloadSpec, stream_phases
from infergate.config.picker import EndpointPickerConfig
from infergate.types import Objective

__all__ = [
    "CLOSED_LOOP_WARMUP_LATENCIES",
    "PointResult",
    "PoolShape",
    "SteadyPlan",
    "SteadyRunner",
    "closed_loop_warmup",
    "held_at_bounds",
    "map_models",
    "plan_for",
    "resolve_pool",
    "unloaded_e2e",
]


@dataclass(slots=True, kw_only=True)
class PointResult:
    """One strategy at one rate, at steady state. ``summary`` covers the measured requests only."""

    strategy: str
    rate: float
    plan: SteadyPlan
    summary: Summary
    met: bool
    measured: int
    total: int
    stopped_early: str | None
    prefix_hit_rate: float | None
    lora_swaps: int
    per_endpoint_requests: dict[str, int]
    flow_control: bool
    gateway_queued: int
    virtual_s: float
    cpu_s: float
    by_objective: dict[str, dict[str, float]] = field(default_factory=dict)
    closed_loop: bool = False
    """``rate`` is a count of clients (:attr:`SteadyRunner.closed_loop`), not QPS."""

    @property
    def load(self) -> str:
        return f"{self.rate:g} clients" if self.closed_loop else f"{self.rate:.3g} QPS"

    def describe(self) -> str:
        """One line for a search's log: the evidence behind the rate it settles on."""
        s = self.summary
        return (
            f"{self.load} ({self.plan.duration_s:g} s): "
            f"SLO {'met' if self.met else 'missed'}, p90 TTFT {s.ttft_p90:.3f} s, "
            f"p90 TPOT {s.tpot_p90 * 1000:.1f} ms, {s.succeeded}/{s.requests} served, "
            f"prefix hit {self.prefix_hit_rate or 0.0:.1%}, {self.stopped_early or 'ran to the end'}, "
            f"{self.cpu_s:.0f} s CPU"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "strategy": self.strategy,
            "clients" if self.closed_loop else "qps": self.rate,
            "meets_slo": self.met,
            **self.plan.as_dict(),
            "measured_requests": self.measured,
            "total_requests": self.total,
            "stopped_early": self.stopped_early,
            "virtual_s": self.virtual_s,
            "cpu_s": self.cpu_s,
            "flow_control": self.flow_control,
            "gateway_queued": self.gateway_queued,
            "prefix_hit_rate": self.prefix_hit_rate,
            "lora_swaps": self.lora_swaps,
            "per_endpoint_requests": self.per_endpoint_requests,
            "by_objective": self.by_objective,
            "summary": self.summary.as_dict(),
        }


def _fails_at(n: int) -> int:
    """A count of values at or above a bound, among ``n``, that surely puts the linear-interpolated
    p90 at or above it (the lower of the two ranks it interpolates between is then such a value)."""
    return n - math.floor(0.9 * (n - 1)) if n > 0 else 1


class _Verdict:
    """Watches a run's measured requests; says when all have finished or the SLO is surely missed.

    Sound because the thresholds assume the most favourable end: a request counted bad stays bad,
    the p90 threshold of the largest possible count is the highest (``_fails_at`` never decreases),
    and up to the allowed 1 % of failures are granted. A finished request is bad for TTFT (failed,
    or TTFT at or over the bound) or for TPOT; an unfinished one is *overdue* once it is past
    ``sent + TTFT bound + (tokens - 1) × TPOT bound``: it misses one of the two bounds, or fails, not
    known which, so overdue requests count only towards the sum of both thresholds.
    """

    def __init__(
        self, judged: Sequence[int], records: Sequence[RequestRecord], slo: Slo, tokens: Sequence[int]
    ):
        self.slo = slo
        self.open = list(judged)
        n = len(judged)
        allowed = math.floor((1 - slo.min_success) * n + 1e-9)
        self.limit_bad = _fails_at(n) + allowed
        self.limit_tpot = _fails_at(sum(1 for i in judged if tokens[i] >= 2))
        self.deadline = {i: slo.ttft_s + max(tokens[i] - 1, 0) * slo.tpot_s for i in judged}
        self.bad = 0
        self.slow_tpot = 0
        self.reason: str | None = None

    def __call__(self, now: float, records: Sequence[RequestRecord]) -> bool:
        # the twin times a request's tokens when it finishes: unfinished ones are judged by deadline
        still: list[int] = []
        overdue = 0
        bound = self.slo.ttft_s
        for i in self.open:
            r = records[i]
            if r.e2e is None:
                still.append(i)
                if r.sent_at + self.deadline[i] <= now:
                    overdue += 1
            elif not r.ok or r.ttft is None or r.ttft >= bound:
                self.bad += 1
            elif (tpot := r.tpot) is not None and tpot >= self.slo.tpot_s:
                self.slow_tpot += 1
        self.open = still
        if self.bad >= self.limit_bad:
            self.reason = f"{self.bad} measured requests failed or missed the TTFT bound"
            return True
        if self.slow_tpot >= self.limit_tpot:
            self.reason = f"{self.slow_tpot} measured requests missed the TPOT bound"
            return True
        if self.bad + self.slow_tpot + overdue >= self.limit_bad + self.limit_tpot:
            self.reason = (
                f"{self.bad + self.slow_tpot} measured requests missed a bound and {overdue} more are overdue"
            )
            return True
        return not still


def _sessions_behind(
    measured: int, records: Sequence[RequestRecord], window: tuple[float, float]
) -> str | None:
    """Why a point's rate was not sent, if it was not: turns wait for their session's previous
    answer (:attr:`~infergate.bench.workloads.SharedPrefixWorkload.turn_after_answer`), and the
    turns sent in the measured ``window`` fell more than 2 % short of the ``measured`` turns due in
    it. A turn held a few seconds only moves its send (one due before the window is then sent in
    it); a shortfall means the held turns pile up: the sessions, not the rate, set the load, and
    such a point is not met."""
    start, end = window
    sent = sum(1 for r in records if start <= r.sent_at < end)
    if sent < 0.98 * measured:
        return f"the sessions sent {sent} of the {measured} turns due in the window (turns wait for answers)"
    return None


class SteadyRunner:
    """Load points of one workload on one pool; caches every (strategy, rate) it ran."""

    def __init__(
        self,
        spec: WorkloadSpec,
        shape: PoolShape,
        *,
        slo: Slo | None = None,
        seed: int = 0,
        plan: SteadyPlan | None = None,
        time_scale: float = 1.0,
        min_duration: float = 60.0,
        latency_factor: float = 20.0,
        picker: EndpointPickerConfig | None = None,
        pool_overrides: Mapping[str, Any] | None = None,
        tell_slo: bool = True,
        closed_loop: bool = False,
    ) -> None:
        """``picker`` replaces the strategy's scheduler configuration (P/D pools);
        ``pool_overrides`` sets :class:`TwinConfig` fields (``num_gpu_blocks``, ``roles``);
        ``tell_slo`` False keeps the gateway at its default SLO whatever ``slo`` judges by (an
        operator who never set it); ``closed_loop`` makes every load a count of clients."""
        self.spec = spec
        self.closed_loop = closed_loop
        self.picker = picker
        self.pool_overrides = dict(pool_overrides or {})
        self.shape = shape
        self.slo = slo or Slo()
        self.seed = seed
        self.time_scale = time_scale
        self.plan = plan or plan_for(
            unloaded_e2e(spec, shape, time_scale=time_scale),
            min_duration=min_duration,
            latency_factor=latency_factor,
            closed_loop=closed_loop,
            held=held_at_bounds(spec, self.slo) if closed_loop else 0.0,
        )
        config = shape.twin_config(
            seed=seed,
            time_scale=time_scale,
            objectives=tuple(
                Objective(name=o.name, priority=o.priority, pool="twin") for o in spec.objectives
            ),
            scale=shape.scale_seconds(self.plan.warmup_s, self.plan.duration_s),
            slow=shape.slow_seconds(self.plan.warmup_s, self.plan.duration_s),
        )
        config = replace(config, **self.pool_overrides)
        # the gateway is told the SLO it is judged by (its decode guard and latency scorer use it)
        if tell_slo:
            config = replace(config, settings=settings_for_slo(self.slo, config.settings))
        self.config = config
        self.sheddable = {o.name for o in spec.objectives if o.priority < 0}
        self.points: dict[tuple[str, float], PointResult] = {}
        self.scout_cpu_s = 0.0  # CPU and requests of scouting runs (not in ``points``)
        self.scout_requests = 0
        self.on_point: Callable[[PointResult], None] | None = None
        """Called after every load point that ran (scouting runs too): the CLI's progress."""
        self.early_stop = True
        """Stop a point once its SLO verdict can no longer change; False: run every point to its
        end, so a missed point's attainment and p90s are the whole window's (paired comparisons)."""

    def _stream(self, rate: float) -> tuple[list[BenchRequest], list[float]]:
        """The request stream of one rate: fresh, seeded by (seed, rate), the same for every strategy."""
        p = self.plan
        total = p.warmup_s + p.duration_s + p.cooldown_s
        rng = random.Random(f"{self.spec.name}:{self.seed}:{rate:.9g}")
        w = self.spec.workload
        if isinstance(w, BurstWorkload):  # a burst every period_s, as large as the mean rate needs
            size = max(1, round(rate * w.period_s))
            times = [k * w.period_s for k in range(math.ceil(total / w.period_s)) for _ in range(size)]
        else:
            times = arrival_times(
                self.shape.arrival,
                rate,
                total,
                rng,
                profile=self.shape.rate_profile,
                profile_start=p.warmup_s,
                profile_span=p.duration_s,
            )
        # each phase's requests arrive from its point of the window on (the warm-up runs the first)
        cuts = [bisect.bisect_left(times, at) for at in self._phase_starts()]
        counts = [b - a for a, b in itertools.pairwise([0, *cuts, len(times)])]
        return self._requests(counts, rng.randrange(1 << 30) + 1), times

    def _phase_starts(self) -> list[float]:
        """When each later phase of the workload begins, in seconds after the first arrival."""
        p = self.plan
        return [p.warmup_s + ph.at * p.duration_s for ph in self.spec.phases]

    def _requests(self, counts: Sequence[int], seed: int) -> list[BenchRequest]:
        """``counts`` requests of each phase of the workload, numbered in order and mapped onto the
        pool's models."""
        requests = stream_phases(self.spec, counts, seed=seed)
        mapping = map_models(requests, self.shape)
        return [replace(r, index=i, model=mapping[r.model], offset=None) for i, r in enumerate(requests)]

    def _closed_loop_run(self, strategy: str, clients: int) -> tuple[list[BenchRequest], TwinResult]:
        """``clients`` clients through warm-up, window and cool-down, on a list long enough that
        it does not run out before the window ends (one that did is drawn again, twice as long);
        the run stops once every request sent before the window's end has finished. The clients
        start one after another over an unloaded latency (at most the warm-up): started together,
        they would stay in step for several round trips, a pool no long-running client mix sees.
        A workload with phases gets a list for each, as long as its part of the run needs, and a
        client takes from the phase of the moment it is free."""
        p = self.plan
        end = p.warmup_s + p.duration_s
        switches = self._phase_starts()
        spans = [b - a for a, b in itertools.pairwise([0.0, *switches, end + p.cooldown_s])]
        # a client sends about one request per unloaded latency at most: a quarter more to spare
        counts = [clients + math.ceil(1.25 * clients * span / max(p.unloaded_e2e_s, 1e-3)) for span in spans]

        def settled(now: float, records: Sequence[RequestRecord]) -> bool:
            return now >= end and all(r.e2e is not None for r in records if r.sent_at < end)

        while True:
            rng = random.Random(f"{self.spec.name}:{self.seed}:{clients} clients")
            requests = self._requests(counts, rng.randrange(1 << 30) + 1)
            ends = list(itertools.accumulate(counts))  # ends[k]: the first index of phase k + 1
            out = run_twin(
                requests,
                None,
                concurrency=clients,
                ramp=min(p.unloaded_e2e_s, p.warmup_s),
                strategy=strategy,
                config=self.config,
                monitor=settled,
                sample_interval=max(1.0, end / 200),
                picker=self.picker,
                phases=list(zip(switches, ends[:-1], strict=True)),
            )
            # a phase's list ran out if a client took its last request (an earlier phase's last
            # is never taken unless its clients emptied it); the last phase's must outlast the window
            sent = [out.records[last - 1].sent_at for last in ends]
            short = {k for k, at in enumerate(sent[:-1]) if at < math.inf}
            if sent[-1] < end:
                short.add(len(sent) - 1)
            if not short:
                return requests, out
            counts = [c * 2 if k in short else c for k, c in enumerate(counts)]

    def point(self, strategy: str, rate: float) -> PointResult:
        key = (strategy, rate)
        if key in self.points:
            return self.points[key]
        cpu0 = time.process_time()
        p = self.plan
        end = p.warmup_s + p.duration_s
        if self.closed_loop:
            requests, out = self._closed_loop_run(strategy, int(rate))
            measured = [i for i, r in enumerate(out.records) if p.warmup_s <= r.sent_at < end]
            stopped = None
        else:
            requests, times = self._stream(rate)
            measured = [i for i, t in enumerate(times) if p.warmup_s <= t < end]
            judged = [i for i in measured if requests[i].objective not in self.sheddable]
            tokens = [r.max_tokens for r in requests]
            verdict = _Verdict(judged, [], self.slo, tokens)
            out = run_twin(
                requests,
                times,
                strategy=strategy,
                config=self.config,
                monitor=verdict if self.early_stop else None,
                sample_interval=max(1.0, end / 200),
                picker=self.picker,
            )
            stopped = verdict.reason
            if stopped is None:
                stopped = _sessions_behind(len(measured), out.records, (p.warmup_s, end))
        judged = [i for i in measured if requests[i].objective not in self.sheddable]
        judged_records = [out.records[i] for i in judged]
        summary = summarise(judged_records, self.slo)
        by_objective: dict[str, dict[str, float]] = {}
        if self.spec.objectives:
            for o in self.spec.objectives:
                recs = [out.records[i] for i in measured if requests[i].objective == o.name]
                s = summarise(recs, self.slo)
                by_objective[o.name] = {
                    "requests": float(s.requests),
                    "succeeded": float(s.succeeded),
                    "ttft_p90": s.ttft_p90,
                    "slo_attainment": s.slo_attainment,
                }
        result = PointResult(
            strategy=strategy,
            rate=rate,
            plan=p,
            summary=summary,
            met=stopped is None and summary.meets_slo,
            measured=len(measured),
            total=len(requests),
            stopped_early=stopped,
            prefix_hit_rate=out.prefix_hit_rate,
            lora_swaps=out.lora_swaps,
            per_endpoint_requests=out.per_endpoint_requests,
            flow_control=out.flow_control,
            gateway_queued=out.gateway_queued,
            virtual_s=out.stopped_at if out.stopped_at is not None else end,
            cpu_s=time.process_time() - cpu0,
            by_objective=by_objective,
            closed_loop=self.closed_loop,
        )
        self.points[key] = result
        if self.on_point is not None:
            self.on_point(result)
        return result

    def slo_rate(
        self,
        strategy: str,
        *,
        start: float | None = None,
        tolerance: float = 0.02,
        factor: float = 1.5,
        scout: bool = True,
    ) -> SloRate:
        """The strategy's SLO rate, bracketed from ``start`` (default 2 QPS per replica) and bisected
        to ``tolerance``; with :attr:`closed_loop` its SLO concurrency, the most clients (a whole
        number, from 4 per replica) whose measured requests meet the SLO.

        With ``scout`` a cheap search on short runs (a fifth of the window, 20 % precision) finds
        the neighbourhood first and the real search brackets from there in steps of 10 %: the same
        result (every verdict that counts comes from full-length runs) in fewer full-length probes.
        """
        first = start if start is not None else (4.0 if self.closed_loop else 2.0) * self.shape.replicas
        load = self._load_key
        if scout:
            p = self.plan
            short = SteadyRunner(
                self.spec,
                self.shape,
                slo=self.slo,
                seed=self.seed,
                time_scale=self.time_scale,
                plan=SteadyPlan(
                    unloaded_e2e_s=p.unloaded_e2e_s,
                    warmup_s=min(p.warmup_s, max(3.0, p.warmup_s / 2)),
                    duration_s=max(8.0, p.duration_s / 5),
                    cooldown_s=min(p.cooldown_s, 2.0),
                ),
                picker=self.picker,
                pool_overrides=self.pool_overrides,
                closed_loop=self.closed_loop,
            )
            short.config = self.config  # the same pool (gateway workers included)
            short.on_point = self.on_point
            guess = find_slo_rate(
                lambda q: short.point(strategy, load(q)).met, start=first, factor=2.0, tolerance=0.2
            )
            self.scout_cpu_s += sum(pt.cpu_s for pt in short.points.values())
            self.scout_requests += sum(pt.total for pt in short.points.values())
            if guess.qps > 0:
                first, factor = guess.qps, 1.1
        found = find_slo_rate(
            lambda q: self.point(strategy, load(q)).met,
            start=first,
            factor=factor,
            tolerance=tolerance,
            min_rate=1.0 if self.closed_loop else 0.1,
        )
        return slo_rate_of_sweep((load(q), met) for q, met in found.probes)  # the loads the points ran

    def _load_key(self, q: float) -> float:
        """The load a search's probe runs: a rate to 6 decimals, or a whole number of clients."""
        return float(max(1, round(q))) if self.closed_loop else round(q, 6)

    def points_of(self, strategy: str) -> list[PointResult]:
        return sorted((r for (s, _), r in self.points.items() if s == strategy), key=lambda r: r.rate)
