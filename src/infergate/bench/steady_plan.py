"""What a steady-state load point runs on and for how long: the pool's shape, the workload's
unloaded latency, and the plan (warm-up, measured window, cool-down) that latency sets.

Kept apart from the runner (:mod:`infergate.bench.steady`), which runs load points to a plan:
these are the cheap decisions made before any point runs, and the scripts under ``bench/``
make them too.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from infergate.bench.arrivals import ArrivalProcess, RateProfile, parse_arrival
from infergate.bench.stats import Slo
from infergate.bench.strategies import BASE_MODEL
from infergate.bench.twin import TwinConfig
from infergate.bench.workloads import BenchRequest, WorkloadSpec, stream
from infergate.simulator.drivers import VirtualDriver, VirtualLoop
from infergate.simulator.engine import EngineConfig, EngineRequest, RequestOutput
from infergate.simulator.scaled import make_engine
from infergate.tokenization.builtin import Tokenizer

__all__ = [
    "CLOSED_LOOP_WARMUP_LATENCIES",
    "PoolShape",
    "SteadyPlan",
    "closed_loop_warmup",
    "held_at_bounds",
    "map_models",
    "plan_for",
    "resolve_pool",
    "unloaded_e2e",
]

TUTORIAL_ADAPTERS = ("food-review", "cad-fabricator", "legal-summarizer")
POISSON = ArrivalProcess()


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolShape:
    """The simulated pool and arrival process of a run: flags over the workload's ``pool:``."""

    replicas: int = 3
    adapters: tuple[str, ...] = TUTORIAL_ADAPTERS
    max_loras: int = 2
    arrival: ArrivalProcess = POISSON
    rate_profile: RateProfile | None = None
    profiles: tuple[str, ...] = ()
    """Simulator profiles of a mixed pool, cycled over the replicas; empty: the default one."""
    scale: tuple[tuple[float, int], ...] = ()
    """Replicas joining (> 0) or leaving (< 0) during the run: (fraction of the measured window,
    count), in order; ``replicas`` is the count at the start."""
    slow: tuple[tuple[float, int, float], ...] = ()
    """Replicas slowing down or recovering during the run: (fraction of the measured window,
    replica index, step-time factor), in order."""

    def describe(self) -> str:
        adapters = ",".join(self.adapters) or "none"
        profile = "" if self.rate_profile is None else f", rate profile {self.rate_profile.points}"
        gpus = "" if not self.profiles else f", profiles {','.join(self.profiles)} (cycled)"
        changes = "".join(f", {n:+d} at {at:.0%} of the window" for at, n in self.scale)
        changes += "".join(f", replica {i} steps ×{f:g} at {at:.0%}" for at, i, f in self.slow)
        return (
            f"{self.replicas} replicas{changes}, adapters {adapters}, max-loras {self.max_loras}, "
            f"arrival {self.arrival}{profile}{gpus}"
        )

    def counts(self) -> list[int]:
        """The pool's replica count at the start and after each scale event."""
        return list(itertools.accumulate((n for _, n in self.scale), initial=self.replicas))

    def replicas_label(self) -> str:
        """``4 replicas``, or with scale events every count in turn: ``4→6→5 replicas``."""
        return "→".join(str(c) for c in self.counts()) + " replicas"

    def scale_seconds(self, start: float, span: float) -> tuple[tuple[float, int], ...]:
        """The scale events in seconds after the first arrival, for a window of ``span`` seconds
        from ``start`` (the twin's :attr:`TwinConfig.scale`)."""
        return tuple((start + at * span, n) for at, n in self.scale)

    def slow_seconds(self, start: float, span: float) -> tuple[tuple[float, int, float], ...]:
        """The slow-down events in seconds after the first arrival (the twin's :attr:`TwinConfig.slow`)."""
        return tuple((start + at * span, i, f) for at, i, f in self.slow)

    def twin_config(self, *, seed: int, **fields: Any) -> TwinConfig:
        """The twin's pool of this shape; ``fields`` set the other :class:`TwinConfig` fields
        (``scale`` among them: this shape's events in seconds, see :meth:`scale_seconds`)."""
        return TwinConfig(
            replicas=self.replicas,
            adapters=self.adapters,
            max_loras=self.max_loras,
            profiles=self.profiles,
            seed=seed,
            **fields,
        )


