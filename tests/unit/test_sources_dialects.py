"""Parsing of vLLM, SGLang and TensorRT-LLM exposition text into EndpointMetrics (exact values)."""

from __future__ import annotations

import random

import pytest

from infergate.errors import ConfigError
from infergate.sources.dialects import get_dialect, parse_metrics, parse_metrics_report
from infergate.types import EndpointMetrics

BASE_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
M = f'model_name="{BASE_MODEL}",engine="0"'


def _histogram(name: str, buckets: list[float], count: int) -> str:
    lines = [f"# HELP {name} Histogram of {name}.", f"# TYPE {name} histogram"]
    for i, b in enumerate(buckets):
        lines.append(f'{name}_bucket{{le="{b}",{M}}} {float(min(count, i * 3))}')
    lines.append(f'{name}_bucket{{le="+Inf",{M}}} {float(count)}')
    lines.append(f"{name}_count{{{M}}} {float(count)}")
    lines.append(f"{name}_sum{{{M}}} {count * 0.42}")
    lines.append(f"# HELP {name}_created Created.")
    lines.append(f"# TYPE {name}_created gauge")
    lines.append(f"{name}_created{{{M}}} 1.7326e+09")
    return "\n".join(lines)


def vllm_text(
    *,
    running: int = 3,
    waiting: int = 7,
    kv: float = 0.4375,
    legacy_kv: bool = False,
    lora: bool = True,
) -> str:
    """A vLLM V1 /metrics page: the gauges the gateway reads among the many it does not."""
    kv_name = "vllm:gpu_cache_usage_perc" if legacy_kv else "vllm:kv_cache_usage_perc"
    parts = [
        "# HELP python_gc_objects_collected_total Objects collected during gc",
        "# TYPE python_gc_objects_collected_total counter",
        'python_gc_objects_collected_total{generation="0"} 12345.0',
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{M}}} {float(running)}",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{M}}} {float(waiting)}",
        "# HELP vllm:num_requests_waiting_by_reason Waiting requests by reason.",
        "# TYPE vllm:num_requests_waiting_by_reason gauge",
        f'vllm:num_requests_waiting_by_reason{{{M},reason="capacity"}} 99.0',
        f"# HELP {kv_name} KV-cache usage. 1 means 100 percent usage.",
        f"# TYPE {kv_name} gauge",
        f"{kv_name}{{{M}}} {kv}",
        "# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.",
        "# TYPE vllm:prefix_cache_queries_total counter",
        f"vllm:prefix_cache_queries_total{{{M}}} 4096.0",
        "# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.",
        "# TYPE vllm:num_preemptions_total counter",
        f"vllm:num_preemptions_total{{{M}}} 0.0",
        _histogram("vllm:time_to_first_token_seconds", [0.001, 0.005, 0.01, 0.02, 0.04, 0.1, 0.5, 1.0], 20),
        _histogram("vllm:e2e_request_latency_seconds", [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 5.0, 10.0], 20),
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig",
        "# TYPE vllm:cache_config_info gauge",
        'vllm:cache_config_info{block_size="16",cache_dtype="auto",calculate_kv_scales="False",'
        'enable_prefix_caching="True",engine="0",gpu_memory_utilization="0.9",num_cpu_blocks="None",'
        'num_gpu_blocks="26306",prefix_caching_hash_algo="sha256",swap_space="4"} 1.0',
    ]
    if lora:
        parts += [
            "# HELP vllm:lora_requests_info Running stats on lora requests.",
            "# TYPE vllm:lora_requests_info gauge",
            'vllm:lora_requests_info{max_lora="2",running_lora_adapters="",waiting_lora_adapters=""}'
            " 1.7326e+09",
            'vllm:lora_requests_info{max_lora="2",running_lora_adapters="food-review,cad-fabricator",'
            'waiting_lora_adapters="sql-lora"} 1.7326000235e+09',
            'vllm:lora_requests_info{max_lora="2",running_lora_adapters="food-review",'
            'waiting_lora_adapters=""} 1.7326000123e+09',
        ]
    return "\n".join(parts) + "\n"


