"""Command-line flags of ``infergate simulate``: vLLM's own flags plus the simulator's.

The simulator must drop in where ``vllm serve`` / ``python3 -m vllm.entrypoints.openai.api_server`` ran,
so it accepts vLLM's spelling of every flag it models, warns about (and ignores) vLLM flags it does not
model, and reads ``PORT`` / ``VLLM_ALLOW_RUNTIME_LORA_UPDATING`` from the environment like vLLM does.
Unknown flags are removed *before* argparse sees the arguments so that an unknown flag's value is never
mistaken for the positional model name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from infergate.simulator.disagg import KvTransfer
from infergate.simulator.disagg import parse_config as parse_kv_transfer
from infergate.simulator.engine_types import EngineConfig

DEFAULT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"

# vLLM flags that take no value (so the token after them is NOT their value).
_KNOWN_BOOLEAN_FLAGS = frozenset(
    {
        "--trust-remote-code",
        "--enforce-eager",
        "--disable-log-requests",
        "--disable-log-stats",
        "--enable-log-requests",
        "--enable-chunked-prefill",
        "--no-enable-chunked-prefill",
        "--enable-auto-tool-choice",
        "--disable-frontend-multiprocessing",
        "--enable-server-load-tracking",
        "--enable-request-id-headers",
        "--disable-fastapi-docs",
        "--disable-uvicorn-access-log",
        "--skip-tokenizer-init",
        "--disable-custom-all-reduce",
        "--disable-sliding-window",
        "--disable-async-output-proc",
        "--enable-sleep-mode",
        "--enable-expert-parallel",
        "--async-scheduling",
        "--no-async-scheduling",
        "--enable-force-include-usage",
        "--enable-tokenizer-info-endpoint",
        "--headless",
    }
)


class ArgsError(ValueError):
    """A flag value the simulator cannot use (reported as a usage error, exit code 2)."""


@dataclass(frozen=True)
class LoraModule:
    """One ``--lora-modules`` entry: ``name=path`` or the JSON form."""

    name: str
    path: str
    base_model_name: str | None = None


@dataclass(frozen=True)
class SimulatorArgs:
    """Everything the simulator needs from its command line and environment."""

    model: str = DEFAULT_MODEL
    served_model_names: tuple[str, ...] = (DEFAULT_MODEL,)
    host: str = "0.0.0.0"
    port: int = 8000
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    block_size: int | None = None
    gpu_memory_utilization: float | None = None
    enable_prefix_caching: bool = True
    tensor_parallel_size: int = 1
    enable_lora: bool = False
    max_loras: int = 1
    max_cpu_loras: int | None = None
    max_lora_rank: int = 16
    lora_modules: tuple[LoraModule, ...] = ()
    allow_runtime_lora_updating: bool = False
    max_n_sequences: int = 16384  # VLLM_MAX_N_SEQUENCES: the largest `n` a request may ask for
    profile: str | None = None
    seed: int = 0
    num_gpu_blocks: int | None = None
    legacy_metrics: bool = False
    echo: bool = False
    kv_events_endpoint: str | None = None
    kv_events_topic: str = ""
    kv_events_encoding: str = "map"
    prefix_caching_hash_algo: str = "sha256"
    hash_seed: str | None = None  # PYTHONHASHSEED
    kv_events_int_hashes: bool = True  # VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES
    time_scale: float = 1.0
    prompt_tokens_details: bool = False
    enable_server_load_tracking: bool = False
    log_level: str = "info"
    tokenizer: str | None = None  # --tokenizer: a tokenizer.json (None: the built-in tokenizer)
    kv_transfer: KvTransfer | None = None  # --kv-transfer-config (P/D disaggregation)
    kv_transfer_bandwidth: float = 25e9  # bytes/s
    kv_transfer_latency: float = 0.002  # s
    ignored_flags: tuple[str, ...] = field(default=())

    def engine_config(self) -> EngineConfig:
        """EngineConfig from the command line; flags left unset keep the engine's defaults."""
        overrides: dict[str, Any] = {
            "model": self.model,
            "enable_prefix_caching": self.enable_prefix_caching,
            "enable_lora": self.enable_lora,
            "max_loras": self.max_loras,
            "max_cpu_loras": self.max_cpu_loras,
            "max_lora_rank": self.max_lora_rank,
            "tensor_parallel_size": self.tensor_parallel_size,
            "seed": self.seed,
            "prefix_caching_hash_algo": self.prefix_caching_hash_algo,
            "hash_seed": self.hash_seed,
            "kv_events_int_hashes": self.kv_events_int_hashes,
            "kv_transfer_bandwidth": self.kv_transfer_bandwidth,
            "kv_transfer_latency": self.kv_transfer_latency,
        }
        optional = {
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "max_model_len": self.max_model_len,
            "block_size": self.block_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "num_gpu_blocks": self.num_gpu_blocks,
            "profile": self.profile,
        }
        overrides.update({k: v for k, v in optional.items() if v is not None})
        return EngineConfig(**overrides)

    @property
    def model_name(self) -> str:
        """The name requests and metrics use for the base model (first served name, as vLLM)."""
        return self.served_model_names[0]