def resolve_pool(
    spec: WorkloadSpec,
    *,
    replicas: int | None = None,
    adapters: Sequence[str] | None = None,
    max_loras: int | None = None,
    arrival: str | None = None,
) -> PoolShape:
    """A flag given wins, then the workload's ``pool:`` value, then the tutorial pool's."""
    pool = spec.pool
    arrival_text = arrival or pool.arrival or "poisson"
    try:
        process = parse_arrival(arrival_text)
        profile = RateProfile(tuple(pool.rate_profile)) if pool.rate_profile else None
    except ValueError as exc:
        raise ValueError(f"workload {spec.name}: {exc}") from None
    chosen = adapters if adapters is not None else pool.adapters
    shape = PoolShape(
        replicas=replicas or pool.replicas or 3,
        scale=tuple((e.at, e.replicas) for e in pool.scale),
        slow=tuple((e.at, e.replica, e.factor) for e in pool.slow),
        adapters=tuple(chosen) if chosen is not None else TUTORIAL_ADAPTERS,
        max_loras=max_loras or pool.max_loras or 2,
        arrival=process,
        rate_profile=profile,
        profiles=tuple(pool.profiles or ()),
    )
    started = shape.replicas + sum(n for _, n in shape.scale if n > 0)
    for _, index, _ in shape.slow:
        if index >= started:
            raise ValueError(
                f"workload {spec.name}: pool.slow names replica {index}, but only {started} start or join"
            )
    for (at, _), count in zip(shape.scale, shape.counts()[1:], strict=True):
        if count < 1:
            raise ValueError(
                f"workload {spec.name}: a pool of {shape.replicas} would drop to {count} replicas "
                f"at {at:.0%} of the window"
            )
    return shape


def map_models(requests: Sequence[BenchRequest], shape: PoolShape) -> dict[str, str]:
    """How the workload's model names land on the pool: the base model stays, an adapter the pool
    serves stays, every other name goes to the pool's adapters in turn (order of first use), or to
    the base model when the pool serves none. So any workload file runs on any pool."""
    mapping: dict[str, str] = {}
    spare = list(shape.adapters)
    turn = 0
    for r in requests:
        name = r.model
        if name in mapping:
            continue
        if name == BASE_MODEL or name in shape.adapters:
            mapping[name] = name
        elif spare:
            mapping[name] = spare[turn % len(spare)]
            turn += 1
        else:
            mapping[name] = BASE_MODEL
    return mapping


def unloaded_e2e(spec: WorkloadSpec, shape: PoolShape, *, sample: int = 24, time_scale: float = 1.0) -> float:
    """Mean end-to-end latency of the workload's first ``sample`` requests, each served alone by
    one idle replica (cold cache except what earlier requests of the sample left); in a mixed pool,
    the slowest profile's."""
    if len(set(shape.profiles)) > 1:
        return max(
            unloaded_e2e(spec, replace(shape, profiles=(p,)), sample=sample, time_scale=time_scale)
            for p in dict.fromkeys(shape.profiles)
        )
    requests = stream(spec, sample)[:sample]
    mapping = map_models(requests, shape)
    loop = VirtualLoop()
    engine_cfg = EngineConfig(enable_lora=bool(shape.adapters), max_loras=shape.max_loras, max_cpu_loras=12)
    if shape.profiles:
        engine_cfg = replace(engine_cfg, profile=shape.profiles[0])
    engine = make_engine(engine_cfg, time_scale)
    for name in shape.adapters:
        engine.add_lora(name, f"/adapters/{name}")
    driver = VirtualDriver(
        engine, loop, api_overhead=engine.profile.api_overhead_ms / 1000.0 * time_scale, sparse=True
    )
    tokenizer = Tokenizer(reverse=False)
    latencies: list[float] = []

    def submit(i: int) -> None:
        if i >= len(requests):
            return
        req = requests[i]
        model = mapping[req.model]
        text = (
            tokenizer.apply_chat_template(list(req.messages))
            if req.messages is not None
            else req.prompt or ""
        )
        start = loop.now()

        def done(out: RequestOutput) -> None:
            if out.finished:
                latencies.append(out.now - start)
                loop.call_at(loop.now(), functools.partial(submit, i + 1))

        driver.submit(
            EngineRequest(
                request_id=f"idle-{i}",
                prompt_token_ids=tokenizer.encode(text),
                max_tokens=req.max_tokens,
                ignore_eos=True,
                lora_name=None if model == BASE_MODEL else model,
            ),
            done,
        )

    loop.call_at(0.0, functools.partial(submit, 0))
    loop.run()
    return sum(latencies) / len(latencies)


