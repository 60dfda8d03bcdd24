"""vLLM's request-phase histograms, per-step token histogram, per-request preemptions and the
prompt-token-source counters, checked against each other and against the engine's own counters
after real requests (the identities below hold in vLLM by construction of the same timestamps)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
from prometheus_client.parser import text_string_to_metric_families

from infergate.simulator.args import parse_args
from infergate.simulator.server import SimServer

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
FAST = ["--host", "127.0.0.1", "--port", "0", "--time-scale", "0.05"]


async def _metrics(server: SimServer) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    async with aiohttp.ClientSession() as s, s.get(f"{server.url}/metrics") as r:
        text = await r.text()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            labels = tuple(sorted((k, v) for k, v in smp.labels.items() if k not in ("model_name", "engine")))
            out.setdefault(smp.name, {})[labels] = float(smp.value)
    return out


def _one(m: dict[str, dict[Any, float]], name: str, **labels: str) -> float:
    return m[name][tuple(sorted(labels.items()))]


async def _run(server: SimServer, prompts: list[str], max_tokens: int) -> None:
    c = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="sim", max_retries=0)
    try:
        rs = await asyncio.gather(
            *(
                c.completions.create(
                    model=MODEL, prompt=p, max_tokens=max_tokens, extra_body={"ignore_eos": True}
                )
                for p in prompts
            )
        )
        assert all(r.usage is not None and r.usage.completion_tokens == max_tokens for r in rs)
    finally:
        await c.close()


async def test_phase_histograms_iteration_tokens_and_cached_tokens() -> None:
    server = SimServer(parse_args([*FAST, "--model", MODEL], {}))
    await server.start()
    try:
        shared = "You are a helpful assistant who answers in one sentence. " * 8
        await _run(server, [shared + "First question?"], 12)
        await _run(server, [shared + f"Question number {i}?" for i in range(4)], 12)
        m = await _metrics(server)
    finally:
        await server.stop()
    stats = server.engine.stats()
    n = 5.0
    for phase in ("queue", "prefill", "inference"):
        assert _one(m, f"vllm:request_{phase}_time_seconds_count") == n
    # phases nest inside a request's life (exact identities on a virtual clock:
    # tests/unit/test_sim_metrics_phases.py; here the wall clock may lag the engine's timeline)
    e2e = _one(m, "vllm:e2e_request_latency_seconds_sum")
    queue = _one(m, "vllm:request_queue_time_seconds_sum")
    inference = _one(m, "vllm:request_inference_time_seconds_sum")
    prefill = _one(m, "vllm:request_prefill_time_seconds_sum")
    assert e2e >= queue and e2e >= inference >= prefill > 0
    # every prompt token (counted when its request's first token comes) and every sampled token
    # falls in exactly one step's observation
    prompt_total = _one(m, "vllm:prompt_tokens_total")
    gen_total = _one(m, "vllm:generation_tokens_total")
    assert _one(m, "vllm:iteration_tokens_total_sum") == prompt_total + gen_total
    assert _one(m, "vllm:iteration_tokens_total_count") == stats.num_steps
    # the later four requests found the shared prefix cached
    cached = _one(m, "vllm:prompt_tokens_cached_total")
    assert cached == stats.prefix_cache_hits > 0
    assert _one(m, "vllm:prompt_tokens_by_source_total", source="local_cache_hit") == cached
    assert _one(m, "vllm:prompt_tokens_by_source_total", source="local_compute") == prompt_total - cached
    assert _one(m, "vllm:prompt_tokens_by_source_total", source="external_kv_transfer") == 0
    assert _one(m, "vllm:request_prefill_kv_computed_tokens_sum") == prompt_total - cached
    assert _one(m, "vllm:request_num_preemptions_sum") == 0


async def test_per_request_preemptions_histogram() -> None:
    # 24 blocks of 16 tokens cannot hold 4 requests growing to ~64 + 100 tokens: some are preempted
    server = SimServer(parse_args([*FAST, "--num-gpu-blocks", "24", "--no-enable-prefix-caching"], {}))
    await server.start()
    try:
        await _run(server, [f"request {i} " + "x " * 60 for i in range(4)], 100)
        m = await _metrics(server)
    finally:
        await server.stop()
    total = _one(m, "vllm:num_preemptions_total")
    assert total > 0
    assert _one(m, "vllm:request_num_preemptions_sum") == total
    assert _one(m, "vllm:request_num_preemptions_count") == 4
    assert _one(m, "vllm:request_num_preemptions_bucket", le="20.0") == 4


def test_metric_names_under_legacy_flag_keep_the_new_families_out() -> None:
    """--legacy-metrics mimics vLLM <= 0.10, which had no prompt-token-source counters."""
    server = SimServer(parse_args([*FAST, "--legacy-metrics"], {}))
    body, _ = server.metrics.render()
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert "vllm:prompt_tokens_by_source" not in names and "vllm:prompt_tokens_cached" not in names
    assert "vllm:gpu_cache_usage_perc" in names and "vllm:request_queue_time_seconds" in names
