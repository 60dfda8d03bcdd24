"""The simulator's ``/metrics``: vLLM V1 metric names, types and labels on a private registry.

Engine state (gauges and engine-owned counters) is read from ``Engine.stats()`` at scrape time by a
custom collector, so a scrape always matches the engine exactly; per-request latency histograms are
observed by the server from the engine's ``RequestOutput`` stream. ``legacy=True`` exposes the pre-0.11
names instead (``vllm:gpu_cache_usage_perc``, ``vllm:gpu_prefix_cache_*``,
``vllm:time_per_output_token_seconds``) for compatibility tests of metric scrapers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from infergate.simulator.engine import EngineStats
from infergate.simulator.exposition import render_text

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
    960.0, 1920.0, 7680.0,
)  # fmt: skip
N_BUCKETS = (1, 2, 5, 10, 20)
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
PREEMPTION_BUCKETS = (1, 2, 3, 4, 5, 10, 20)
# vLLM's sources of prompt tokens: computed here, found in the local prefix cache, or received
# from a prefill instance (P/D disaggregation, --kv-transfer-config)
PROMPT_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")


def token_buckets(max_model_len: int) -> tuple[float, ...]:
    """vLLM's 1-2-5 series up to ``max_model_len`` (``build_1_2_5_buckets``)."""
    out: list[float] = []
    exp = 1
    while True:
        for m in (1, 2, 5):
            v = m * exp
            if v > max_model_len:
                return tuple(out)
            out.append(float(v))
        exp *= 10


class _EngineCollector(Collector):
    """Builds the engine-state families from one ``stats()`` snapshot per scrape."""

    def __init__(
        self,
        stats: Callable[[], EngineStats],
        *,
        model_name: str,
        legacy: bool,
        lora_enabled: bool,
        cache_info: Mapping[str, str],
    ) -> None:
        self._stats = stats
        self._model = model_name
        self._legacy = legacy
        self._lora = lora_enabled
        self._cache_info = dict(cache_info)
        # vLLM's lora_requests_info: one series per label set ever recorded, each valued with the
        # (unix) time it was last recorded; the current state is the newest series
        self.lora_series: dict[tuple[str, str, str], float] = {}

    def collect(self) -> Iterable[Metric]:
        s = self._stats()
        labels = ["model_name", "engine"]
        values = [self._model, "0"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(values, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(values, value)
            return c

        yield gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", s.num_running
        )
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", s.num_waiting)
        if not self._legacy:
            by_reason = GaugeMetricFamily(
                "vllm:num_requests_waiting_by_reason",
                "Number of requests waiting, by the reason they wait.",
                labels=[*labels, "reason"],
            )
            deferred = s.num_waiting_deferred
            by_reason.add_metric([*values, "capacity"], s.num_waiting - deferred)
            by_reason.add_metric([*values, "deferred"], deferred)
            yield by_reason
        kv_name = "vllm:gpu_cache_usage_perc" if self._legacy else "vllm:kv_cache_usage_perc"
        yield gauge(kv_name, "KV-cache usage. 1 means 100 percent usage.", s.kv_cache_usage)
        pfx = "vllm:gpu_prefix_cache" if self._legacy else "vllm:prefix_cache"
        yield counter(
            f"{pfx}_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            s.prefix_cache_queries,
        )
        yield counter(
            f"{pfx}_hits", "Prefix cache hits, in terms of number of cached tokens.", s.prefix_cache_hits
        )
        yield counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine.", s.num_preemptions
        )
        yield counter(
            "infergate_sim:lora_gpu_loads",
            "Simulator only (not a vLLM metric): LoRA adapters brought into a GPU slot.",
            s.lora_gpu_loads,
        )
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", s.prompt_tokens_total)
        if not self._legacy:
            by_source = CounterMetricFamily(
                "vllm:prompt_tokens_by_source",
                "Number of prompt tokens by source.",
                labels=[*labels, "source"],
            )
            external = s.prompt_tokens_external
            local_hit = s.prompt_tokens_cached - external
            computed = s.prompt_tokens_total - s.prompt_tokens_cached
            for source, value in zip(PROMPT_SOURCES, (computed, local_hit, external), strict=True):
                by_source.add_metric([*values, source], value)
            yield by_source
            yield counter(
                "vllm:prompt_tokens_cached",
                "Number of cached prompt tokens (local + external).",
                s.prompt_tokens_cached,
            )
        yield counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", s.generation_tokens_total
        )
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=[*labels, "finished_reason"],
        )
        reasons = dict.fromkeys(("stop", "length", "abort"), 0)
        reasons.update(s.request_success_total)
        for reason, count in sorted(reasons.items()):
            success.add_metric([*values, reason], count)
        yield success
        if self._lora:
            info = GaugeMetricFamily(
                "vllm:lora_requests_info",
                "Running stats on lora requests.",
                labels=["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
            )
            for label_values, updated in self.lora_series.items():
                info.add_metric(list(label_values), updated)
            yield info
        cache = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=[*sorted(self._cache_info), "engine"],
        )
        info_values = dict(
            self._cache_info, num_gpu_blocks=str(s.num_gpu_blocks), block_size=str(s.block_size)
        )
        cache.add_metric([info_values[k] for k in sorted(self._cache_info)] + ["0"], 1.0)
        yield cache