@dataclass(frozen=True, slots=True, kw_only=True)
class SteadyPlan:
    """How long each load point runs, in virtual seconds."""

    unloaded_e2e_s: float
    warmup_s: float
    duration_s: float
    cooldown_s: float

    def as_dict(self) -> dict[str, float]:
        return {
            "unloaded_e2e_s": self.unloaded_e2e_s,
            "warmup_s": self.warmup_s,
            "duration_s": self.duration_s,
            "cooldown_s": self.cooldown_s,
        }


CLOSED_LOOP_WARMUP_LATENCIES = 8.0
"""A closed loop's warm-up lasts at least this many unloaded end-to-end latencies.

Clients started together first send one request each, and whichever class of request is quick
comes back and draws again while the slow class holds its clients: the mix in flight settles
only once the quick class's first burst has drained and enough clients sit in long answers. In
prefill-decode-mix (unloaded e2e 2.6 s; 4,000-token prompts with 20-token answers beside
700-token answers) 400 clients had sent 204 long prompts within a second, which took the pool
until ~12 s to prefill, and the share of clients in long answers reached its level (~97 %) at
~14 s: a 5 s warm-up measured that start, where every router missed the TPOT bound, and
round-robin looked a step better than the latency scorer; measured after 40 s, both met it at
every point up to 480 clients, the scorer with a p90 TPOT 5–15 ms lower (docs/benchmarks.md).
Eight latencies (20.5 s there) leave a margin over the 5.5 that workload took; measured after
20 s the scorer again met the SLO at every point. An open loop has no such start: its arrivals
do not wait for answers."""


def held_at_bounds(spec: WorkloadSpec, slo: Slo, *, sample: int = 2000) -> float:
    """How long the request a closed-loop client is found in lasts when the pool runs at the SLO's
    bounds: ``E[D²] / E[D]`` of ``D = TTFT bound + TPOT bound × (answer − 1)`` over the workload's
    first ``sample`` requests.

    A client spends its time in requests in proportion to their length, so the request it is
    found in is the length-weighted mean, not the mean: in bimodal-answers (60 % of answers ~10
    tokens, 40 % ~1,500) ~80 s at 1 s / 50 ms against a mean of 31 s. A closed loop is settled only
    once its clients have been through such a request, and near its SLO concurrency a pool decodes
    close to the TPOT bound, far slower than the unloaded latency suggests: there, after the 36 s
    of 8 unloaded latencies, the KV caches were still filling with the first long answers, and
    the SLO concurrency measured that crunch (docs/benchmarks.md, "A closed loop warms up through
    its longest requests").
    """
    durations = [slo.ttft_s + slo.tpot_s * max(0, r.max_tokens - 1) for r in stream(spec, sample)[:sample]]
    total = sum(durations)
    return sum(d * d for d in durations) / total if total > 0 else 0.0


def closed_loop_warmup(unloaded: float, warmup: float, held: float = 0.0) -> float:
    """The warm-up a closed loop needs when an open loop's would be ``warmup``: at least
    :data:`CLOSED_LOOP_WARMUP_LATENCIES` unloaded latencies and one ``held`` duration
    (:func:`held_at_bounds`)."""
    return max(CLOSED_LOOP_WARMUP_LATENCIES * unloaded, held, warmup)


def plan_for(
    unloaded: float,
    *,
    min_duration: float = 60.0,
    latency_factor: float = 20.0,
    duration: float | None = None,
    warmup: float | None = None,
    closed_loop: bool = False,
    held: float = 0.0,
) -> SteadyPlan:
    """``duration`` = max(``min_duration``, ``latency_factor`` × unloaded e2e) unless given;
    warm-up max(10 s, 5 × unloaded e2e) unless given (capped at the duration), for a closed loop
    at least :data:`CLOSED_LOOP_WARMUP_LATENCIES` × unloaded e2e and ``held`` (the workload's
    :func:`held_at_bounds`); cool-down 2 × the unloaded e2e (at most a quarter of the duration)."""
    d = duration if duration is not None else max(min_duration, latency_factor * unloaded)
    w = warmup if warmup is not None else min(max(10.0, 5.0 * unloaded), d)
    if warmup is None and closed_loop:
        w = closed_loop_warmup(unloaded, w, held)
    return SteadyPlan(
        unloaded_e2e_s=unloaded, warmup_s=w, duration_s=d, cooldown_s=min(2.0 * unloaded, d / 4)
    )
