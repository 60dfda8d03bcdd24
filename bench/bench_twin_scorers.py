"""SLO rates of the prefix and LoRA scorers in the digital twin, on the three workloads where the
reference formulas herd or pack (issue 11): long-context RAG, multi-tenant chat and multi-LoRA Zipf.

Each workload runs with its own pool (replicas, adapters, slots) and arrival process; every point
runs for ``--duration`` seconds of simulated time (as many requests as the rate needs, the first
``--warmup`` share of the run left out of the statistics), except multi-tenant chat, whose 700
sessions are a fixed stream. The SLO rate is the highest rate with p90 TTFT < 1 s, p90 TPOT < 50 ms
and >= 99 % success, bisected to ``--tolerance``. ``--reference`` runs every strategy with the
reference EPP's formulas (``loadAware: false`` on both scorers); ``--params`` sets scorer
parameters for every strategy that has the scorer. Before/after, on the same request streams:

    .venv/bin/python bench/bench_twin_scorers.py --workloads rag,lora-zipf,multi-tenant-chat \
        --strategies prefix-only,lora-only,gie-default --reference --out bench-results/scorers-ref
    .venv/bin/python bench/bench_twin_scorers.py --workloads rag,lora-zipf,multi-tenant-chat \
        --strategies prefix-only,lora-only,gie-default --out bench-results/scorers-load-aware \
        --params '{"prefix-cache-scorer": {"loadAware": true}, "lora-affinity-scorer": {"loadAware": true}}'

(``gie-default`` carries ``loadAware: false``, hence ``--params`` for its load-aware run.)
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infergate.bench.loadgen import RequestRecord
from infergate.bench.stats import Slo, find_slo_rate, summarise
from infergate.bench.strategies import picker_config
from infergate.bench.twin import TwinConfig, run_twin
from infergate.bench.workloads import (
    BenchRequest,
    LengthDist,
    MixWorkload,
    ModelShare,
    SharedPrefixWorkload,
    WorkloadSpec,
    generate,
    load_workload,
)
from infergate.config.picker import EndpointPickerConfig, PluginSpec

ZIPF_ADAPTERS = tuple(f"adapter-{i}" for i in range(8))

REFERENCE = {
    "prefix-cache-scorer": {"loadAware": False},
    "lora-affinity-scorer": {"loadAware": False},
}


@dataclass(frozen=True, slots=True)
class Case:
    """One workload with its pool and arrival process."""

    name: str
    twin: TwinConfig
    make: Callable[[int], list[BenchRequest]]  # requests for a run of n requests
    arrival_shape: float | None  # gamma shape (CV = 1/sqrt(shape)); None = Poisson
    fixed: bool  # a fixed request stream (sessions) rather than one sized to the duration
    start: float


def _rag(n: int) -> list[BenchRequest]:
    spec = WorkloadSpec(
        name="rag",
        seed=3,
        workload=SharedPrefixWorkload(
            type="shared_prefix",
            tenants=1,
            system_prompt_tokens=1000,
            question=LengthDist(kind="lognormal", mean=8000, sigma=0.2, min=4000, max=12000),
            answer=LengthDist(kind="lognormal", mean=200, sigma=0.4, min=20, max=800),
            turns=1,
            sessions=n,
        ),
    )
    return generate(spec)


def _zipf(n: int) -> list[BenchRequest]:
    spec = WorkloadSpec(
        name="lora-zipf",
        seed=5,
        workload=MixWorkload(
            type="mix",
            requests=n,
            prompt=LengthDist(kind="lognormal", mean=600, sigma=0.5, min=16, max=4000),
            answer=LengthDist(kind="lognormal", mean=200, sigma=0.4, min=16, max=800),
            models=tuple(ModelShare(name=a, weight=1.0 / (i + 1)) for i, a in enumerate(ZIPF_ADAPTERS)),
        ),
    )
    return generate(spec)


def _tenants(n: int) -> list[BenchRequest]:
    spec = load_workload("multi-tenant-chat")
    body = spec.workload
    assert isinstance(body, SharedPrefixWorkload)
    return generate(spec.model_copy(update={"workload": body.model_copy(update={"sessions": 700})}))


CASES = {
    "rag": Case("rag", TwinConfig(replicas=4, adapters=()), _rag, 0.25, False, 4.0),
    "lora-zipf": Case(
        "lora-zipf", TwinConfig(replicas=4, adapters=ZIPF_ADAPTERS, max_loras=2), _zipf, None, False, 8.0
    ),
    "multi-tenant-chat": Case("multi-tenant-chat", TwinConfig(), _tenants, None, True, 10.0),
}


def offsets(n: int, qps: float, shape: float | None, seed: int) -> list[float]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(qps) if shape is None else rng.gammavariate(shape, 1.0 / (shape * qps))
        out.append(t)
    return out


def with_params(cfg: EndpointPickerConfig, overrides: dict[str, dict[str, Any]]) -> EndpointPickerConfig:
    plugins = [
        PluginSpec(type=p.type, name=p.name, parameters={**p.parameters, **overrides.get(p.type, {})})
        for p in cfg.plugins
    ]
    return cfg.model_copy(update={"plugins": plugins})


class Runner:
    def __init__(self, case: Case, strategy: str, overrides: dict[str, dict[str, Any]], args: Any) -> None:
        self.case, self.strategy, self.args = case, strategy, args
        self.picker = with_params(picker_config(strategy), overrides)
        self.fixed = case.make(0) if case.fixed else None
        self.log: list[dict[str, Any]] = []

    def run(self, qps: float) -> bool:
        a = self.args
        if self.fixed is not None:
            requests = self.fixed
        else:
            requests = self.case.make(max(a.min_requests, math.ceil(qps * a.duration)))
        offs = offsets(len(requests), qps, self.case.arrival_shape, seed=a.seed)
        t0 = time.process_time()
        out = run_twin(requests, offs, strategy=self.strategy, config=self.case.twin, picker=self.picker)
        horizon = offs[-1]
        kept: list[RequestRecord] = [r for r in out.records if r.sent_at >= a.warmup * horizon]
        s = summarise(kept, Slo())
        self.log.append(
            {
                "qps": qps,
                "met": s.meets_slo,
                "requests": len(requests),
                "simulated_s": horizon,
                "ttft_p90": s.ttft_p90,
                "tpot_p90": s.tpot_p90,
                "success": s.succeeded / max(1, s.requests),
                "prefix_hit_rate": out.prefix_hit_rate,
                "lora_swaps": out.lora_swaps,
                "per_endpoint": out.per_endpoint_requests,
                "cpu_s": time.process_time() - t0,
            }
        )
        print(
            f"    {self.case.name}/{self.strategy} {qps:.2f} QPS: {'met' if s.meets_slo else 'MISS'} "
            f"TTFT p90 {s.ttft_p90:.3f}s TPOT p90 {s.tpot_p90 * 1000:.1f}ms "
            f"hit {out.prefix_hit_rate or 0:.2f} "
            f"swaps {out.lora_swaps} split {sorted(out.per_endpoint_requests.values())} "
            f"({len(requests)} req, {horizon:.0f}s sim, {self.log[-1]['cpu_s']:.0f} CPU-s)",
            flush=True,
        )
        return s.meets_slo


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workloads", default="rag,lora-zipf,multi-tenant-chat")
    p.add_argument("--strategies", default="prefix-only,lora-only,default")
    p.add_argument("--reference", action="store_true", help="the reference EPP's prefix and LoRA formulas")
    p.add_argument("--params", default="", help='JSON {"plugin-type": {param: value}} for every strategy')
    p.add_argument("--duration", type=float, default=60.0, help="simulated seconds per point")
    p.add_argument("--min-requests", type=int, default=200)
    p.add_argument("--warmup", type=float, default=0.1, help="share of the run left out of the statistics")
    p.add_argument("--tolerance", type=float, default=0.03)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    overrides: dict[str, dict[str, Any]] = dict(REFERENCE) if args.reference else {}
    for k, v in (json.loads(args.params) if args.params else {}).items():
        overrides[k] = {**overrides.get(k, {}), **v}
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for wl in args.workloads.split(","):
        case = CASES[wl]
        results[wl] = {}
        for st in args.strategies.split(","):
            runner = Runner(case, st, overrides, args)
            rate = find_slo_rate(runner.run, start=case.start, tolerance=args.tolerance)
            print(f"  {wl}/{st}: SLO rate {rate.qps:.2f} QPS (first miss {rate.failing})", flush=True)
            results[wl][st] = {"slo_rate_qps": rate.qps, "failing": rate.failing, "points": runner.log}
            (args.out / "results.json").write_text(
                json.dumps({"overrides": overrides, "results": results}, indent=1) + "\n"
            )
    for wl, by in results.items():
        print(wl, {st: round(r["slo_rate_qps"], 2) for st, r in by.items()})


if __name__ == "__main__":
    main()
