"""The simulator's /metrics renderer writes exactly what prometheus_client's generate_latest writes."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest

from infergate.simulator.engine import EngineStats
from infergate.simulator.exposition import render_text
from infergate.simulator.metrics import SimMetrics


def _stats() -> EngineStats:
    return EngineStats(
        num_running=3,
        num_waiting=1,
        kv_cache_usage=0.25,
        num_gpu_blocks=1000,
        block_size=16,
        prefix_cache_queries=10,
        prefix_cache_hits=5,
        num_preemptions=1,
        prompt_tokens_total=100,
        generation_tokens_total=80,
        running_loras=("food-review",),
        waiting_loras=("sql",),
        max_loras=2,
        request_success_total={"stop": 10, "length": 4},
    )


@pytest.mark.parametrize("legacy", [False, True])
def test_a_populated_simulator_renders_as_generate_latest(legacy: bool) -> None:
    model = "meta-llama/Llama-3.1-8B-Instruct"
    m = SimMetrics(_stats, model_name=model, max_model_len=8192, legacy=legacy, lora_enabled=True)
    for i in range(50):
        m.observe_finished(
            arrival=0.0,
            first_token=0.01 * i,
            finished=0.5 + i,
            prompt_tokens=10 * i,
            generated=i + 1,
            max_tokens=64,
            scheduled=0.001 * i,
            cached_tokens=i,
        )
    assert render_text(m.registry) == generate_latest(m.registry)
    assert render_text(m.registry) == render_text(m.registry)  # the cached label parts again


def test_escapes_and_every_metric_type_match() -> None:
    registry = CollectorRegistry()
    c = Counter("jobs", "help with \\ and\nnewline", ["path"], registry=registry)
    c.labels(path='a"b\\c\nd').inc(2.5)
    Gauge("temp", "t", registry=registry).set(float("inf"))
    Histogram("lat", "l", ["m"], buckets=(0.1, 1.0), registry=registry).labels(m="x").observe(0.5)
    Info("build", "b", registry=registry).info({"version": "1"})
    assert render_text(registry) == generate_latest(registry)
