"""The digital twin runs the real scheduler against simulated engines in virtual time."""

from __future__ import annotations

from pathlib import Path

import pytest

from infergate.bench.loadgen import arrival_offsets
from infergate.bench.stats import summarise
from infergate.bench.strategies import picker_config, strategy_names
from infergate.bench.twin import TwinConfig, run_twin
from infergate.bench.workloads import generate, load_workload

# Virtual-time runs: CPU-bound, they cannot hang on I/O, and on a loaded 2-core machine they take
# minutes; the suite-wide 120 s hang guard would cut them short.
pytestmark = pytest.mark.timeout(900)


def _shared_prefix(limit: int) -> list:  # type: ignore[type-arg]
    return generate(load_workload("multi-tenant-chat"))[:limit]


def test_every_strategy_is_a_valid_scheduler_config() -> None:
    from infergate.scheduling.engine.scheduler import build_scheduler

    for name in strategy_names(twin=False):
        build_scheduler(picker_config(name))
    with pytest.raises(ValueError, match="unknown strategy"):
        picker_config("nope")


def test_twin_is_exactly_reproducible() -> None:
    requests = _shared_prefix(120)
    offsets = arrival_offsets(requests, 20.0, seed=3)
    a = run_twin(requests, offsets, strategy="default")
    b = run_twin(requests, offsets, strategy="default")
    assert [(r.ttft, r.e2e, r.completion_tokens) for r in a.records] == [
        (r.ttft, r.e2e, r.completion_tokens) for r in b.records
    ]
    assert a.per_endpoint_requests == b.per_endpoint_requests


def test_every_request_completes_with_its_token_count() -> None:
    requests = generate(load_workload("tutorial-mix"))[:150]
    out = run_twin(requests, arrival_offsets(requests, 10.0, seed=1), strategy="round-robin")
    assert all(r.ok for r in out.records)
    assert [r.completion_tokens for r in out.records] == [q.max_tokens for q in requests]
    # round robin spreads exactly
    assert sorted(out.per_endpoint_requests.values()) == [50, 50, 50]


def test_answers_a_client_capped_end_where_the_model_stops_them() -> None:
    """With ``max_tokens: 4096`` sent and no ``ignore_eos`` the twin's engines end every answer at
    its drawn length (the gateway sees only the cap), and a cap below an answer cuts it there."""
    spec = load_workload("tutorial-mix")
    drawn = generate(spec)[:150]
    offsets = arrival_offsets(drawn, 10.0, seed=1)
    for cap in (4096, 40):
        requests = generate(spec.model_copy(update={"max_tokens": cap}))[:150]
        out = run_twin(requests, offsets, strategy="default")
        assert all(r.ok for r in out.records)
        assert [r.completion_tokens for r in out.records] == [min(q.max_tokens, cap) for q in drawn]


def test_prefix_affinity_beats_round_robin_on_shared_prefixes() -> None:
    requests = _shared_prefix(300)
    offsets = arrival_offsets(requests, 30.0, seed=0)
    rr = run_twin(requests, offsets, strategy="round-robin")
    default = run_twin(requests, offsets, strategy="default")
    greedy = run_twin(requests, offsets, strategy="greedy-true-state")
    assert rr.prefix_hit_rate is not None and default.prefix_hit_rate is not None
    assert default.prefix_hit_rate > rr.prefix_hit_rate + 0.1
    assert summarise(default.records).ttft_p90 < summarise(rr.records).ttft_p90
    assert summarise(greedy.records).ttft_p90 <= summarise(rr.records).ttft_p90


def test_in_flight_counts_spread_load_and_stale_metrics_leave_rotation() -> None:
    requests = generate(load_workload("tutorial-mix"))[:200]
    offsets = arrival_offsets(requests, 40.0, seed=2)
    fresh = run_twin(requests, offsets, strategy="least-in-flight")
    assert max(fresh.per_endpoint_requests.values()) - min(fresh.per_endpoint_requests.values()) < 30
    slow = run_twin(
        requests, offsets, strategy="default", config=TwinConfig(scrape_interval=30.0)
    )  # one scrape at the start, then none: endpoints go stale after 2 s and count as full, so
    # requests wait in flow control until their TTL runs out: 429, as the gateway answers
    assert sum(r.status == 429 for r in slow.records) > 0


