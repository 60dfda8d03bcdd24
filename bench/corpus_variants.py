"""Copies of the corpus workloads on other pools, to run with ``bench_regret.py --workloads``.

The corpus was tuned on one pool size per workload; a default that only fits those pools could
lose on others, or when the pool changes under it. This script writes each corpus workload (or
those named) again with its pool changed, named ``<workload>-<suffix>``:

* ``--resize F``: ``F`` times the replicas (at least one), e.g. 0.5 and 2
  (docs/benchmarks.md, "The corpus on half and double the pool");
* ``--scale-up``: half as many replicas again (rounded up) join at 30 % of the measured window,
  and the rate steps up in proportion just before (from 22 % to 33 % of the window), so each
  replica carries the same load before and after the join: what routing does with fresh
  replicas an autoscaler adds under a rising rate (docs/benchmarks.md, "Replicas joining and
  leaving"). A workload with a rate profile of its own keeps it.

    .venv/bin/python bench/corpus_variants.py --scale-up --out /tmp/scaleup
    .venv/bin/python bench/bench_regret.py --quick --duration 15 --jobs 2 \\
        --workloads "$(ls /tmp/scaleup/*.yaml | paste -sd,)" --strategies default,round-robin
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from infergate.bench.steady import resolve_pool
from infergate.bench.workloads import WorkloadSpec, builtin_workloads, load_workload

SCALE_UP_AT = 0.3
"""When the joiners arrive, as a fraction of the measured window."""
RATE_POINTS = 10
"""Points of the stepped rate profile (evenly spaced over the window, linear between them)."""


def resized(spec: WorkloadSpec, factor: float) -> dict[str, Any]:
    """``spec`` as a workload file on ``factor`` times its replicas."""
    data = spec.model_dump(mode="json", exclude_defaults=True)
    replicas = max(1, round(resolve_pool(spec).replicas * factor))
    data["name"] = f"{spec.name}-x{factor:g}"
    data.setdefault("pool", {})["replicas"] = replicas
    return data


def scaled_up(spec: WorkloadSpec) -> dict[str, Any]:
    """``spec`` as a workload file whose pool grows by half at :data:`SCALE_UP_AT` of the window,
    its rate stepping up in proportion just before (unless it has a rate profile of its own)."""
    data = spec.model_dump(mode="json", exclude_defaults=True)
    start = resolve_pool(spec).replicas
    joining = math.ceil(start / 2)
    data["name"] = f"{spec.name}-scaleup"
    pool = data.setdefault("pool", {})
    pool["replicas"] = start
    pool["scale"] = [{"at": SCALE_UP_AT, "replicas": joining}]
    if not pool.get("rate_profile"):
        # points at k / (RATE_POINTS - 1): the step runs between the last point before the join
        # and the first after it
        before = math.floor(SCALE_UP_AT * (RATE_POINTS - 1)) + 1
        after = round((start + joining) / start, 3)
        pool["rate_profile"] = [1.0] * before + [after] * (RATE_POINTS - before)
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--resize", type=float, metavar="F", help="F times each pool's replicas")
    kind.add_argument(
        "--scale-up", action="store_true", help="half as many again join at 30 %% of the window"
    )
    parser.add_argument(
        "--workloads", default="all", help="comma-separated corpus names or files (default: all)"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write the copies in")
    args = parser.parse_args(argv)
    if args.resize is not None and args.resize <= 0:
        parser.error("--resize must be > 0")
    names = builtin_workloads() if args.workloads == "all" else args.workloads.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        spec = load_workload(name)
        data = scaled_up(spec) if args.scale_up else resized(spec, args.resize)
        path = args.out / f"{data['name']}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
