"""Cost of parsing one scraped Prometheus page, the work the scraper does per endpoint per interval.

A vLLM page as the simulator serves it, plus ``--extra`` unrelated histogram families (a real
server exports many the gateway never reads): the dialect's filter should keep the cost nearly
independent of them. Prints the page size and the mean and p99 cost per parse in µs.

    .venv/bin/python bench/bench_scrape_parse.py [--parses N] [--extra 40]
"""

from __future__ import annotations

import argparse
import statistics
import time

from infergate.simulator.engine_types import EngineStats
from infergate.simulator.metrics import SimMetrics
from infergate.sources.dialects import parse_metrics


def extra_family(i: int) -> str:
    buckets = [0.1 * j for j in range(1, 20)]
    lines = [f"# TYPE vllm:extra_{i}_seconds histogram"]
    lines += [f'vllm:extra_{i}_seconds_bucket{{le="{b:.1f}"}} 50' for b in buckets]
    lines += [f'vllm:extra_{i}_seconds_bucket{{le="+Inf"}} 50', f"vllm:extra_{i}_seconds_count 50"]
    return "\n".join(lines) + "\n"


def simulator_page() -> str:
    stats = EngineStats(
        num_running=5,
        num_waiting=2,
        kv_cache_usage=0.375,
        num_gpu_blocks=26306,
        block_size=16,
        prefix_cache_queries=100,
        prefix_cache_hits=40,
        num_preemptions=0,
        prompt_tokens_total=1000,
        generation_tokens_total=500,
        running_loras=("food-review",),
        waiting_loras=("cad-fabricator",),
        max_loras=2,
        request_success_total={"stop": 3},
    )
    sim = SimMetrics(lambda: stats, model_name="m", max_model_len=131072, lora_enabled=True)
    sim.record_lora(2, ("food-review",), ("cad-fabricator",))
    return sim.render()[0].decode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parses", type=int, default=2000)
    ap.add_argument("--extra", type=int, default=40, help="unrelated histogram families on the page")
    args = ap.parse_args()
    page = simulator_page() + "".join(extra_family(i) for i in range(args.extra))
    costs: list[float] = []
    for _ in range(args.parses):
        t0 = time.perf_counter()
        parse_metrics(page, "vllm", 1.0)
        costs.append(time.perf_counter() - t0)
    costs.sort()
    p99 = costs[int(0.99 * (len(costs) - 1))]
    print(
        f"page {len(page)} bytes, {args.parses} parses: mean {statistics.fmean(costs) * 1e6:.0f} µs, "
        f"p99 {p99 * 1e6:.0f} µs"
    )


if __name__ == "__main__":
    main()
