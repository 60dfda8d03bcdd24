"""vLLM's runtime LoRA endpoints' request checks, in vLLM's order and with its messages.

Kept apart from ``server`` (which does the loading) so the error contract is in one place.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from infergate.simulator.openai_api import ApiError, as_bool


def check_load(
    body: Mapping[str, Any], served: Collection[str], loaded: Collection[str], enable_lora: bool
) -> tuple[str, str, bool]:
    """``POST /v1/load_lora_adapter``: (name, path, load_inplace), or the 400/404 vLLM answers."""
    name, path = body.get("lora_name"), body.get("lora_path")
    if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
        raise ApiError(400, "Both 'lora_name' and 'lora_path' must be provided.", type_="InvalidUserInput")
    if name in served:
        raise ApiError(
            400, f"The lora adapter '{name}' conflicts with a served base model.", type_="InvalidUserInput"
        )
    inplace = as_bool(body, "load_inplace", False)
    if name in loaded and not inplace:
        raise ApiError(
            400,
            f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in "
            "place, set 'load_inplace' to True.",
            type_="InvalidUserInput",
        )
    if not enable_lora:
        raise ApiError(
            400, "LoRA is not enabled. Use --enable-lora to enable LoRA.", type_="InvalidUserInput"
        )
    if "nonexistent" in path:
        raise ApiError(404, f"Loading lora {name} failed: No adapter found for {path}", type_="NotFoundError")
    return name, path, inplace


def check_unload(body: Mapping[str, Any], loaded: Collection[str]) -> str:
    """``POST /v1/unload_lora_adapter``: the adapter name, or the 400/404 vLLM answers."""
    name = body.get("lora_name")
    if not isinstance(name, str) or not name:
        raise ApiError(
            400, "'lora_name' needs to be provided to unload a LoRA adapter.", type_="InvalidUserInput"
        )
    if name not in loaded:
        raise ApiError(404, f"The lora adapter '{name}' cannot be found.", type_="NotFoundError")
    return name
