"""llm-d-router v0.10's split precise-prefix pipeline (``token-producer`` →
``precise-prefix-cache-producer`` → ``prefix-cache-scorer`` naming it, events from an
``endpoint-notification-source``) loads as infergate's one ``precise-prefix-cache-scorer`` plus
a render token producer; what would change nothing is refused by name."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from infergate.app.core import token_producer
from infergate.config.picker import parse_picker_config
from infergate.errors import ConfigError
from infergate.scheduling import build_scheduler
from infergate.scheduling.plugins.precise_prefix import PrecisePrefixParams, PrecisePrefixScorer
from infergate.scheduling.sdk.framework import CycleState
from infergate.telemetry import GatewayMetrics
from infergate.types import Endpoint, EndpointMeta, InferenceRequest
from tests.support import async_wait_for

# llm-d-router's deploy/config/epp-precise-prefix-cache-config.yaml, as shipped
LLM_D_PRECISE = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: token-producer
    parameters:
      modelName: hf-repo/model-name
      vllm:
        url: http://localhost:8000
  - type: endpoint-notification-source
  - type: metrics-data-source
  - type: core-metrics-extractor
  - type: single-profile-handler
  - type: decode-filter
  - type: precise-prefix-cache-producer
    parameters:
      tokenProcessorConfig:
        blockSize: 64
      indexerConfig:
        kvBlockIndexConfig:
          enableMetrics: true
  - type: prefix-cache-scorer
    parameters:
      prefixMatchInfoProducerName: precise-prefix-cache-producer
  - type: kv-cache-utilization-scorer
  - type: queue-scorer
  - type: max-score-picker
dataLayer:
  sources:
    - pluginRef: metrics-data-source
      extractors:
        - pluginRef: core-metrics-extractor
    - pluginRef: endpoint-notification-source
      extractors:
        - pluginRef: precise-prefix-cache-producer
schedulingProfiles:
  - name: default
    plugins:
      - pluginRef: decode-filter
      - pluginRef: prefix-cache-scorer
        weight: 2.0
      - pluginRef: kv-cache-utilization-scorer
        weight: 1.0
      - pluginRef: queue-scorer
        weight: 1.0
      - pluginRef: max-score-picker
"""


def edited(**changes: object) -> str:
    """LLM_D_PRECISE with plugins replaced by type (None removes one)."""
    doc = yaml.safe_load(LLM_D_PRECISE)
    plugins = []
    for p in doc["plugins"]:
        if p["type"] in changes:
            if changes[p["type"]] is None:
                continue
            p = changes[p["type"]]
        plugins.append(p)
    doc["plugins"] = plugins
    return yaml.safe_dump(doc)


def test_the_split_pipeline_is_one_precise_scorer_and_a_render_producer() -> None:
    config = parse_picker_config(LLM_D_PRECISE)
    types = {p.ref: p.type for p in config.plugins}
    assert types["prefix-cache-scorer"] == "precise-prefix-cache-scorer"  # same name, profiles unchanged
    assert "precise-prefix-cache-producer" not in types
    assert config.data_layer is not None
    assert [s["pluginRef"] for s in config.data_layer["sources"]] == ["metrics-data-source"]
    metrics = GatewayMetrics(CollectorRegistry())
    scheduler = build_scheduler(config, rng=random.Random(0), metrics=metrics)
    scorer = scheduler.plugin("prefix-cache-scorer")
    assert isinstance(scorer, PrecisePrefixScorer) and scorer.block_size == 64  # the producer's
    producer = token_producer(config)
    assert producer is not None
    assert (producer.url, producer.model) == ("http://localhost:8000", "hf-repo/model-name")

    # enableMetrics: the index counters are on /metrics, and move with lookups
    endpoint = Endpoint(meta=EndpointMeta(name="a", address="10.0.0.1", port=8000))
    scorer.index.ingest(endpoint.key, None, [])  # the endpoint's events flow (an empty batch)
    ids = tuple(range(200))  # ids a renderer returned: used as they are, no tokenizer involved
    request = InferenceRequest(request_id="r", model="m", target_model="m", prompt_token_ids=ids)
    scorer.score(request, [endpoint], CycleState())
    text = generate_latest(metrics.registry).decode()
    assert "llm_d_epp_kv_cache_index_lookup_requests_total 1.0" in text
    assert "llm_d_epp_kv_cache_index_lookup_latency_seconds_count 1.0" in text


