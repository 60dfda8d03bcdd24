"""The engine's public data: its configuration, requests, outputs, stats and refusals.

Kept apart from ``engine`` and ``engine_scheduler`` (the step model) so they stay about behaviour;
``engine`` re-exports every name, which is how callers import them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineConfig:
    """Engine knobs, named like the ``vllm serve`` flags they come from."""

    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    max_num_seqs: int = 1024  # vLLM 0.33's default on H100-class GPUs (engine/arg_utils.py)
    max_num_batched_tokens: int = 8192
    max_model_len: int = 131072
    block_size: int = 16
    num_gpu_blocks: int | None = None
    gpu_memory_utilization: float = 0.92  # vLLM 0.33's default (config/cache.py)
    enable_prefix_caching: bool = True
    enable_lora: bool = False
    max_loras: int = 1
    max_cpu_loras: int | None = None
    max_lora_rank: int = 16
    tensor_parallel_size: int = 1
    profile: str = "llama3.1-8b-h100"
    seed: int = 0
    prefix_caching_hash_algo: str = "sha256"  # or "sha256_cbor" (blockhash.py)
    hash_seed: str | None = None  # PYTHONHASHSEED: seeds the first block's parent hash
    kv_events_int_hashes: bool = True  # VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES
    # ids generated tokens are drawn from (the tokenizer's ``filler_ids``); None: the built-in's
    filler_ids: tuple[int, ...] | None = None
    # P/D disaggregation (--kv-transfer-config): a modelled KV transfer from a prefill instance
    kv_transfer_bandwidth: float = 25e9  # bytes/s per TP rank [est: one 200 Gb/s NIC]
    kv_transfer_latency: float = 0.002  # s per transfer (handshake and notification) [est]


@dataclass
class EngineRequest:
    """One generation request as the engine sees it (already tokenized)."""

    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    min_tokens: int = 0
    ignore_eos: bool = False
    lora_name: str | None = None
    eos_after: int | None = None
    # True when the caller (the HTTP frontend) decides and counts how the request finished: stop
    # strings are matched on text there, as in vLLM's output processor, possibly after the engine
    # has already run the request to its length limit, so the engine must not count it itself.
    frontend_counts: bool = False
    # P/D: prompt tokens (full blocks) whose KV a prefill instance sends instead of computing them
    # here (vLLM's do_remote_prefill), and do_remote_decode (a prefill instance's request: its
    # block ids are kept for the decode instance when it finishes by length)
    remote_prefill_tokens: int = 0
    remote_decode: bool = False
    # sparse mode (the digital twin): one more output when this many tokens were generated, the
    # moment a data plane reports the request's time per token (0: none)
    mark_at: int = 0


@dataclass(frozen=True)
class RequestOutput:
    """Tokens a request produced in one step (or its final abort notice)."""

    request_id: str
    new_token_ids: tuple[int, ...]
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_cached_tokens: int
    num_generated: int
    arrival_time: float
    first_token_time: float | None
    now: float
    scheduled_time: float | None = None  # when the engine first scheduled it (queue time ends)
    num_preemptions: int = 0
    queued_time: float | None = None  # when the engine received it (queue time starts)


@dataclass(frozen=True)
class TimedOutput(RequestOutput):
    """The final output of a request in sparse mode (``end_step(now, sparse=True)``).

    Sparse mode skips the per-token outputs; instead the final output carries the time of every
    generated token (step end times, in order), from which a consumer derives TTFT and the
    inter-token latencies exactly as it would have from the per-token outputs.
    """

    token_times: tuple[float, ...] = ()


@dataclass(frozen=True)
class EngineStats:
    """Snapshot of the counters and gauges vLLM exports on ``/metrics``."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_gpu_blocks: int
    block_size: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    prompt_tokens_total: int
    generation_tokens_total: int
    running_loras: tuple[str, ...]
    waiting_loras: tuple[str, ...]
    max_loras: int
    request_success_total: dict[str, int]
    num_waiting_deferred: int = 0  # waiting only because of the LoRA-slot limit
    num_steps: int = 0
    busy_time: float = 0.0  # Σ step durations (s)
    lora_gpu_loads: int = 0  # adapters brought into a GPU slot (swaps)
    prompt_tokens_cached: int = 0  # of prompt_tokens_total, found in the prefix cache or received
    prompt_tokens_external: int = 0  # of prompt_tokens_cached, received from a prefill instance


class PromptTooLongError(ValueError):
    """The prompt does not fit ``max_model_len`` (HTTP 400 in vLLM)."""

    def __init__(self, prompt_len: int, max_model_len: int) -> None:
        self.prompt_len = prompt_len
        self.max_model_len = max_model_len
        super().__init__(
            f"This model's maximum context length is {max_model_len} tokens. However, your prompt "
            f"contains {prompt_len} input tokens, which exceeds this limit even without any output "
            "tokens. Please reduce the length of the input prompt."
        )


class UnknownLoraError(ValueError):
    """The request names an adapter that is not loaded."""
