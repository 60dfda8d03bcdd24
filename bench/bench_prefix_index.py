"""What the approximate prefix path costs per request, piece by piece, for one prompt length.

Every request to a prefix-aware scorer hashes its prompt's blocks, matches the hashes against the
index and, once picked, credits its endpoint with them; the body is parsed before all of it. This
times each piece on the same English-like prompt ``bench_proxy_hotpath.py --prompt-chars`` sends,
with the index holding the whole prompt on ``--holders`` servers (the common case of a shared
prefix on several replicas):

    PYTHONPATH=src .venv/bin/python bench/bench_prefix_index.py [--chars 16000] [--holders 1,4,16]

``--memory`` instead fills an index as a busy pool would (``--holders`` servers, each crediting
31,250 blocks, the default capacity: a quarter of them a prefix every server holds, the rest its
own) and prints the bytes it holds per entry, from ``tracemalloc``.

``--only PIECE --calls N`` runs one piece N times and prints nothing, for an instruction count
that start-up cancels out of (run it with N and 3N under callgrind and divide the difference by
2N)::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python \\
        bench/bench_prefix_index.py --only match --calls 200
"""

from __future__ import annotations

import argparse
import json
import timeit
import tracemalloc
from collections.abc import Callable
from itertools import count

from infergate.bench.workloads import filler_text
from infergate.requestcontrol.parsing import parse_body
from infergate.scheduling.plugins.prefix import AVERAGE_CHARS_PER_TOKEN, PrefixIndex, block_hashes

BLOCK_CHARS = 16 * AVERAGE_CHARS_PER_TOKEN
"""The scorers' default block: 16 tokens of 4 bytes."""


def pieces(chars: int, holders: int) -> dict[str, Callable[[], object]]:
    """Each piece as a call on a prompt of ``chars`` characters held by ``holders`` servers."""
    prompt = filler_text(chars)
    body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": 1}).encode()
    hashes = block_hashes(prompt, "m", BLOCK_CHARS, 2048)
    index = PrefixIndex()
    for s in range(holders):
        index.add(f"s{s}", hashes, 31_250)

    # blocks no server holds, credited to an index at capacity, so each evicts the oldest: the
    # steady state of a busy gateway
    full = PrefixIndex()
    full.add("s0", range(-31_250, 0), 31_250)
    fresh = count(0, len(hashes))

    def credit_new() -> None:
        start = next(fresh)
        full.add("s0", range(start, start + len(hashes)), 31_250)

    return {
        "parse": lambda: parse_body("/v1/completions", body),
        "hash": lambda: block_hashes(prompt, "m", BLOCK_CHARS, 2048),
        "match": lambda: index.match(hashes),
        "credit-held": lambda: index.add("s0", hashes, 31_250),
        "credit-new": credit_new,
    }


def index_memory(servers: int, per_server: int = 31_250) -> tuple[int, int]:
    """Bytes a full index holds and its (server, block) entries, for ``servers`` servers."""
    shared = [hash(("shared", i)) for i in range(per_server // 4)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index = PrefixIndex()
    for s in range(servers):
        own = [hash((s, i)) for i in range(per_server - len(shared))]
        for start in range(0, len(shared), 50):  # prompts of 50 blocks, as requests credit them
            index.add(f"s{s}", shared[start : start + 50], per_server)
        for start in range(0, len(own), 50):
            index.add(f"s{s}", own[start : start + 50], per_server)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held, len(index)


PIECES = ("parse", "hash", "match", "credit-held", "credit-new")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked: bad values, and options ``--memory`` would ignore, are errors that
    name the option."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chars", type=int, help="prompt length (default 16000)")
    ap.add_argument("--holders", default="1,4,16", help="servers holding the prompt, comma-separated")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--memory", action="store_true", help="bytes per entry of a full index instead")
    mode.add_argument("--only", choices=PIECES, help="run this piece only, --calls times, silently")
    ap.add_argument("--calls", type=int, help="with --only (default 200)")
    args = ap.parse_args(argv)
    try:
        args.holders = [int(h) for h in args.holders.split(",") if h.strip()]
    except ValueError:
        ap.error(f"--holders must be whole numbers separated by commas, not {args.holders!r}")
    if not args.holders or min(args.holders) < 1:
        ap.error(f"--holders must be 1 or more servers each, not {args.holders}")
    if args.memory and (args.chars is not None or args.calls is not None):
        ap.error("--memory fills a whole index: --chars and --calls do not apply to it")
    if args.calls is not None and args.only is None:
        ap.error("--calls applies to --only")
    args.chars = 16_000 if args.chars is None else args.chars
    args.calls = 200 if args.calls is None else args.calls
    if args.chars < 1:
        ap.error(f"--chars must be at least 1, not {args.chars}")
    if args.calls < 1:
        ap.error(f"--calls must be at least 1, not {args.calls}")
    return args


def main() -> None:
    args = parse_args()
    if args.memory:
        for servers in args.holders:
            held, entries = index_memory(servers)
            mib, each = held / 2**20, held / entries
            print(f"{servers:>3} servers: {entries:,} entries, {mib:,.1f} MiB, {each:,.0f} B each")
        return
    if args.only is not None:
        run = pieces(args.chars, args.holders[0])[args.only]
        for _ in range(args.calls):
            run()
        return
    print(f"{args.chars:,} characters, {args.chars // BLOCK_CHARS} blocks; µs per call, best of 5")
    for holders in args.holders:
        cells = []
        for name, run in pieces(args.chars, holders).items():
            number = max(10, 200_000 // max(1, args.chars // 10))
            best = min(timeit.repeat(run, number=number, repeat=5)) / number
            cells.append(f"{name} {best * 1e6:8.2f}")
        print(f"held by {holders:>3}: " + "  ".join(cells))


if __name__ == "__main__":
    main()