class SimMetrics:
    """All metrics of one simulator process; ``render()`` gives the Prometheus text."""

    def __init__(
        self,
        stats: Callable[[], EngineStats],
        *,
        model_name: str,
        max_model_len: int,
        legacy: bool = False,
        lora_enabled: bool = False,
        cache_info: Mapping[str, str] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.legacy = legacy
        self._labels = {"model_name": model_name, "engine": "0"}
        info = {
            "block_size": "16",
            "cache_dtype": "auto",
            "enable_prefix_caching": "True",
            "gpu_memory_utilization": "0.92",
            "num_cpu_blocks": "None",
            "num_gpu_blocks": "0",
            "prefix_caching_hash_algo": "sha256",
            "sliding_window": "None",
            "swap_space": "4",
        }
        info.update(cache_info or {})
        self._collector = _EngineCollector(
            stats, model_name=model_name, legacy=legacy, lora_enabled=lora_enabled, cache_info=info
        )
        self.registry.register(self._collector)
        tok = token_buckets(max_model_len)

        def hist(name: str, doc: str, buckets: Iterable[float]) -> Any:
            h = Histogram(name, doc, ["model_name", "engine"], buckets=tuple(buckets), registry=self.registry)
            return h.labels(**self._labels)

        self.ttft = hist(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS
        )
        itl_name = "vllm:time_per_output_token_seconds" if legacy else "vllm:inter_token_latency_seconds"
        self.itl = hist(itl_name, "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
        self.tpot = hist(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            ITL_BUCKETS,
        )
        self.e2e = hist(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.decode_time = hist(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.prompt_tokens = hist("vllm:request_prompt_tokens", "Number of prefill tokens processed.", tok)
        self.generation_tokens = hist(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", tok
        )
        self.max_tokens_param = hist(
            "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", tok
        )
        self.n_param = hist("vllm:request_params_n", "Histogram of the n request parameter.", N_BUCKETS)
        self.queue_time = hist(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.inference_time = hist(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.prefill_time = hist(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.prefill_kv_computed = hist(
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
            tok,
        )
        self.preemptions = hist(
            "vllm:request_num_preemptions",
            "Histogram of the number of preemptions of finished requests.",
            PREEMPTION_BUCKETS,
        )
        self.iteration_tokens = hist(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            ITERATION_TOKEN_BUCKETS,
        )

    def record_lora(self, max_loras: int, running: Sequence[str], waiting: Sequence[str]) -> None:
        """Record the LoRA state after an engine step, as vLLM's logger does on every stats update
        (``set_to_current_time`` on the series of the current labels; older series keep their time)."""
        key = (str(max_loras), ",".join(waiting), ",".join(running))
        self._collector.lora_series[key] = time.time()

    def observe_step(self, prompt_tokens: int, generated: int) -> None:
        """One engine step: vLLM counts the whole prompt of each request that got its first token
        in the step, plus every token sampled in it."""
        self.iteration_tokens.observe(prompt_tokens + generated)

    def observe_finished(
        self,
        *,
        arrival: float,
        first_token: float | None,
        finished: float,
        prompt_tokens: int,
        generated: int,
        max_tokens: int,
        scheduled: float | None = None,
        queued: float | None = None,
        cached_tokens: int = 0,
        preemptions: int = 0,
    ) -> None:
        """Record one finished (non-aborted) request, timestamps on the engine's clock.

        As vLLM's phases: e2e from the API server's arrival, queued from the engine's receipt
        (after the frontend) to first scheduling, prefill from then to the first token, decode from
        the first token to the end, inference = prefill + decode."""
        self.e2e.observe(max(0.0, finished - arrival))
        if first_token is not None:
            self.decode_time.observe(max(0.0, finished - first_token))
            if generated > 1:
                self.tpot.observe(max(0.0, (finished - first_token) / (generated - 1)))
        if scheduled is not None:
            self.queue_time.observe(max(0.0, scheduled - (arrival if queued is None else queued)))
            self.inference_time.observe(max(0.0, finished - scheduled))
            if first_token is not None:
                self.prefill_time.observe(max(0.0, first_token - scheduled))
        self.prefill_kv_computed.observe(prompt_tokens - max(cached_tokens, 0))
        self.preemptions.observe(preemptions)
        self.prompt_tokens.observe(prompt_tokens)
        self.generation_tokens.observe(generated)
        self.max_tokens_param.observe(max_tokens)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type): always the Prometheus text format 0.0.4, whatever ``accept`` asks
        for, as vLLM 0.33 serves ``/metrics`` (prometheus-fastapi-instrumentator's route answers
        before prometheus_client's negotiating app), so names keep their ``vllm:`` colon even for
        a Prometheus that asks for OpenMetrics."""
        del accept
        return render_text(self.registry), CONTENT_TYPE_LATEST
