"""Response bodies of the SGLang-style endpoints peer routers call on their workers.

sglang-router registers a worker through ``/get_model_info`` / ``/get_server_info`` and its
power-of-two policy polls ``/get_load`` for an integer ``load``; SGLang itself answers ``/get_load``
with ``num_reqs``/``num_waiting_reqs``/``num_tokens``. The simulator answers with the union, so the
same process can stand behind vLLM-family and SGLang-family routers (see docs/simulator.md).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from infergate.simulator.engine import EngineConfig, EngineStats

if TYPE_CHECKING:
    from infergate.simulator.server import SimServer

_compact = functools.partial(json.dumps, separators=(",", ":"))  # as FastAPI writes JSON


def sglang_model_info(model: str) -> dict[str, Any]:
    return {
        "model_path": model,
        "tokenizer_path": model,
        "is_generation": True,
        "preferred_sampling_params": None,
        "weight_version": "default",
        "has_image_understanding": False,
        "has_audio_understanding": False,
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
    }


def sglang_server_info(cfg: EngineConfig, s: EngineStats, *, version: str) -> dict[str, Any]:
    """SGLang ``ServerArgs``-style fields mapped from the engine configuration."""
    return {
        "model_path": cfg.model,
        "tokenizer_path": cfg.model,
        "tp_size": cfg.tensor_parallel_size,
        "dp_size": 1,
        "load_balance_method": "round_robin",
        "disaggregation_mode": "null",
        "context_length": cfg.max_model_len,
        "chunked_prefill_size": cfg.max_num_batched_tokens,
        "max_prefill_tokens": cfg.max_num_batched_tokens,
        "max_running_requests": cfg.max_num_seqs,
        "page_size": s.block_size,
        "max_total_num_tokens": s.num_gpu_blocks * s.block_size,
        "mem_fraction_static": cfg.gpu_memory_utilization,
        "enable_lora": cfg.enable_lora,
        "max_loras_per_batch": cfg.max_loras,
        "random_seed": cfg.seed,
        "disable_radix_cache": not cfg.enable_prefix_caching,
        "internal_states": [
            {"last_gen_throughput": 0.0, "num_running_reqs": s.num_running, "num_waiting_reqs": s.num_waiting}
        ],
        "version": version,
    }


def sglang_load(s: EngineStats) -> dict[str, Any]:
    """``load`` = running + waiting requests; ``num_tokens`` = KV tokens in use."""
    reqs = s.num_running + s.num_waiting
    return {
        "load": reqs,
        "dp_rank": 0,
        "num_reqs": reqs,
        "num_running_reqs": s.num_running,
        "num_waiting_reqs": s.num_waiting,
        "num_tokens": round(s.kv_cache_usage * s.num_gpu_blocks * s.block_size),
        "num_pending_tokens": 0,
        "ts_tic": time.perf_counter(),
    }


def routes(server: SimServer) -> dict[str, Callable[[web.Request], Awaitable[web.Response]]]:
    """The SGLang-style GET endpoints of ``server``, by path."""
    info = functools.partial(_server_info, server)
    model = functools.partial(_model_info, server)
    load = functools.partial(_load, server)
    return {
        "/get_server_info": info,
        "/server_info": info,
        "/get_model_info": model,
        "/model_info": model,
        "/get_load": load,
    }


async def _model_info(server: SimServer, request: web.Request) -> web.Response:
    """SGLang's ``/get_model_info`` (sglang-router reads it at worker registration)."""
    return web.json_response(sglang_model_info(server.args.model), dumps=_compact)


async def _server_info(server: SimServer, request: web.Request) -> web.Response:
    """SGLang's ``/get_server_info``: server args, scheduler limits, internal state, version."""
    from infergate.simulator.server import VLLM_VERSION

    info = sglang_server_info(server.config, server.engine.stats(), version=VLLM_VERSION)
    info.update(served_model_name=server.args.model_name, host=server.args.host, port=server.port)
    return web.json_response(info, dumps=_compact)


async def _load(server: SimServer, request: web.Request) -> web.Response:
    """Load for SGLang-style routers: ``load`` (sglang-router power-of-two) plus SGLang's fields."""
    return web.json_response(sglang_load(server.engine.stats()), dumps=_compact)
