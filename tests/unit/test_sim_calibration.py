"""The simulated engine reproduces the calibration points of shared/reference/vllm-calibration.md.

Everything runs in virtual time (VirtualLoop), so the figures are exact model outputs, not
wall-clock measurements; each point must be within ±20 % of the document's value.
"""

from __future__ import annotations

import pytest

from infergate.simulator.drivers import VirtualDriver, VirtualLoop
from infergate.simulator.engine import Engine, EngineConfig, EngineRequest, RequestOutput
from infergate.simulator.profile import PROFILES, StepShape, get_profile

TOLERANCE = 0.20

# vllm-calibration.md §1.4 "Prefill / TTFT vs prompt length (idle server, one request, k=1.15)":
# prompt tokens → (GPU prefill ms, TTFT incl. ~10 ms API ms)
IDLE_TTFT_MS = {
    128: (7.7, 18.0),
    1024: (29.2, 39.0),
    4096: (112.0, 122.0),
    8192: (242.0, 252.0),
}

# vllm-calibration.md §1.5 "Decode time per step (= ITL/TPOT when no prefill is co-scheduled)",
# column "context 1024": batch → ms per step
DECODE_MS_CTX_1K = {1: 6.9, 32: 8.9, 64: 10.9, 256: 25.2}

# vllm-calibration.md §1.2: ≈26.3k blocks at gpu-memory-utilization 0.9 (measured 26,306)
EXPECTED_BLOCKS = 26306


def _within(actual: float, expected: float) -> bool:
    return abs(actual - expected) <= TOLERANCE * expected


def _run(engine: Engine, requests: list[EngineRequest], api_overhead: float | None = None):
    loop = VirtualLoop()
    driver = VirtualDriver(engine, loop, api_overhead=api_overhead)
    outs: dict[str, list[RequestOutput]] = {r.request_id: [] for r in requests}
    for r in requests:
        driver.submit(r, outs[r.request_id].append)
    loop.run()
    return outs


@pytest.mark.parametrize("prompt_len", sorted(IDLE_TTFT_MS))
def test_idle_ttft_matches_calibration(prompt_len: int) -> None:
    gpu_ms, ttft_ms = IDLE_TTFT_MS[prompt_len]
    # engine alone (no API overhead) vs the GPU prefill column
    req = EngineRequest("a", list(range(1, prompt_len + 1)), max_tokens=2, ignore_eos=True)
    out = _run(Engine(EngineConfig()), [req], api_overhead=0.0)["a"][0]
    assert out.first_token_time is not None
    engine_ms = (out.first_token_time - out.arrival_time) * 1000
    assert _within(engine_ms, gpu_ms), f"{prompt_len} tokens: engine prefill {engine_ms:.1f} ms vs {gpu_ms}"
    # with the driver's default API overhead vs the client-visible TTFT column
    req = EngineRequest("b", list(range(1, prompt_len + 1)), max_tokens=2, ignore_eos=True)
    out = _run(Engine(EngineConfig()), [req])["b"][0]
    assert out.first_token_time is not None
    ttft = (out.first_token_time - out.arrival_time) * 1000
    assert _within(ttft, ttft_ms), f"{prompt_len} tokens: TTFT {ttft:.1f} ms vs {ttft_ms}"


@pytest.mark.parametrize("batch", sorted(DECODE_MS_CTX_1K))
def test_decode_step_time_matches_calibration(batch: int) -> None:
    """B requests with 1000-token prompts decode together; their steps hover around 1k context."""
    expected = DECODE_MS_CTX_1K[batch]
    reqs = [
        EngineRequest(f"r{i}", [i + 1] * 1000 + [7] * 8, max_tokens=72, ignore_eos=True) for i in range(batch)
    ]
    outs = _run(Engine(EngineConfig(max_num_seqs=1024)), reqs)
    # pure decode steps: after the last prefill produced its first token, while r0 still runs
    all_decoding = max(o[0].now for o in outs.values())
    times = [o.now for o in outs["r0"] if o.now > all_decoding]
    assert len(times) >= 21, "window of pure decode steps too short"
    itl_ms = (times[-1] - times[0]) / (len(times) - 1) * 1000
    assert _within(itl_ms, expected), f"batch {batch}: {itl_ms:.2f} ms/token vs {expected}"


def test_kv_capacity_from_memory_formula() -> None:
    engine = Engine(EngineConfig(gpu_memory_utilization=0.9))
    blocks = engine.stats().num_gpu_blocks
    assert abs(blocks - EXPECTED_BLOCKS) <= 0.01 * EXPECTED_BLOCKS
    # vLLM 0.33's default budget is 0.92: the same formula with 0.02 × 79.2 GiB more for KV
    default = Engine(EngineConfig()).stats().num_gpu_blocks
    assert EngineConfig().gpu_memory_utilization == 0.92
    assert default == blocks + 811
    # a lower memory budget gives fewer blocks; an explicit count wins
    assert Engine(EngineConfig(gpu_memory_utilization=0.8)).stats().num_gpu_blocks < blocks
    assert Engine(EngineConfig(num_gpu_blocks=100)).stats().num_gpu_blocks == 100


def test_linear_formula_and_lora_penalty() -> None:
    """§0: a 1024-token prefill step is compute-bound (29.2 ms); LoRA adds ×1.12 + 1 ms (§2)."""
    p = get_profile("llama3.1-8b-h100")
    shape = StepShape(num_tokens=1024, prefill_pairs=1024 * 1025 / 2, decode_ctx_sum=0, num_sampled=1)
    base = p.step_time_ms(shape)
    assert _within(base, 29.2)
    lora = p.step_time_ms(StepShape(1024, 1024 * 1025 / 2, 0, 1, has_lora=True))
    assert lora == pytest.approx(base * 1.12 + 1.0)


def test_other_profiles_are_slower_and_selectable() -> None:
    assert len(PROFILES) >= 2
    shape = StepShape(num_tokens=1, prefill_pairs=0, decode_ctx_sum=1024, num_sampled=1)
    h100 = get_profile("llama3.1-8b-h100").step_time_ms(shape)
    a100 = get_profile("llama3.1-8b-a100").step_time_ms(shape)
    assert a100 > 1.3 * h100
    with pytest.raises(ValueError, match="unknown simulator profile"):
        get_profile("nope")
