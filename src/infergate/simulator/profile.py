"""Calibrated hardware/model profiles and the step-time model of the simulated engine.

A profile is a frozen bag of constants taken from ``shared/reference/vllm-calibration.md``:
the per-step latency model (§0), the KV-cache memory budget (§1.2), the LoRA penalties and
adapter load latencies (§2) and the API overhead added to TTFT (§1.4). Keeping every constant
here means one object decides how fast a simulated GPU is; the engine only counts tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class StepShape:
    """What one engine step computes, reduced to the quantities the latency model needs."""

    num_tokens: int  # prefill-chunk tokens + decode sequences
    prefill_pairs: float  # Σ c·p + c·(c+1)/2 over prefill chunks
    decode_ctx_sum: int  # Σ context length of decoding sequences
    num_sampled: int  # requests that sample a token in this step
    has_lora: bool = False  # at least one scheduled request uses an adapter
    lora_enabled: bool = False  # engine started with --enable-lora


@dataclass(frozen=True)
class Profile:
    """Constants of one (model, GPU) pair. Times in milliseconds unless the name says otherwise."""

    name: str
    model: str
    gpu: str
    # §0 linear layers: max(bandwidth floor, k·compute)
    lin_bw_base_ms: float = 5.9
    lin_bw_per_token_ms: float = 0.0068
    lin_compute_base_ms: float = 3.0
    lin_compute_per_token_ms: float = 0.0205
    k: float = 1.15
    # §0 attention
    prefill_attn_per_pair_ms: float = 1.165e-6  # multiplied by k
    decode_attn_per_ctx_token_ms: float = 5.46e-5
    # §0 LM head, sampler, non-hidden CPU
    lm_head_ms: float = 0.40
    sample_per_seq_ms: float = 0.002
    cpu_overhead_ms: float = 0.5
    # §2 LoRA
    lora_step_multiplier: float = 1.12
    lora_step_add_ms: float = 1.0
    lora_enabled_idle_multiplier: float = 1.0  # doc: optional +3 %; off by default
    lora_cpu_to_gpu_ms: float = 5.0
    lora_disk_load_ms: float = 200.0
    # §1.4 frontend cost added before a request reaches the engine
    api_overhead_ms: float = 10.0
    # §1.5 the API server as a serial CPU stage (frontend.FrontendStage) [est]: per request and per
    # generated token, calibrated so a 1,000-prompt burst gives the measured 9.6 s mean TTFT
    frontend_request_ms: float = 10.0  # = the idle API overhead: idle TTFTs are unchanged
    frontend_token_ms: float = 0.064
    # §1.1/§1.2 memory
    gpu_total_gib: float = 79.18
    weights_gib: float = 14.99
    activation_peak_gib: float = 4.762  # 4.76 in the doc; 4.762 reproduces its 26,306 blocks
    non_torch_gib: float = 0.13
    kv_bytes_per_token: int = 131072
    # tensor-parallel all-reduce cost per step and rank [est]
    tp_allreduce_ms: float = 0.05

    def step_time_ms(self, shape: StepShape, tensor_parallel_size: int = 1) -> float:
        """Duration of one engine step (§0 formula), including the LoRA penalty (§2).

        With tensor parallelism the compute and memory terms are split across ranks and an
        all-reduce cost is added per step; the CPU terms are not split [est].
        """
        n = shape.num_tokens
        tp = max(1, tensor_parallel_size)
        t_lin = max(
            self.lin_bw_base_ms + self.lin_bw_per_token_ms * n,
            self.k * (self.lin_compute_base_ms + self.lin_compute_per_token_ms * n),
        )
        t_pf = self.k * self.prefill_attn_per_pair_ms * shape.prefill_pairs
        t_dc = self.decode_attn_per_ctx_token_ms * shape.decode_ctx_sum
        t_misc = self.lm_head_ms + self.sample_per_seq_ms * shape.num_sampled + self.cpu_overhead_ms
        gpu = (t_lin + t_pf + t_dc) / tp
        if tp > 1:
            gpu += self.tp_allreduce_ms * tp
        total = gpu + t_misc
        if shape.has_lora:
            total = total * self.lora_step_multiplier + self.lora_step_add_ms
        elif shape.lora_enabled:
            total *= self.lora_enabled_idle_multiplier
        return total

    def num_gpu_blocks(
        self, *, block_size: int, gpu_memory_utilization: float, tensor_parallel_size: int = 1
    ) -> int:
        """KV blocks that fit the memory budget (§1.2): util·total − weights − activations − other.

        Each TP rank holds 1/tp of the weights and of every token's KV bytes.
        """
        tp = max(1, tensor_parallel_size)
        kv_gib = (
            gpu_memory_utilization * self.gpu_total_gib
            - self.weights_gib / tp
            - self.activation_peak_gib
            - self.non_torch_gib
        )
        block_bytes = block_size * self.kv_bytes_per_token / tp
        return max(0, math.floor(kv_gib * GIB / block_bytes))


LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"

PROFILES: dict[str, Profile] = {
    # Default: Llama-3.1-8B-Instruct, 1x H100-80GB SXM, bf16 (vllm-calibration.md §0-§2).
    "llama3.1-8b-h100": Profile(name="llama3.1-8b-h100", model=LLAMA_8B, gpu="H100-80GB-SXM"),
    # Same model on A100-80GB [est]: vidur A100 Llama-3-8B GEMM table (§3: 9.7 ms at 1 token,
    # ~0.066 ms/token at large batches), HBM 2.0 TB/s (decode attention 72 % efficiency like H100)
    # and FA2 at ~200 TFLOP/s for prefill attention.
    "llama3.1-8b-a100": Profile(
        name="llama3.1-8b-a100",
        model=LLAMA_8B,
        gpu="A100-80GB",
        lin_bw_base_ms=9.6,
        lin_bw_per_token_ms=0.011,
        lin_compute_base_ms=3.0,
        lin_compute_per_token_ms=0.066 / 1.15,
        prefill_attn_per_pair_ms=2.62e-6,
        decode_attn_per_ctx_token_ms=8.9e-5,
        lora_cpu_to_gpu_ms=8.0,
        gpu_total_gib=79.15,
    ),
}

DEFAULT_PROFILE = "llama3.1-8b-h100"


def get_profile(name: str) -> Profile:
    """Profile by name; ``ValueError`` listing the known names otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown simulator profile {name!r} (known: {known})") from None
