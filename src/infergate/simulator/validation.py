"""vLLM 0.33's request checks, in vLLM's order and with its messages (all HTTP 400).

vLLM validates a generation request in three places, and which message a bad request gets depends
on that order, so the simulator keeps it:

1. the renderer, before tokenising: the requested output budget against ``max_model_len``
   (``max_tokens=… cannot be greater than max_model_len=…``), then the prompt *text* against
   ``max_model_len × max_chars_per_token`` (no tokenisation cost for absurd prompts), then, after a
   tokenisation truncated at ``max_model_len + 1`` tokens, the token count (``> max_model_len``);
2. the sampling parameters, built with ``max_tokens`` clamped to the room left in the context:
   ``n`` (at least 1, at most ``VLLM_MAX_N_SEQUENCES``, 1 when sampling greedily), temperature,
   ``max_tokens`` (a prompt of exactly ``max_model_len`` tokens leaves 0 and fails here), min_tokens;
3. the engine's input processor: prompt token ids inside the vocabulary.

Every check runs before anything proportional to ``n`` or to the prompt is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from infergate.simulator.openai_api import ApiError

DEFAULT_MAX_N_SEQUENCES = 16384  # vLLM's VLLM_MAX_N_SEQUENCES default
_SAMPLING_EPS = 1e-5  # below this temperature vLLM samples greedily


def check_output_budget(max_tokens: int | None, param: str, max_model_len: int) -> None:
    """A requested output budget larger than the whole context (vLLM's TokenizeParams)."""
    if max_tokens is not None and max_tokens > max_model_len:
        raise ApiError(
            400,
            f"{param}={max_tokens} cannot be greater than max_model_len={max_model_len}. "
            "Please request fewer output tokens.",
            param=param,
        )


def text_limit(max_model_len: int, max_chars_per_token: int) -> int:
    """Longest prompt text (characters) that could still fit ``max_model_len`` tokens."""
    return max_model_len * max_chars_per_token


def check_text_len(text_len: int, max_model_len: int, max_chars_per_token: int) -> None:
    """A prompt text too long to fit even at the longest possible tokens (checked untokenised)."""
    limit = text_limit(max_model_len, max_chars_per_token)
    if text_len > limit:
        raise ApiError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, your prompt "
            f"contains {text_len} characters (more than {limit} characters, which is the upper bound "
            f"for {max_model_len} input tokens). Please reduce the length of the input prompt.",
            param="input_text",
        )


def check_token_len(num_tokens: int, max_model_len: int) -> None:
    """More prompt tokens than ``max_model_len``. Text prompts are tokenised only up to
    ``max_model_len + 1`` tokens, so vLLM words that count as "at least"."""
    if num_tokens > max_model_len:
        qualifier = "at least " if num_tokens == max_model_len + 1 else ""
        raise ApiError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, your prompt "
            f"contains {qualifier}{num_tokens} input tokens, which exceeds this limit even without "
            "any output tokens. Please reduce the length of the input prompt.",
            param="input_tokens",
        )


def check_n(n: int, max_n: int, temperature: float | None) -> None:
    """``n`` bounds (vLLM's ``_verify_num_sequences`` and greedy-sampling rule)."""
    if n < 1:
        raise ApiError(400, f"n must be at least 1, got {n}.")
    if n > max_n:
        raise ApiError(
            400,
            f"n must be at most {max_n}, got {n}. To increase this limit, set the "
            "VLLM_MAX_N_SEQUENCES environment variable.",
        )
    if temperature is not None and temperature < _SAMPLING_EPS and n > 1:
        raise ApiError(400, f"n must be 1 when using greedy sampling, got {n}.")


def check_temperature(temperature: float | None) -> None:
    if temperature is None:
        return
    if not math.isfinite(temperature):
        msg = f"temperature must be a finite number, got {temperature}."
    elif temperature < 0:
        msg = f"temperature must be non-negative, got {temperature}."
    elif temperature > 2.0:
        msg = f"temperature must be in [0, 2], got {temperature}."
    else:
        return
    raise ApiError(400, msg, param="temperature")


def clamp_max_tokens(requested: int | None, default: int | None, prompt_len: int, max_model_len: int) -> int:
    """vLLM's ``get_max_tokens`` then the sampling check: the budget is silently cut to the room
    left in the context, and a prompt that leaves no room fails as ``max_tokens`` 0."""
    room = max_model_len - prompt_len
    wanted = requested if requested is not None else default
    max_tokens = room if wanted is None else min(wanted, room)
    if max_tokens < 1:
        raise ApiError(400, f"max_tokens must be at least 1, got {max_tokens}.", param="max_tokens")
    return max_tokens


def check_min_tokens(min_tokens: int, max_tokens: int) -> None:
    if min_tokens > max_tokens:
        raise ApiError(
            400, f"min_tokens must be less than or equal to max_tokens={max_tokens}, got {min_tokens}."
        )


def check_token_ids(ids: Sequence[int], max_token_id: int) -> None:
    """Prompt token ids outside the vocabulary (negative ones too), as the input processor does."""
    if not ids:
        return
    low, high = min(ids), max(ids)
    if low < 0:
        raise ApiError(400, f"Token id {low} is out of vocabulary")
    if high > max_token_id:
        raise ApiError(400, f"Token id {high} is out of vocabulary")