def _lora_module(text: str) -> LoraModule:
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"invalid JSON for --lora-modules: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data.get("path"):
            raise argparse.ArgumentTypeError("--lora-modules JSON needs string fields 'name' and 'path'")
        base = data.get("base_model_name")
        return LoraModule(str(data["name"]), str(data["path"]), str(base) if base else None)
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--lora-modules expects name=path or JSON, got {text!r}")
    return LoraModule(name, path)


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser; also answers ``infergate simulate --help``."""
    p = argparse.ArgumentParser(
        prog="infergate simulate",
        description=(
            "A CPU-only stand-in for `vllm serve`: vLLM's OpenAI HTTP API and /metrics, backed by a "
            "calibrated engine model (continuous batching, paged KV cache, prefix caching, LoRA). "
            "Unknown vLLM flags are ignored with a warning."
        ),
        allow_abbrev=False,
    )
    p.add_argument(
        "model_tag", nargs="?", default=None, metavar="MODEL", help="model (as in `vllm serve MODEL`)"
    )
    v = p.add_argument_group("vLLM flags")
    v.add_argument("--model", default=None, help=f"served model (default {DEFAULT_MODEL})")
    v.add_argument("--served-model-name", nargs="+", default=None, help="name(s) the API answers to")
    v.add_argument("--host", default=None, help="bind address (default 0.0.0.0)")
    v.add_argument("--port", type=int, default=None, help="port (default $PORT or 8000)")
    v.add_argument("--max-num-seqs", type=int, default=None)
    v.add_argument("--max-num-batched-tokens", type=int, default=None)
    v.add_argument("--max-model-len", type=int, default=None)
    v.add_argument("--block-size", type=int, default=None)
    v.add_argument("--gpu-memory-utilization", type=float, default=None)
    v.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    v.add_argument(
        "--prefix-caching-hash-algo",
        choices=("sha256", "sha256_cbor"),
        default="sha256",
        help="block hash: SHA-256 of the pickled (parent, tokens, extra keys) or of their canonical CBOR",
    )
    v.add_argument(
        "--tokenizer",
        default=None,
        metavar="PATH",
        help="a HuggingFace tokenizer.json (or a directory holding one); default: the built-in tokenizer",
    )
    v.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    v.add_argument("--enable-lora", action="store_true")
    v.add_argument("--max-loras", type=int, default=1)
    v.add_argument("--max-cpu-loras", type=int, default=None)
    v.add_argument("--max-lora-rank", type=int, default=16)
    v.add_argument("--lora-modules", nargs="+", type=_lora_module, default=[], metavar="NAME=PATH|JSON")
    v.add_argument("--seed", type=int, default=0, help="engine seed (deterministic output lengths)")
    v.add_argument(
        "--kv-events-config",
        default=None,
        help='JSON as vLLM, e.g. {"enable_kv_cache_events":true,"endpoint":"tcp://*:5557","topic":""}',
    )
    v.add_argument(
        "--kv-transfer-config",
        default=None,
        help='P/D disaggregation as vLLM, e.g. {"kv_connector":"NixlConnector","kv_role":"kv_both"}',
    )
    v.add_argument(
        "--enable-prompt-tokens-details",
        action="store_true",
        help="report usage.prompt_tokens_details.cached_tokens (prefix-cache hits)",
    )
    v.add_argument(
        "--enable-server-load-tracking",
        action="store_true",
        help="count in-flight generation requests for GET /load",
    )
    v.add_argument("--uvicorn-log-level", default=None, help="log level (debug|info|warning|error)")
    s = p.add_argument_group("simulator flags")
    s.add_argument("--profile", default=None, help="hardware/model timing profile (default llama3.1-8b-h100)")
    s.add_argument("--num-gpu-blocks", type=int, default=None, help="override the KV cache size in blocks")
    s.add_argument(
        "--legacy-metrics",
        action="store_true",
        help="expose pre-0.11 metric names (vllm:gpu_cache_usage_perc, vllm:gpu_prefix_cache_*, ...)",
    )
    s.add_argument("--echo", action="store_true", help="generated text repeats the prompt instead of filler")
    s.add_argument(
        "--kv-transfer-bandwidth",
        type=float,
        default=25.0,
        metavar="GBPS",
        help="P/D: KV pulled from a prefill instance, GB/s per TP rank (default 25)",
    )
    s.add_argument(
        "--kv-transfer-latency-ms",
        type=float,
        default=2.0,
        help="P/D: fixed cost of one KV pull in ms (default 2)",
    )
    s.add_argument(
        "--kv-events-endpoint", default=None, help="publish vLLM KV events over ZMQ (e.g. tcp://*:5557)"
    )
    s.add_argument(
        "--kv-events-encoding",
        choices=("map", "array"),
        default="map",
        help="KV event encoding: maps with a 'type' key (vLLM 0.33) or positional arrays (vLLM 0.9-0.17)",
    )
    s.add_argument(
        "--time-scale",
        type=_positive_float,
        default=1.0,
        help="multiply simulated step durations (0.1 = ten times faster than the modelled GPU)",
    )
    return p


def _option_strings(parser: argparse.ArgumentParser) -> dict[str, int | str | None]:
    """Known option strings → their nargs (None = one value, 0 = flag)."""
    known: dict[str, int | str | None] = {}
    for action in parser._actions:
        for opt in action.option_strings:
            known[opt] = action.nargs
    return known


def split_unknown(argv: Sequence[str], parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """Separate vLLM flags the simulator does not model (and their values) from the rest.

    An unknown ``--flag`` takes the next token as its value unless it is a known boolean vLLM flag, is
    written ``--flag=value``, or the next token is itself an option.
    """
    known = _option_strings(parser)
    keep: list[str] = []
    unknown: list[str] = []
    i = 0
    args = list(argv)
    while i < len(args):
        tok = args[i]
        if tok == "--":
            keep.extend(args[i:])
            break
        if tok.startswith("-") and len(tok) > 1 and not _is_number(tok):
            name = tok.split("=", 1)[0]
            if name in known or tok in ("-h", "--help"):
                keep.append(tok)
                i += 1
                continue
            unknown.append(tok)
            i += 1
            takes_value = "=" not in tok and name not in _KNOWN_BOOLEAN_FLAGS
            if (
                takes_value
                and i < len(args)
                and not (args[i].startswith("-") and not _is_number(args[i]))
                and not name.startswith("--no-")
                and not name.startswith("--disable-")
            ):
                unknown[-1] = f"{tok} {args[i]}"
                i += 1
            continue
        keep.append(tok)
        i += 1
    return keep, unknown


def _is_number(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def _env_int(env: Mapping[str, str], name: str, default: int, err: TextIO) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        print(f"WARNING: ignoring non-integer {name}={raw!r}", file=err)
        return default


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


def parse_args(
    argv: Sequence[str], env: Mapping[str, str] | None = None, *, stderr: TextIO | None = None
) -> SimulatorArgs:
    """Parse vLLM-style arguments; warn on ``stderr`` about ignored flags.

    Raises ``SystemExit`` (argparse) on invalid values of known flags and ``--help``.
    """
    env = os.environ if env is None else env
    err = sys.stderr if stderr is None else stderr
    parser = build_parser()
    keep, unknown = split_unknown(argv, parser)
    # `vllm serve MODEL ...` copied with the sub-command: drop a leading "serve".
    if keep and keep[0] == "serve":
        keep = keep[1:]
    ns = parser.parse_args(keep)
    for flag in unknown:
        print(f"WARNING: infergate simulate ignores vLLM flag not modelled: {flag}", file=err)

    model = ns.model or ns.model_tag or DEFAULT_MODEL
    if ns.model and ns.model_tag and ns.model != ns.model_tag:
        print(f"WARNING: positional model {ns.model_tag!r} overrides --model {ns.model!r}", file=err)
        model = ns.model_tag
    served = tuple(ns.served_model_name) if ns.served_model_name else (model,)

    port = ns.port
    if port is None:
        env_port = env.get("PORT", "").strip()
        if env_port:
            try:
                port = int(env_port)
            except ValueError:
                print(f"WARNING: ignoring non-numeric PORT={env_port!r}", file=err)
        port = 8000 if port is None else port

    kv_endpoint = ns.kv_events_endpoint
    kv_topic = ""
    if ns.kv_events_config:
        try:
            kv = json.loads(ns.kv_events_config)
        except json.JSONDecodeError:
            parser.error("--kv-events-config: invalid JSON")
        if isinstance(kv, dict) and kv.get("enable_kv_cache_events"):
            kv_endpoint = kv_endpoint or str(kv.get("endpoint") or "tcp://*:5557")
            kv_topic = str(kv.get("topic") or "")

    kv_transfer = None
    if ns.kv_transfer_config:
        try:
            kv_transfer = parse_kv_transfer(
                ns.kv_transfer_config, env, ns.tensor_parallel_size, lambda m: print(m, file=err)
            )
        except ValueError as exc:
            parser.error(str(exc))
    if ns.kv_transfer_bandwidth <= 0 or ns.kv_transfer_latency_ms < 0:
        parser.error("--kv-transfer-bandwidth must be positive and --kv-transfer-latency-ms not negative")

    loras = tuple(ns.lora_modules)
    if loras and not ns.enable_lora:
        print("WARNING: --lora-modules given without --enable-lora; enabling LoRA", file=err)

    return SimulatorArgs(
        model=model,
        served_model_names=served,
        host=ns.host or "0.0.0.0",
        port=port,
        max_num_seqs=ns.max_num_seqs,
        max_num_batched_tokens=ns.max_num_batched_tokens,
        max_model_len=ns.max_model_len,
        block_size=ns.block_size,
        gpu_memory_utilization=ns.gpu_memory_utilization,
        enable_prefix_caching=bool(ns.enable_prefix_caching),
        tensor_parallel_size=ns.tensor_parallel_size,
        enable_lora=bool(ns.enable_lora or loras),
        max_loras=ns.max_loras,
        max_cpu_loras=ns.max_cpu_loras,
        max_lora_rank=ns.max_lora_rank,
        lora_modules=loras,
        allow_runtime_lora_updating=_truthy(env.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING")),
        max_n_sequences=_env_int(env, "VLLM_MAX_N_SEQUENCES", 16384, err),
        profile=ns.profile,
        seed=ns.seed,
        num_gpu_blocks=ns.num_gpu_blocks,
        legacy_metrics=bool(ns.legacy_metrics),
        echo=bool(ns.echo),
        kv_events_endpoint=kv_endpoint,
        kv_events_topic=kv_topic,
        kv_events_encoding=ns.kv_events_encoding,
        prefix_caching_hash_algo=ns.prefix_caching_hash_algo,
        hash_seed=env.get("PYTHONHASHSEED"),
        kv_events_int_hashes=env.get("VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES", "1").strip() != "0",
        time_scale=ns.time_scale,
        prompt_tokens_details=bool(ns.enable_prompt_tokens_details),
        enable_server_load_tracking=bool(ns.enable_server_load_tracking),
        log_level=(ns.uvicorn_log_level or "info"),
        tokenizer=ns.tokenizer,
        kv_transfer=kv_transfer,
        kv_transfer_bandwidth=ns.kv_transfer_bandwidth * 1e9,
        kv_transfer_latency=ns.kv_transfer_latency_ms / 1000.0,
        ignored_flags=tuple(unknown),
    )
