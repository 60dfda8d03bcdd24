"""Cost of one scheduling cycle with the default profile, for 10 / 100 / 1000 endpoints.

Synthetic metrics (random queue, KV, adapters), prompts of ~2,000 characters from a few shared
prefixes, the reference default profile plus LoRA affinity. Prints p50/p99/max per pick in µs and
the garbage collections (all generations / generation 2) that ran during the timed picks, so a
p99 spike can be told apart from a GC pause. ``--gateway`` wires the scheduler as the gateway
does (Prometheus plugin timers, attempts counter, decision log) instead of bare.

    .venv/bin/python bench/bench_pick.py [--picks N] [--sizes 10,100,1000] [--gateway]
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time

from infergate.config.picker import default_picker_config
from infergate.scheduling import build_scheduler
from infergate.scheduling.engine.decisions import DecisionLog
from infergate.scheduling.sdk.testing import make_endpoint
from infergate.telemetry import GatewayMetrics
from infergate.types import Endpoint, InferenceRequest

ADAPTERS = ["food-review", "cad-fabricator", "sql-lora", "chat-lora"]


def endpoints(n: int, rng: random.Random) -> list[Endpoint]:
    """``n`` endpoints under load: queues, KV use, adapters, requests in flight (some of them
    streaming, which the latency scorer's stall charge prices)."""
    out = []
    for i in range(n):
        in_flight = rng.randint(0, 10)
        e = make_endpoint(
            f"pod-{i}",
            address=f"10.{i // 250}.{i % 250}.1",
            waiting_queue_size=rng.randint(0, 20),
            running_requests=rng.randint(0, 64),
            kv_cache_usage=rng.random(),
            running_adapters=frozenset(rng.sample(ADAPTERS, 2)),
            max_active_adapters=2,
            in_flight=in_flight,
        )
        out.append(e.with_load(in_flight, 0, rng.randint(0, in_flight)))
    return out


def requests(count: int, rng: random.Random) -> list[InferenceRequest]:
    prefixes = ["".join(rng.choice("abcdefghij ") for _ in range(1500)) for _ in range(16)]
    out = []
    for i in range(count):
        model = rng.choice([*ADAPTERS, "meta-llama/Llama-3.1-8B-Instruct"])
        prompt = rng.choice(prefixes) + f" question {i} " + "x" * rng.randint(0, 500)
        out.append(InferenceRequest(request_id=str(i), model=model, target_model=model, prompt=prompt))
    return out


def run(n: int, picks: int, *, gateway: bool = False) -> tuple[float, float, float, float, int, int]:
    """p50, p99 and max in µs, picks per second, GC runs (all, generation 2) while timing."""
    rng = random.Random(n)
    sched = build_scheduler(
        default_picker_config(lora=True),
        rng=random.Random(0),
        metrics=GatewayMetrics() if gateway else None,
        decision_log=DecisionLog() if gateway else None,
    )
    cands = endpoints(n, rng)
    reqs = requests(picks, rng)
    for r in reqs[: min(200, picks)]:  # warm the prefix index
        sched.schedule(r, cands)
    before = gc.get_stats()
    times = []
    for r in reqs:
        t0 = time.perf_counter()
        sched.schedule(r, cands)
        times.append(time.perf_counter() - t0)
    after = gc.get_stats()
    runs = [a["collections"] - b["collections"] for a, b in zip(after, before, strict=True)]
    times.sort()
    p50 = statistics.median(times)
    p99 = times[int(len(times) * 0.99) - 1]
    return p50 * 1e6, p99 * 1e6, times[-1] * 1e6, 1.0 / statistics.fmean(times), sum(runs), runs[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--picks", type=int, default=2000)
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--gateway", action="store_true", help="with metrics and decision log, as served")
    args = ap.parse_args()
    print(f"{'endpoints':>9} {'p50 µs':>9} {'p99 µs':>9} {'max µs':>9} {'picks/s':>9} {'gc':>5} {'gc2':>4}")
    for n in (int(s) for s in args.sizes.split(",")):
        p50, p99, worst, rate, gcs, gc2 = run(n, args.picks, gateway=args.gateway)
        print(f"{n:>9} {p50:>9.1f} {p99:>9.1f} {worst:>9.1f} {rate:>9.0f} {gcs:>5} {gc2:>4}", flush=True)


if __name__ == "__main__":
    main()
