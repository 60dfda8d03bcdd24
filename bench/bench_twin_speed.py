"""How fast the digital twin simulates: requests per CPU-minute on the tutorial pool.

Replays the two headline workloads (tutorial-mix at 15 QPS, multi-tenant-chat at 37 QPS: about
80 % of round-robin's capacity on the 3-replica simulated H100 pool) through each strategy and
divides the simulated requests by the process CPU time (``time.process_time``), so the figure does
not depend on what else the machine is doing. Workload generation is outside the timed region.

    .venv/bin/python bench/bench_twin_speed.py                 # all strategies, both workloads
    .venv/bin/python bench/bench_twin_speed.py --profile       # plus a cProfile of the slowest
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from infergate.bench.loadgen import arrival_offsets
from infergate.bench.strategies import strategy_names
from infergate.bench.twin import run_twin
from infergate.bench.workloads import MixWorkload, SharedPrefixWorkload, generate, load_workload

WORKLOADS = {"tutorial-mix": 15.0, "multi-tenant-chat": 37.0}
SCALE = {"multi-tenant-chat": {"sessions": 700}, "tutorial-mix": {"requests": 2000}}


def requests_of(name: str) -> list:  # type: ignore[type-arg]
    """The built-in workload scaled like ``bench_twin_compare.py`` (steady state at 80 % load)."""
    spec = load_workload(name)
    body = spec.workload
    if isinstance(body, SharedPrefixWorkload | MixWorkload) and name in SCALE:
        body = body.model_copy(update=SCALE[name])
    return generate(spec.model_copy(update={"workload": body}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--strategies", default=",".join(strategy_names(twin=True)))
    p.add_argument("--profile", action="store_true", help="cProfile one multi-tenant-chat run")
    args = p.parse_args()
    total_n = 0
    total_cpu = 0.0
    for name in args.workloads.split(","):
        requests = requests_of(name)
        offsets = arrival_offsets(requests, WORKLOADS[name], seed=0)
        wl_n, wl_cpu = 0, 0.0
        for strategy in args.strategies.split(","):
            start = time.process_time()
            run_twin(requests, offsets, strategy=strategy)
            cpu = time.process_time() - start
            wl_n += len(requests)
            wl_cpu += cpu
            print(f"  {name} {strategy}: {len(requests)} requests in {cpu:.2f} CPU-s", flush=True)
        print(
            f"{name} @ {WORKLOADS[name]} QPS: {wl_n / wl_cpu * 60:,.0f} simulated requests per CPU-minute",
            flush=True,
        )
        total_n += wl_n
        total_cpu += wl_cpu
    rate = total_n / total_cpu * 60
    print(f"overall: {total_n} requests in {total_cpu:.1f} CPU-s = {rate:,.0f} per CPU-minute")
    if args.profile:
        requests = requests_of("multi-tenant-chat")
        offsets = arrival_offsets(requests, WORKLOADS["multi-tenant-chat"], seed=0)
        prof = cProfile.Profile()
        prof.runcall(run_twin, requests, offsets, strategy="default")
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
