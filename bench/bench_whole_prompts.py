"""Which workloads send prompts the prefix index would find held whole.

``predicted-latency-scorer`` charges a copy of a prompt some candidate holds whole
(``latency_prefix.charge_copies``); only requests whose every prompt block an earlier request
already sent can meet that charge. This counts them per workload, over the request stream the twin
sends (the gateway's parse of each body, the scorer's block hashes), without running the twin:
a workload where none are found routes exactly as without the charge.

    .venv/bin/python bench/bench_whole_prompts.py [WORKLOAD ...]   # default: corpus + held-out
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from infergate.bench.workloads import builtin_workloads, load_workload, stream
from infergate.requestcontrol.parsing import parse_body
from infergate.scheduling.plugins.latency import LatencyParams
from infergate.scheduling.plugins.prefix import AVERAGE_CHARS_PER_TOKEN, block_hashes

HOLDOUT = Path(__file__).parent / "holdout"


def whole_share(source: str | Path, requests: int, block_tokens: int) -> float:
    """The share of ``requests`` of the workload whose prompt blocks were all sent before."""
    spec = load_workload(source)
    params = LatencyParams()
    seen: set[int] = set()
    whole = 0
    batch = stream(spec, requests, seed=1)
    for r in batch:
        prompt = parse_body(r.path, json.dumps(r.body()).encode()).prompt
        hashes = block_hashes(
            prompt, r.model, block_tokens * AVERAGE_CHARS_PER_TOKEN, params.max_prefix_blocks_to_match
        )
        if hashes and hashes[-1] in seen:  # chained: the last hash names every block before it
            whole += 1
        seen.update(hashes)
    return whole / len(batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workloads", nargs="*", help="names or files (default: corpus and held-out)")
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--block-tokens", type=int, default=16, help="the engine's KV block size")
    args = ap.parse_args()
    sources = args.workloads or [*sorted(builtin_workloads()), *sorted(map(str, HOLDOUT.glob("*.yaml")))]
    rows = [(whole_share(s, args.requests, args.block_tokens), s) for s in sources]
    for share, source in sorted(rows, reverse=True):
        print(f"{share * 100:6.2f} %  {Path(source).stem}")


if __name__ == "__main__":
    main()
