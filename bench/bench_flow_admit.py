"""What flow control's admission costs when the pool has room, in one process, load-insensitive.

``--clients`` tasks loop like the data plane's handlers against one simulated replica: admit,
count the request in flight (what the Director does after scheduling), hold it for a few event-loop
turns, release it, "think" a few turns, and go again. A scrape every ``--scrape-every``
completions reports the replica's waiting queue (requests beyond its batch of ``--batch``). The
figures: the fraction of requests that went through the queue (``admit`` returned True), their
mean wall-clock wait in it (event-loop turns, so machine load scales it) and the process CPU per
request (``time.process_time``), with flow control on and off.

    .venv/bin/python bench/bench_flow_admit.py [--requests 20000] [--clients 32]

Run it once per source tree (``PYTHONPATH=DIR`` for another copy of the package) to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from infergate.datastore.store import Datastore
from infergate.flowcontrol import FlowControlConfig, FlowController, SaturationDetector
from infergate.types import EndpointMeta, EndpointMetrics, InferenceRequest, PoolSpec

META = EndpointMeta(name="replica", address="127.0.0.1", port=8000)


async def run(requests: int, clients: int, batch: int, scrape_every: int, enabled: bool) -> dict[str, float]:
    ds = Datastore(staleness=60.0)
    ds.set_pool(PoolSpec(name="bench"))
    ds.upsert_endpoint(META)
    key = META.key
    clock = time.monotonic
    ds.update_metrics(key, EndpointMetrics(updated_at=clock()))
    fc = FlowController(ds, detector=SaturationDetector(), config=FlowControlConfig(enabled=enabled))
    rng = random.Random(7)
    left, done, queued = requests, 0, 0
    waits: list[float] = []

    async def client(n: int) -> None:
        nonlocal left, done, queued
        while left > 0:
            left -= 1
            request = InferenceRequest(request_id=f"{n}-{left}", model="m", target_model="m")
            t0 = time.perf_counter()
            if await fc.admit(request):
                queued += 1
                waits.append(time.perf_counter() - t0)
            ds.acquire(key)
            for _ in range(rng.randint(2, 6)):  # upstream round trip
                await asyncio.sleep(0)
            ds.release(key)
            done += 1
            if done % scrape_every == 0:
                in_flight = ds.endpoint(key).in_flight  # type: ignore[union-attr]
                ds.update_metrics(
                    key, EndpointMetrics(waiting_queue_size=max(0, in_flight - batch), updated_at=clock())
                )
            for _ in range(rng.randint(0, 6)):  # client turnaround
                await asyncio.sleep(0)

    cpu0 = time.process_time()
    await asyncio.gather(*(client(i) for i in range(clients)))
    cpu = time.process_time() - cpu0
    fc.close()
    mean_wait = sum(waits) / len(waits) if waits else 0.0
    return {
        "queued_fraction": queued / requests,
        "cpu_us_per_req": 1e6 * cpu / requests,
        "wait_per_req_us": 1e6 * sum(waits) / requests,
        "mean_wait_us": 1e6 * mean_wait,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--batch", type=int, default=256, help="the replica's running batch (default 256)")
    ap.add_argument("--scrape-every", type=int, default=20, help="completions between scrapes")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    for rep in range(args.reps):
        for enabled in (True, False):
            r = asyncio.run(run(args.requests, args.clients, args.batch, args.scrape_every, enabled))
            print(
                f"rep {rep} flow control {'on ' if enabled else 'off'}: "
                f"queued {100 * r['queued_fraction']:5.1f} %"
                f" (mean wait {r['mean_wait_us']:6.0f} us, {r['wait_per_req_us']:5.1f} us per request)"
                f"  cpu {r['cpu_us_per_req']:6.1f} us/request",
                flush=True,
            )


if __name__ == "__main__":
    main()