@pytest.mark.parametrize(
    ("config", "named"),
    [
        (
            edited(**{"prefix-cache-scorer": {"type": "prefix-cache-scorer"}}),
            "plugins[precise-prefix-cache-producer]",
        ),
        (
            edited(
                **{
                    "precise-prefix-cache-producer": None,
                    "prefix-cache-scorer": {"type": "prefix-cache-scorer"},
                }
            ),
            "plugins[token-producer]: a token-producer feeds only precise-prefix-cache-scorer",
        ),
        (
            edited(
                **{
                    "prefix-cache-scorer": {
                        "type": "prefix-cache-scorer",
                        "parameters": {
                            "prefixMatchInfoProducerName": "precise-prefix-cache-producer",
                            "tokenProcessorConfig": {"blockSize": 16},
                        },
                    }
                }
            ),
            "plugins[prefix-cache-scorer].parameters.tokenProcessorConfig: differs",
        ),
        (
            edited(**{"token-producer": {"type": "token-producer", "parameters": {"estimate": {}}}}),
            "only the vllm render backend is supported",
        ),
        (
            edited(
                **{
                    "token-producer": {
                        "type": "token-producer",
                        "parameters": {"udsTokenizerConfig": {"socketFile": "/tmp/t.sock"}},
                    }
                }
            ),
            "udsTokenizerConfig",
        ),
        (
            edited(
                **{
                    "token-producer": {
                        "type": "token-producer",
                        "parameters": {"vllm": {"url": "http://x:1"}},
                    }
                }
            ),
            "modelName is required",
        ),
        (
            edited(
                **{
                    "token-producer": {
                        "type": "token-producer",
                        "parameters": {"modelName": "m", "vllm": {"timeout": "soon"}},
                    }
                }
            ),
            "expected a duration",
        ),
    ],
)
def test_what_would_change_nothing_is_refused(config: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_scheduler(parse_picker_config(config), rng=random.Random(0))
    assert named in str(info.value)


def test_a_render_url_that_is_not_plain_http_is_refused() -> None:
    config = edited(
        **{
            "token-producer": {
                "type": "token-producer",
                "parameters": {"modelName": "m", "vllm": {"url": "https://render:8000"}},
            }
        }
    )
    with pytest.raises(ConfigError, match="TLS is not supported"):
        build_scheduler(parse_picker_config(config), rng=random.Random(0))


async def test_metrics_logging_interval_logs_the_index_counters(caplog: pytest.LogCaptureFixture) -> None:
    scorer = PrecisePrefixScorer(
        PrecisePrefixParams.model_validate(
            {"indexerConfig": {"kvBlockIndexConfig": {"metricsLoggingInterval": 1_000_000}}}  # 1 ms
        )
    )
    tasks = dict(scorer.background_tasks())
    assert set(tasks) == {"kv-events", "kv-index-log"}
    caplog.set_level(logging.INFO, logger="infergate.scheduling.plugins.precise_prefix")
    task = asyncio.ensure_future(tasks["kv-index-log"]())
    try:

        async def logged() -> bool:
            return any("kv-block index: keys=0" in r.getMessage() for r in caplog.records)

        await async_wait_for(logged, timeout=10, what="the index counters logged")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    quiet = PrecisePrefixScorer(PrecisePrefixParams())  # no zmqEndpoint: nothing bound to close
    assert [name for name, _ in quiet.background_tasks()] == ["kv-events"]
