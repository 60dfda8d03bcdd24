"""Program-aware fairness: a band's flows served by least attained service (llm-d-router's
``program-aware-fairness``, strategy ``las``).

A *program* is a flow: the requests of one fairness id, e.g. one agentic workflow or tenant.
Round-robin gives each program a turn per dispatch, whatever its requests cost; this policy
counts what each program has consumed and serves the one that has consumed least, so a program
sending a few large requests and one sending many small ones get comparable service:

* **attained service**: ``input tokens + 2 x output tokens`` of the program's completed requests
  (output costs the model server more), decayed with a half-life (``half_life``, 60 s) in the
  clock's time, so a program back from idling competes on near-equal terms;
* **choice**: among the band's waiting flows, the highest ``service_weight x (1 - service') +
  wait_weight x wait'``, where ``service'`` and ``wait'`` are the flow's attained service and its
  head request's wait, each scaled to [0, 1] over the waiting flows (0.5 for all when they are
  equal). Ties go to the flow next in the band's round-robin rotation (the reference's are
  arbitrary);
* **forgetting**: a program with nothing in flight and no completion for ``idle_ttl`` seconds
  (3600) is forgotten, checked every ``sweep_interval`` seconds (300), so memory and metric
  series follow the programs in use.

It also keeps each program's mean queue wait and Jain's fairness index over those means, which
the reference exports. Sans-IO like :class:`~infergate.flowcontrol.core.FlowCore`: every call is
given ``now``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from infergate.telemetry.programs import ProgramMetrics

__all__ = ["ProgramAwareFairness", "ProgramAwareParams"]

INPUT_TOKEN_WEIGHT = 1.0
OUTPUT_TOKEN_WEIGHT = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramAwareParams:
    """The reference's parameters (``lasWeightService``, ``lasWeightHeadWait``,
    ``lasHalfLifeSeconds``, ``evictionTtlSeconds``, ``evictionSweepSeconds``)."""

    service_weight: float = 0.8
    wait_weight: float = 0.2
    half_life: float = 60.0
    """Seconds; 0: no decay (service accumulates for the program's lifetime)."""
    idle_ttl: float = 3600.0
    sweep_interval: float = 300.0

    def __post_init__(self) -> None:
        for name in ("service_weight", "wait_weight", "half_life", "idle_ttl"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} must be >= 0")
        if not self.sweep_interval > 0.0:
            raise ValueError("sweep_interval must be > 0")


class _Program:
    __slots__ = ("anchor", "completed_at", "in_flight", "service", "wait_count", "wait_ms")

    def __init__(self, now: float) -> None:
        self.service = 0.0
        self.anchor = now  # when ``service`` was last decayed
        self.in_flight = 0
        self.wait_ms = 0.0  # running mean
        self.wait_count = 0
        self.completed_at = now


def _scaled(value: float, low: float, high: float) -> float:
    return 0.5 if high == low else (value - low) / (high - low)


class ProgramAwareFairness:
    """Per-program accounting and the least-attained-service choice among a band's flows."""

    def __init__(
        self, params: ProgramAwareParams | None = None, *, metrics: ProgramMetrics | None = None
    ) -> None:
        self.params = params or ProgramAwareParams()
        self._metrics = metrics
        self._programs: dict[str, _Program] = {}
        self._swept_at: float | None = None
        self._now = 0.0  # the latest time any call was given

    def _program(self, fid: str, now: float) -> _Program:
        p = self._programs.get(fid)
        if p is None:
            p = self._programs[fid] = _Program(now)
        return p

    def service(self, fid: str, now: float) -> float:
        """The program's attained service decayed to ``now`` (0 for a program never seen)."""
        p = self._programs.get(fid)
        if p is None:
            return 0.0
        self._decay(p, now)
        return p.service

    def _decay(self, p: _Program, now: float) -> None:
        elapsed = now - p.anchor
        if elapsed <= 0.0:
            return
        if self.params.half_life > 0.0:
            p.service *= math.exp2(-elapsed / self.params.half_life)
        p.anchor = now

    # -- the choice ---------------------------------------------------------------------------

    def choose(
        self, rotation: Sequence[str], head_enqueued_at: Callable[[str], float], now: float | None
    ) -> str:
        """The flow to serve among ``rotation`` (the band's waiting flows, round-robin order)."""
        at = self._now if now is None else max(now, self._now)
        self._now = at
        if len(rotation) == 1:
            return rotation[0]
        services = [self.service(fid, at) for fid in rotation]
        # the reference counts whole milliseconds of wait
        waits = [math.floor((at - head_enqueued_at(fid)) * 1000.0) for fid in rotation]
        lo_s, hi_s, lo_w, hi_w = min(services), max(services), min(waits), max(waits)
        ws, ww = self.params.service_weight, self.params.wait_weight
        best, best_score = rotation[0], -math.inf
        for fid, service, wait in zip(rotation, services, waits, strict=True):
            score = ws * (1.0 - _scaled(service, lo_s, hi_s)) + ww * _scaled(wait, lo_w, hi_w)
            if score > best_score:
                best, best_score = fid, score
        if self._metrics is not None:
            self._metrics.fairness_index.set(self.fairness_index())
        return best

    # -- the request lifecycle ------------------------------------------------------------------

    def dispatched(self, fid: str, waited: float, now: float) -> None:
        """A request of ``fid`` left the gateway for a model server after ``waited`` seconds in it."""
        self._now = max(now, self._now)
        p = self._program(fid, now)
        p.in_flight += 1
        p.wait_count += 1
        p.wait_ms += (math.floor(max(0.0, waited) * 1000.0) - p.wait_ms) / p.wait_count
        if self._metrics is not None:
            self._metrics.set_wait(fid, p.wait_ms)

    def completed(self, fid: str, prompt_tokens: int, completion_tokens: int, now: float) -> None:
        """A request of ``fid`` ended (answered or failed) having used these tokens (0 when unknown)."""
        self._now = max(now, self._now)
        p = self._program(fid, now)
        p.in_flight = max(0, p.in_flight - 1)
        p.completed_at = now
        self._decay(p, now)
        cost = INPUT_TOKEN_WEIGHT * max(0, prompt_tokens) + OUTPUT_TOKEN_WEIGHT * max(0, completion_tokens)
        p.service += cost
        if self._metrics is not None:
            self._metrics.set_service(fid, p.service)
        self._sweep(now)

    def _sweep(self, now: float) -> None:
        if self._swept_at is None:
            self._swept_at = now
            return
        if now - self._swept_at < self.params.sweep_interval:
            return
        self._swept_at = now
        ttl = self.params.idle_ttl
        for fid in [f for f, p in self._programs.items() if p.in_flight == 0 and now - p.completed_at > ttl]:
            del self._programs[fid]
            if self._metrics is not None:
                self._metrics.forget(fid)

    # -- inspection -----------------------------------------------------------------------------

    def programs(self) -> list[str]:
        return list(self._programs)

    def mean_wait_ms(self, fid: str) -> float | None:
        p = self._programs.get(fid)
        return None if p is None or p.wait_count == 0 else p.wait_ms

    def fairness_index(self) -> float:
        """Jain's index over the programs' mean waits: ``(sum x)^2 / (n sum x^2)``; 1 with fewer
        than two programs or no wait at all."""
        means = [p.wait_ms for p in self._programs.values() if p.wait_count > 0]
        n = len(means)
        squares = sum(x * x for x in means)
        if n <= 1 or squares == 0.0:
            return 1.0
        return sum(means) ** 2 / (n * squares)
