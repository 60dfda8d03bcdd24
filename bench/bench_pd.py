"""Prefill/decode disaggregation in the digital twin: the same replicas aggregated or split into
prefill and decode pods, on a long-prompt workload and on short chat.

Pools (4 replicas of the default H100 profile by default):

* ``aggregated``: every replica does both; one profile (prefix-cache-scorer 2, queue-scorer 1);
* ``pd-2p2d``: 2 replicas ``llm-d.ai/role: prefill``, 2 ``decode``; ``disagg-profile-handler`` with
  ``prefix-based-pd-decider`` (``nonCachedTokens`` ``--threshold``), the same scorers per profile;
* ``pd-both``: 4 replicas labelled ``both`` with the same handler, so a request disaggregates only
  when the decider says so and otherwise stays on one replica.

Each point replays ``--duration`` virtual seconds of Poisson arrivals at each QPS (the first 20 %
left out) and reports p90 TTFT, p90 TPOT, whether the SLO (p90 TTFT < 1 s, p90 TPOT < 50 ms, 99 %
served) holds and the share of requests disaggregated:

    .venv/bin/python bench/bench_pd.py --workloads prefill-decode-mix,bursty-chat --qps 4,8,12

``--slo-rate`` instead bisects each pool's SLO rate at steady state (the ``infergate bench --twin
--slo-rate`` machinery: a measured window after a warm-up, the workload's own arrival process) and
prints it with the probes and the CPU time the search took.
"""

from __future__ import annotations

import argparse
import functools
import random
import sys
import time
from collections.abc import Sequence

from infergate.bench.stats import Slo, summarise
from infergate.bench.steady import PointResult, SteadyRunner, plan_for, resolve_pool, unloaded_e2e
from infergate.bench.strategies import PD_AGGREGATED, pd_picker_config
from infergate.bench.twin import TwinConfig, run_twin
from infergate.bench.workloads import generate, load_workload
from infergate.config.picker import EndpointPickerConfig, parse_picker_config


def pools(replicas: int, threshold: int) -> dict[str, tuple[EndpointPickerConfig, tuple[str, ...]]]:
    half = replicas // 2
    disagg = pd_picker_config(threshold)
    return {
        "aggregated": (parse_picker_config(PD_AGGREGATED), ()),
        f"pd-{half}p{replicas - half}d": (disagg, ("prefill",) * half + ("decode",) * (replicas - half)),
        "pd-both": (disagg, ("both",) * replicas),
    }


def run(workload: str, qps_list: Sequence[float], duration: float, replicas: int, threshold: int) -> None:
    spec = load_workload(workload)
    stream = generate(spec)
    print(f"\n### {workload} ({replicas} replicas, nonCachedTokens {threshold}, {duration:g} s per point)\n")
    print("| pool | QPS | p90 TTFT (s) | p90 TPOT (ms) | SLO | disaggregated | served |")
    print("|---|---|---|---|---|---|---|")
    for qps in qps_list:
        rng = random.Random(int(qps * 1000))
        offsets: list[float] = []
        t = 0.0
        while True:
            t += rng.expovariate(qps)
            if t >= duration or len(offsets) >= len(stream):
                break
            offsets.append(t)
        requests = stream[: len(offsets)]
        for name, (picker, roles) in pools(replicas, threshold).items():
            cfg = TwinConfig(replicas=replicas, adapters=(), roles=roles, seed=1)
            result = run_twin(requests, offsets, strategy="prefix-only", config=cfg, picker=picker)
            measured = [r for r, off in zip(result.records, offsets, strict=True) if off >= 0.2 * duration]
            s = summarise(measured, Slo())
            share = result.disaggregated / len(requests)
            print(
                f"| {name} | {qps:g} | {s.ttft_p90:.3f} | {s.tpot_p90 * 1000:.1f} | "
                f"{'yes' if s.meets_slo else 'no'} | {share:.0%} | {s.succeeded}/{s.requests} |"
            )


def _log_point(label: str, point: PointResult) -> None:
    """Every load point the search runs, on stderr, as the evidence behind the rate."""
    print(f"  {label} @ {point.describe()}", file=sys.stderr, flush=True)


def slo_rates(
    workload: str,
    replicas: int,
    threshold: int,
    tolerance: float,
    duration: float | None,
    only: list[str],
    flow_control: bool = False,
) -> None:
    """Each pool's SLO rate on ``workload`` (steady state, bisected to ``tolerance``)."""
    spec = load_workload(workload)
    shape = resolve_pool(spec, replicas=replicas, adapters=())
    plan = plan_for(unloaded_e2e(spec, shape), duration=duration) if duration else None
    window = f", {duration:g} s measured per point" if duration else ""
    print(f"\n### {workload}: SLO rate ({shape.describe()}, nonCachedTokens {threshold}{window})\n")
    print("| pool | SLO rate (QPS) | first failing (QPS) | probes | CPU (s) |")
    print("|---|---|---|---|---|")
    for name, (picker, roles) in pools(replicas, threshold).items():
        if only and name not in only:
            continue
        cpu0 = time.process_time()
        runner = SteadyRunner(spec, shape, seed=1, plan=plan, picker=picker, pool_overrides={"roles": roles})
        runner.on_point = functools.partial(_log_point, name)
        rate = runner.slo_rate("prefix-only+fc" if flow_control else "prefix-only", tolerance=tolerance)
        failing = f"{rate.failing:.2f}" if rate.failing is not None else "none"
        print(
            f"| {name} | **{rate.qps:.2f}** | {failing} | {len(rate.probes)} | "
            f"{time.process_time() - cpu0:.0f} |",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="prefill-decode-mix,bursty-chat")
    p.add_argument("--qps", default="4,8,12")
    p.add_argument("--duration", type=float, default=120.0)
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--threshold", type=int, default=1024)
    p.add_argument("--slo-rate", action="store_true", help="bisect each pool's SLO rate at steady state")
    p.add_argument("--tolerance", type=float, default=0.05, help="relative precision of --slo-rate")
    p.add_argument("--window", type=float, default=None, help="--slo-rate: measured seconds per point")
    p.add_argument("--pools", default="", help="--slo-rate: only these pools (comma-separated)")
    p.add_argument(
        "--flow-control",
        action="store_true",
        help="--slo-rate: the gateway's flow control on (the twin's default is off)",
    )
    a = p.parse_args()
    for w in a.workloads.split(","):
        if a.slo_rate:
            only = [x for x in a.pools.split(",") if x]
            slo_rates(w, a.replicas, a.threshold, a.tolerance, a.window, only, a.flow_control)
            continue
        run(w, [float(q) for q in a.qps.split(",")], a.duration, a.replicas, a.threshold)


if __name__ == "__main__":
    main()
