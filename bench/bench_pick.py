"""Cost of one scheduling cycle with the default profile, for 10 / 100 / 1000 endpoints.

Synthetic metrics (random queue, KV, adapters), prompts of ~2,000 characters from a few shared
prefixes, the reference default profile plus LoRA affinity. Prints p50/p99 per pick in µs.

    .venv/bin/python bench/bench_pick.py [--picks N] [--sizes 10,100,1000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from infergate.config.picker import default_picker_config
from infergate.scheduling import build_scheduler
from infergate.scheduling.testing import make_endpoint
from infergate.types import Endpoint, InferenceRequest

ADAPTERS = ["food-review", "cad-fabricator", "sql-lora", "chat-lora"]


def endpoints(n: int, rng: random.Random) -> list[Endpoint]:
    return [
        make_endpoint(
            f"pod-{i}",
            address=f"10.{i // 250}.{i % 250}.1",
            waiting_queue_size=rng.randint(0, 20),
            running_requests=rng.randint(0, 64),
            kv_cache_usage=rng.random(),
            running_adapters=frozenset(rng.sample(ADAPTERS, 2)),
            max_active_adapters=2,
            in_flight=rng.randint(0, 10),
        )
        for i in range(n)
    ]


def requests(count: int, rng: random.Random) -> list[InferenceRequest]:
    prefixes = ["".join(rng.choice("abcdefghij ") for _ in range(1500)) for _ in range(16)]
    out = []
    for i in range(count):
        model = rng.choice([*ADAPTERS, "meta-llama/Llama-3.1-8B-Instruct"])
        prompt = rng.choice(prefixes) + f" question {i} " + "x" * rng.randint(0, 500)
        out.append(InferenceRequest(request_id=str(i), model=model, target_model=model, prompt=prompt))
    return out


def run(n: int, picks: int) -> tuple[float, float, float]:
    rng = random.Random(n)
    sched = build_scheduler(default_picker_config(lora=True), rng=random.Random(0))
    cands = endpoints(n, rng)
    reqs = requests(picks, rng)
    for r in reqs[: min(200, picks)]:  # warm the prefix index
        sched.schedule(r, cands)
    times = []
    for r in reqs:
        t0 = time.perf_counter()
        sched.schedule(r, cands)
        times.append(time.perf_counter() - t0)
    times.sort()
    p50 = statistics.median(times)
    p99 = times[int(len(times) * 0.99) - 1]
    return p50 * 1e6, p99 * 1e6, 1.0 / statistics.fmean(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--picks", type=int, default=2000)
    ap.add_argument("--sizes", default="10,100,1000")
    args = ap.parse_args()
    print(f"{'endpoints':>9} {'p50 µs':>9} {'p99 µs':>9} {'picks/s':>9}")
    for n in (int(s) for s in args.sizes.split(",")):
        p50, p99, rate = run(n, args.picks)
        print(f"{n:>9} {p50:>9.1f} {p99:>9.1f} {rate:>9.0f}")


if __name__ == "__main__":
    main()
