"""vLLM 0.33's admission gate under KV pressure and its H100 defaults.

With ``scheduler_reserve_full_isl`` (on by default in 0.33) a waiting request joins the batch only
if blocks for its whole prompt are free, not just for its first prefill chunk; otherwise chunked
prefill would admit it, run out of blocks mid-prompt and preempt.
"""

from __future__ import annotations

from infergate.simulator.engine import Engine, EngineConfig, EngineRequest

BS = 16


def prompt(n: int, salt: int) -> list[int]:
    return [1000 + (salt * 7919 + i) % 100_000 for i in range(n)]


def step(engine: Engine, now: float) -> float:
    duration = engine.begin_step(now)
    assert duration is not None
    engine.end_step(now + duration)
    return now + duration


def test_waiting_request_admitted_only_when_whole_prompt_fits() -> None:
    # 40 blocks; chunks of 64 tokens (4 blocks) so a first chunk always fits
    engine = Engine(EngineConfig(num_gpu_blocks=40, max_num_batched_tokens=64))
    engine.add_request(EngineRequest("a", prompt(300, 1), max_tokens=200, ignore_eos=True), 0.0)
    now = 0.0
    while engine.stats().num_running == 0 or engine.pool.num_free > 40 - 20:
        now = step(engine, now)  # a prefills 300 tokens: 19 blocks (+1 for its first output)
    engine.add_request(EngineRequest("b", prompt(400, 2), max_tokens=5, ignore_eos=True), now)
    free = engine.pool.num_free
    assert -(-400 // BS) > free >= 64 // BS  # b's first chunk fits, its whole prompt does not
    now = step(engine, now)
    s = engine.stats()
    assert (s.num_running, s.num_waiting) == (1, 1)  # b waits (first-chunk admission took it)
    while "a" in engine.request_ids():
        now = step(engine, now)
    now = step(engine, now)  # a finished and freed its blocks: b fits now
    assert engine.stats().num_running == 1 and engine.stats().num_preemptions == 0


def test_prefix_hits_count_towards_the_fit() -> None:
    """Blocks b finds cached need no new allocation, so a long prompt sharing a cached prefix is
    admitted where a cold one of the same length is not."""
    engine = Engine(EngineConfig(num_gpu_blocks=40, max_num_batched_tokens=64))
    shared = prompt(320, 3)
    engine.add_request(EngineRequest("a", shared, max_tokens=200, ignore_eos=True), 0.0)
    now = 0.0
    while engine.stats().num_running == 0 or engine.pool.num_free > 40 - 21:
        now = step(engine, now)
    engine.add_request(EngineRequest("cold", prompt(400, 4), max_tokens=5, ignore_eos=True), now)
    now = step(engine, now)
    assert engine.stats().num_waiting == 1
    engine.abort("cold", now)
    engine.add_request(EngineRequest("warm", shared + prompt(80, 5), max_tokens=5, ignore_eos=True), now)
    now = step(engine, now)
    assert (engine.stats().num_running, engine.stats().num_waiting) == (2, 0)


def test_h100_defaults() -> None:
    cfg = EngineConfig()
    assert (cfg.max_num_seqs, cfg.gpu_memory_utilization, cfg.max_num_batched_tokens) == (1024, 0.92, 8192)