SGLANG_TEXT = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 4.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.61
# HELP sglang:gen_throughput The generation throughput (token/s).
# TYPE sglang:gen_throughput gauge
sglang:gen_throughput{model_name="meta-llama/Llama-3.1-8B-Instruct"} 812.5
# HELP sglang:cache_config_info Cache config.
# TYPE sglang:cache_config_info gauge
sglang:cache_config_info{num_pages="120000",page_size="1"} 1.0
# HELP sglang:num_requests_total Number of requests processed.
# TYPE sglang:num_requests_total counter
sglang:num_requests_total{model_name="meta-llama/Llama-3.1-8B-Instruct",is_streaming="true"} 310.0
sglang:num_requests_total{model_name="meta-llama/Llama-3.1-8B-Instruct",is_streaming="false"} 42.0
"""

TRTLLM_SERVE_TEXT = """\
# HELP trtllm_num_requests_waiting Number of waiting requests.
# TYPE trtllm_num_requests_waiting gauge
trtllm_num_requests_waiting{model_name="llama"} 2.0
# HELP trtllm_num_requests_running Number of running requests.
# TYPE trtllm_num_requests_running gauge
trtllm_num_requests_running{model_name="llama"} 9.0
# HELP trtllm_kv_cache_utilization KV cache utilization.
# TYPE trtllm_kv_cache_utilization gauge
trtllm_kv_cache_utilization{model_name="llama"} 0.25
# TYPE trtllm_kv_cache_tokens_per_block gauge
trtllm_kv_cache_tokens_per_block{model_name="llama"} 32.0
# TYPE trtllm_kv_cache_max_blocks gauge
trtllm_kv_cache_max_blocks{model_name="llama"} 8192.0
# HELP trtllm_request_success_total Count of successfully processed requests.
# TYPE trtllm_request_success_total counter
trtllm_request_success_total{model_name="llama",engine_type="trtllm",finished_reason="stop"} 150.0
trtllm_request_success_total{model_name="llama",engine_type="trtllm",finished_reason="length"} 5.0
"""

TRITON_TRTLLM_TEXT = """\
# HELP nv_trt_llm_request_metrics TRT LLM request metrics
# TYPE nv_trt_llm_request_metrics gauge
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="context",version="1"} 1
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="scheduled",version="1"} 6
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="max",version="1"} 512
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"} 6
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="waiting",version="1"} 3
# HELP nv_trt_llm_kv_cache_block_metrics TRT LLM KV cache block metrics
# TYPE nv_trt_llm_kv_cache_block_metrics gauge
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="tensorrt_llm",version="1"} 0.5
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="tokens_per",model="tensorrt_llm",version="1"} 64
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="tensorrt_llm",version="1"} 4000
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="tensorrt_llm",version="1"} 2000
"""


def test_vllm_v1_with_lora_picks_newest_series() -> None:
    assert parse_metrics(vllm_text(), "vllm", 12.5) == EndpointMetrics(
        waiting_queue_size=7,
        running_requests=3,
        kv_cache_usage=0.4375,
        running_adapters=frozenset({"food-review", "cad-fabricator"}),
        waiting_adapters=frozenset({"sql-lora"}),
        max_active_adapters=2,
        block_size=16,
        num_gpu_blocks=26306,
        updated_at=12.5,
    )


def test_vllm_legacy_kv_name_and_no_lora() -> None:
    m = parse_metrics(vllm_text(kv=0.9, legacy_kv=True, lora=False, running=0, waiting=0), "vllm", 1.0)
    assert m == EndpointMetrics(kv_cache_usage=0.9, block_size=16, num_gpu_blocks=26306, updated_at=1.0)


def test_vllm_new_kv_name_wins_over_legacy() -> None:
    text = vllm_text(kv=0.2) + "# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc 0.7\n"
    assert parse_metrics(text, "vllm", 1.0).kv_cache_usage == 0.2


def test_vllm_data_parallel_ranks_add_up_and_kv_averages() -> None:
    text = (
        'vllm:num_requests_waiting{engine="0"} 2\nvllm:num_requests_waiting{engine="1"} 5\n'
        'vllm:kv_cache_usage_perc{engine="0"} 0.2\nvllm:kv_cache_usage_perc{engine="1"} 0.6\n'
    )
    m = parse_metrics(text, "vllm", 3.0)
    assert m.waiting_queue_size == 7
    assert m.kv_cache_usage == pytest.approx(0.4)


def test_lora_series_with_equal_values_uses_exposition_timestamp() -> None:
    text = (
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="a",waiting_lora_adapters=""} 5 1000\n'
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="b",waiting_lora_adapters=""} 5 2000\n'
    )
    m = parse_metrics(text, "vllm", 1.0)
    assert (m.running_adapters, m.max_active_adapters) == (frozenset({"b"}), 4)


def test_sglang() -> None:
    assert parse_metrics(SGLANG_TEXT, "sglang", 2.0) == EndpointMetrics(
        waiting_queue_size=4,
        running_requests=12,
        kv_cache_usage=0.61,
        block_size=1,
        num_gpu_blocks=120000,
        finished_requests=352.0,
        updated_at=2.0,
    )


def test_trtllm_serve() -> None:
    assert parse_metrics(TRTLLM_SERVE_TEXT, "trtllm", 2.0) == EndpointMetrics(
        waiting_queue_size=2,
        running_requests=9,
        kv_cache_usage=0.25,
        block_size=32,
        num_gpu_blocks=8192,
        finished_requests=155.0,
        updated_at=2.0,
    )


def test_triton_trtllm() -> None:
    assert parse_metrics(TRITON_TRTLLM_TEXT, "trtllm", 2.0) == EndpointMetrics(
        waiting_queue_size=3,
        running_requests=6,
        kv_cache_usage=0.5,
        block_size=64,
        num_gpu_blocks=4000,
        updated_at=2.0,
    )
    assert get_dialect("triton-tensorrt-llm") is get_dialect("TRTLLM")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<html><body>404 not found</body></html>",
        'vllm:num_requests_waiting{model_name="x" 3\n',  # broken label set
        "vllm:num_requests_waiting NaN\nvllm:kv_cache_usage_perc 7.5\n",
        'vllm:cache_config_info{block_size="None",num_gpu_blocks="lots"} 1\n',
        "\x00\xff garbage \n# TYPE\n#\n",
        'vllm:num_requests_waiting{a=, =""} 1\n',  # prometheus_client's parser raises IndexError here
    ],
)
def test_garbage_never_raises(text: str) -> None:
    m = parse_metrics(text, "vllm", 4.0)
    assert m.updated_at == 4.0
    assert 0.0 <= m.kv_cache_usage <= 1.0
    assert m.waiting_queue_size == 0 and m.block_size is None


def test_one_bad_line_does_not_lose_the_rest() -> None:
    text = vllm_text(waiting=5) + "vllm:num_requests_running{oops 3\n"
    m = parse_metrics(text, "vllm", 1.0)
    assert m.waiting_queue_size == 5 and m.running_requests == 3


def test_line_endings_and_edges() -> None:
    text = (
        "vllm:num_requests_waiting 4\r\n"
        'vllm:num_requests_running{a="b"} 2\r\n'
        "vllm:kv_cache_usage_perc 0.5"  # last line, no newline
    )
    m = parse_metrics(text, "vllm", 1.0)
    assert (m.waiting_queue_size, m.running_requests, m.kv_cache_usage) == (4, 2, 0.5)
    lines = get_dialect("vllm").sample_lines(vllm_text())
    assert sorted(line.split("{")[0] for line in lines) == [
        "vllm:cache_config_info",
        "vllm:kv_cache_usage_perc",
        *["vllm:lora_requests_info"] * 3,
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
    ]


def test_missing_families_reported() -> None:
    report = parse_metrics_report(SGLANG_TEXT, "vllm", 1.0)
    assert report.missing == (
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
    )
    assert parse_metrics_report(vllm_text(), "vllm", 1.0).missing == ()


def test_unknown_dialect_is_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown model server type 'tgi'"):
        parse_metrics("", "tgi", 1.0)


def test_a_page_full_of_unrelated_families_parses_to_the_same_signals() -> None:
    """The filter skips families it does not read; their cost is measured by bench/bench_scrape_parse.py."""
    text = vllm_text()
    big = text + "\n".join(
        _histogram(f"vllm:extra_{i}_seconds", [0.1 * j for j in range(1, 20)], 50) for i in range(40)
    )
    assert parse_metrics(big, "vllm", 1.0) == parse_metrics(text, "vllm", 1.0)
    assert parse_metrics(big, "vllm", 1.0).waiting_queue_size == 7


@pytest.mark.parametrize("legacy", [False, True])
def test_reads_the_simulators_exposition(legacy: bool) -> None:
    """The simulator and the gateway share no constants; a drift in names must fail here."""
    from infergate.simulator.engine import EngineStats
    from infergate.simulator.metrics import SimMetrics

    stats = EngineStats(
        num_running=5,
        num_waiting=2,
        kv_cache_usage=0.375,
        num_gpu_blocks=26306,
        block_size=16,
        prefix_cache_queries=100,
        prefix_cache_hits=40,
        num_preemptions=0,
        prompt_tokens_total=1000,
        generation_tokens_total=500,
        running_loras=("food-review",),
        waiting_loras=("cad-fabricator", "sql-lora"),
        max_loras=2,
        request_success_total={"stop": 3},
    )
    sim = SimMetrics(
        lambda: stats, model_name=BASE_MODEL, max_model_len=131072, legacy=legacy, lora_enabled=True
    )
    # lora_requests_info is recorded after engine steps, one series per state (the newest is current)
    sim.record_lora(2, (), ("food-review",))
    sim.record_lora(2, ("food-review",), ("cad-fabricator", "sql-lora"))
    m = parse_metrics(sim.render()[0].decode(), "vllm", 9.0)
    assert m == EndpointMetrics(
        waiting_queue_size=2,
        running_requests=5,
        kv_cache_usage=0.375,
        running_adapters=frozenset({"food-review"}),
        waiting_adapters=frozenset({"cad-fabricator", "sql-lora"}),
        max_active_adapters=2,
        block_size=16,
        num_gpu_blocks=26306,
        finished_requests=3.0,
        updated_at=9.0,
    )


def _reference_sample_lines(text: str, families: tuple[str, ...]) -> list[str]:
    """Split the page into lines and keep those that start with a family name followed by ``{``, a
    space or a tab, ``\\r`` stripped: what the one-pass pattern must find, in the same order."""
    out = []
    for line in text.split("\n"):
        for f in families:
            if line.startswith(f) and len(line) > len(f) and line[len(f)] in "{ \t":
                out.append(line.rstrip("\r"))
                break
    return out


@pytest.mark.parametrize("dialect", ["vllm", "sglang", "trtllm"])
def test_sample_lines_equal_a_line_by_line_reading_of_random_pages(dialect: str) -> None:
    """Pages built from the dialect's families, longer families sharing their start, HELP/TYPE
    lines, names inside label values and other families' lines, CRLF endings, a first line with no
    newline before it and a last one with none after: the lines found are exactly the reference's."""
    d = get_dialect(dialect)
    rng = random.Random(dialect)
    names = [*d.families, *(f + "_by_reason" for f in d.families), "other:metric", d.families[0][:-1]]
    for _ in range(300):
        lines = []
        for _ in range(rng.randrange(0, 12)):
            name = rng.choice(names)
            lines.append(
                rng.choice(
                    [
                        f"{name} {rng.random()}",
                        f'{name}{{model_name="{rng.choice(names)}"}} 1',
                        f"{name}\t2",
                        f"# HELP {name} help",
                        f"# TYPE {name} gauge",
                        f"{name}_total 3",
                        name,
                        "",
                    ]
                )
            )
        text = "".join(line + rng.choice(["\n", "\r\n"]) for line in lines)
        if rng.random() < 0.5:
            text = text.rstrip("\r\n")
        assert d.sample_lines(text) == _reference_sample_lines(text, d.families), text
