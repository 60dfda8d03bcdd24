"""What arming and cancelling one loop timer costs on uvloop, with the loop turning between.

The built-in proxy used to arm two timers per proxied request and cancel both (the server's
keep-alive idle limit, the upstream client's read limit); both now outlive the requests
(``net/deadline.py``: one timer per connection, moved with each deadline). This is
the figure behind that change: the loop turns once per round (``asyncio.sleep(0)``) with and
without a timer armed and cancelled in it, and the difference is the timer's. Arming many timers
without letting the loop run costs about twice as much (cancelled handles pile up until it runs),
so that is not measured.

    .venv/bin/python bench/bench_loop_timers.py [--rounds 200000] [--reps 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvloop


async def rounds(n: int, *, timer: bool) -> float:
    """Seconds for ``n`` loop turns, each arming and cancelling one timer when ``timer``."""
    loop = asyncio.get_running_loop()

    def never() -> None:
        raise AssertionError("the timer was cancelled")

    t0 = time.perf_counter()
    if timer:
        for _ in range(n):
            loop.call_at(loop.time() + 600.0, never).cancel()
            await asyncio.sleep(0)
    else:
        for _ in range(n):
            await asyncio.sleep(0)
    return time.perf_counter() - t0


async def measure(args: argparse.Namespace) -> list[float]:
    costs = []
    for _ in range(args.reps):
        bare = await rounds(args.rounds, timer=False)
        timed = await rounds(args.rounds, timer=True)
        costs.append(1e9 * (timed - bare) / args.rounds)
    return costs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    costs = uvloop.run(measure(args))
    print("one timer armed and cancelled: " + ", ".join(f"{c:,.0f}" for c in costs) + " ns")
    print(f"least: {min(costs):,.0f} ns")


if __name__ == "__main__":
    main()
