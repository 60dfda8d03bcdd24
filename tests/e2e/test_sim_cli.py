"""``infergate simulate`` flags (vLLM's spelling) and the real command in a child process."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from infergate.simulator.args import LoraModule, parse_args
from tests.support import free_port, start_infergate

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
# shared/seed/vllm-llama3.1-8b-instruct.yaml, after the env assignments and `python3 -m vllm...`
TUTORIAL_ARGS = [
    "--model",
    "meta-llama/Llama-3.1-8B-Instruct",
    "--tensor-parallel-size",
    "1",
    "--port",
    "8000",
    "--enable-lora",
    "--max-loras",
    "2",
    "--max-cpu-loras",
    "12",
]


def test_tutorial_args_parse_unchanged() -> None:
    err = io.StringIO()
    a = parse_args(TUTORIAL_ARGS, {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true", "PORT": "8000"}, stderr=err)
    assert (a.model, a.served_model_names, a.port, a.tensor_parallel_size) == (MODEL, (MODEL,), 8000, 1)
    assert (a.enable_lora, a.max_loras, a.max_cpu_loras) == (True, 2, 12)
    assert a.allow_runtime_lora_updating and a.ignored_flags == () and err.getvalue() == ""


def test_env_port_and_runtime_lora_flag() -> None:
    a = parse_args(["--model", MODEL], {"PORT": "9123", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "False"})
    assert a.port == 9123 and not a.allow_runtime_lora_updating
    b = parse_args(["--model", MODEL, "--port", "7000"], {"PORT": "9123"})
    assert b.port == 7000
    assert parse_args([], {}).port == 8000


def test_equals_form_lora_modules_and_served_names() -> None:
    a = parse_args(
        [
            "--model=m",
            "--served-model-name",
            "alias-a",
            "alias-b",
            "--max-num-seqs=64",
            "--max-num-batched-tokens",
            "2048",
            "--max-model-len=4096",
            "--block-size=32",
            "--gpu-memory-utilization=0.8",
            "--no-enable-prefix-caching",
            "--enable-lora",
            "--max-lora-rank=8",
            "--lora-modules",
            "sql=/a/sql",
            '{"name": "food", "path": "/a/food", "base_model_name": "m"}',
        ],
        {},
    )
    assert a.model == "m" and a.served_model_names == ("alias-a", "alias-b") and a.model_name == "alias-a"
    assert (a.max_num_seqs, a.max_num_batched_tokens, a.max_model_len, a.block_size) == (64, 2048, 4096, 32)
    assert a.gpu_memory_utilization == 0.8 and not a.enable_prefix_caching and a.max_lora_rank == 8
    assert a.lora_modules == (LoraModule("sql", "/a/sql"), LoraModule("food", "/a/food", "m"))
    assert parse_args(["--enable-prefix-caching"], {}).enable_prefix_caching


def test_unknown_flags_warn_and_keep_their_values_away_from_the_model() -> None:
    err = io.StringIO()
    a = parse_args(
        ["serve", "my/model", "--dtype", "bfloat16", "--trust-remote-code", "--swap-space=4", "--port", "1"],
        {},
        stderr=err,
    )
    assert a.model == "my/model" and a.port == 1
    assert a.ignored_flags == ("--dtype bfloat16", "--trust-remote-code", "--swap-space=4")
    text = err.getvalue()
    assert "--dtype bfloat16" in text and "--trust-remote-code" in text and "WARNING" in text
    # an unknown flag before a positional model must not swallow it when the flag is boolean
    b = parse_args(["--enforce-eager", "other/model"], {}, stderr=io.StringIO())
    assert b.model == "other/model"


def test_simulator_flags_and_bad_values() -> None:
    a = parse_args(
        [
            "--profile",
            "llama3.1-8b-a100",
            "--seed",
            "7",
            "--num-gpu-blocks",
            "100",
            "--legacy-metrics",
            "--echo",
            "--time-scale",
            "0.5",
            "--kv-events-config",
            '{"enable_kv_cache_events": true, "endpoint": "tcp://*:5557", "topic": "kv@x@m"}',
        ],
        {},
    )
    assert (a.profile, a.seed, a.num_gpu_blocks, a.legacy_metrics, a.echo) == (
        "llama3.1-8b-a100",
        7,
        100,
        True,
        True,
    )
    assert (a.time_scale, a.kv_events_endpoint, a.kv_events_topic) == (0.5, "tcp://*:5557", "kv@x@m")
    with pytest.raises(SystemExit):
        parse_args(["--max-loras", "two"], {}, stderr=io.StringIO())
    with pytest.raises(SystemExit):
        parse_args(["--lora-modules", "no-equals-sign"], {}, stderr=io.StringIO())


def test_help_lists_vllm_flags() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "infergate", "simulate", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    for flag in (
        "--max-loras",
        "--lora-modules",
        "--enable-prefix-caching",
        "--legacy-metrics",
        "--time-scale",
    ):
        assert flag in out.stdout


def test_simulate_command_with_tutorial_args(tmp_path: Path) -> None:
    port = free_port()
    args = [a for a in TUTORIAL_ARGS if a not in ("--port", "8000")]  # PORT env chooses the port instead
    child = start_infergate(
        ["simulate", *args, "--dtype", "bfloat16"],
        tmp_path,
        health_url=f"http://127.0.0.1:{port}/health",
        env={"PORT": str(port), "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true", "VLLM_USE_V1": "1"},
    )
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sim", max_retries=0)
        with client:
            r = client.completions.create(
                model=MODEL,
                prompt="Write as if you were a critic: San Francisco",
                max_tokens=5,
                temperature=0,
            )
            assert r.model == MODEL and r.usage is not None and r.usage.completion_tokens <= 5
            resp = client.post(
                "/load_lora_adapter",
                body={"lora_name": "food-review", "lora_path": "Kawon/llama3.1-food-finetune_v14_r8"},
                cast_to=str,
            )
            assert "added successfully" in resp
            assert "food-review" in {m.id for m in client.models.list().data}
            chat = client.chat.completions.create(
                model="food-review", messages=[{"role": "user", "content": "Review a pizza"}], max_tokens=4
            )
            assert chat.model == "food-review"
        assert "ignores vLLM flag not modelled: --dtype bfloat16" in child.output()
    finally:
        code = child.stop(signal.SIGTERM)
    assert code == 0, child.output()
    assert "shutting down" in child.output()