def test_lora_affinity_avoids_adapter_swaps() -> None:
    requests = generate(load_workload("tutorial-mix"))[:300]
    offsets = arrival_offsets(requests, 15.0, seed=4)
    rr = run_twin(requests, offsets, strategy="round-robin")
    lora = run_twin(requests, offsets, strategy="lora-only")
    assert rr.lora_swaps > 2 * lora.lora_swaps > 0


def test_cli_twin_time_scale_slows_the_pool_like_the_matrix(tmp_path: Path) -> None:
    import json

    from infergate.bench.cli import main

    p90 = {}
    for scale in (1.0, 3.0):
        out = tmp_path / f"k{scale:g}"
        argv = ["--twin", "--workload", "tutorial-mix", "--limit", "40", "--qps", "2"]
        argv += ["--strategies", "default", "--time-scale", f"{scale:g}", "--no-plots", "--out", str(out)]
        assert main(argv) == 0
        (row,) = json.loads((out / "results.json").read_text())
        p90[scale] = row["summary"]["ttft_p50"]
    # at 2 QPS nothing queues: the slowed pool's TTFT is the modelled one times the scale
    assert 2.5 * p90[1.0] < p90[3.0] < 3.5 * p90[1.0]


def test_a_mixed_pool_runs_each_replica_on_its_own_profile() -> None:
    """The same requests, one at a time, on two H100s, two A100s and one of each: the mixed pool's
    answers take longer than the H100s' and less than the A100s' (half of them on each)."""
    requests = generate(load_workload("sharegpt-like"))[:24]
    offsets = [5.0 * i for i in range(len(requests))]  # each request alone on an idle pool

    def mean_e2e(*profiles: str) -> float:
        cfg = TwinConfig(replicas=2, adapters=(), profiles=profiles)
        out = run_twin(requests, offsets, strategy="round-robin", config=cfg)
        assert all(r.ok for r in out.records)
        return sum(r.e2e or 0.0 for r in out.records) / len(out.records)

    h100, a100 = mean_e2e("llama3.1-8b-h100"), mean_e2e("llama3.1-8b-a100")
    mixed = mean_e2e("llama3.1-8b-h100", "llama3.1-8b-a100")
    assert h100 < mixed < a100
    assert mixed == pytest.approx((h100 + a100) / 2, rel=0.1)


def test_clients_that_do_not_stream_still_teach_the_gateway_which_gpus_are_slower() -> None:
    """On two H100s beside two A100s, with no request streamed, the gateway learns from each
    answer's time and token count that the A100s decode slower and sends them less: the same
    requests with the online correction off spread more evenly and miss more of their TPOT."""
    import dataclasses

    from infergate.config.picker import EndpointPickerConfig

    spec = load_workload("mixed-gpus")
    requests = [dataclasses.replace(r, stream=False) for r in generate(spec)]
    assert requests and all("stream" not in r.body() for r in requests)
    offsets = arrival_offsets(requests, 60.0, seed=1)
    cfg = TwinConfig(replicas=4, adapters=(), profiles=spec.pool.profiles or ())
    raw = picker_config("default").model_dump(by_alias=True)
    for plugin in raw["plugins"]:
        if plugin["type"] == "predicted-latency-scorer":
            plugin["parameters"] = {**(plugin.get("parameters") or {}), "onlineCorrection": False}
    blind = EndpointPickerConfig.model_validate(raw)

    def a100_share_and_tpot(picker: EndpointPickerConfig | None) -> tuple[float, float]:
        out = run_twin(requests, offsets, strategy="default", config=cfg, picker=picker)
        assert all(r.ok for r in out.records)
        counts = [out.per_endpoint_requests.get(f"10.0.0.{i}:8000", 0) for i in (1, 2, 3, 4)]
        return (counts[1] + counts[3]) / sum(counts), summarise(out.records).tpot_p90

    learnt_share, learnt_tpot = a100_share_and_tpot(None)
    blind_share, blind_tpot = a100_share_and_tpot(blind)
    assert learnt_share < 0.35 < blind_share
    assert learnt_tpot < blind_tpot
