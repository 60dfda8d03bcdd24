"""Each endpoint read with its own engine's metric names: llm-d-router's ``llm-d.ai/engine-type`` pod
label (``core-metrics-extractor``'s ``engineLabelKey``; the GIE spelling
``inference.networking.k8s.io/engine-type`` as a fallback), else ``defaultEngine``, else the pool's
model server type. Real scrapes of fake vLLM and SGLang servers on loopback.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from prometheus_client import CollectorRegistry

from infergate.app.core import metrics_source
from infergate.config.picker import parse_picker_config
from infergate.datastore.store import Datastore
from infergate.errors import ConfigError
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.sources.scraper import MetricsScraper, MetricsSource
from infergate.telemetry import GatewayMetrics
from infergate.types import EndpointMeta
from tests.integration.test_sources_scraper import FakeModelServer, _metrics, _true, running
from tests.support import async_wait_for, free_port
from tests.unit.test_sources_dialects import SGLANG_TEXT, vllm_text


def _meta(srv: FakeModelServer, labels: Mapping[str, str]) -> EndpointMeta:
    return EndpointMeta(name=f"pod-{srv.port}", address="127.0.0.1", port=srv.port, labels=dict(labels))


async def test_a_mixed_pool_is_read_per_pod_label() -> None:
    vllm, sglang, legacy = (
        FakeModelServer(free_port(), t) for t in (vllm_text(waiting=7), SGLANG_TEXT, SGLANG_TEXT)
    )
    for s in (vllm, sglang, legacy):
        await s.start()
    try:
        ds = Datastore()
        ds.upsert_endpoint(_meta(vllm, {"app": "m"}))  # no label: the pool's type (vllm)
        ds.upsert_endpoint(_meta(sglang, {"app": "m", "llm-d.ai/engine-type": "sglang"}))
        ds.upsert_endpoint(_meta(legacy, {"app": "m", "inference.networking.k8s.io/engine-type": "sglang"}))
        async with running(MetricsScraper(ds, interval=0.02, dialect="vllm")):
            await async_wait_for(lambda: _true(len(ds.candidates()) == 3), timeout=5, what="three scraped")
            assert _metrics(ds, vllm.key).waiting_queue_size == 7
            # SGLANG_TEXT's running batch is 12: read with SGLang's names, not vLLM's
            assert _metrics(ds, sglang.key).running_requests == 12
            assert _metrics(ds, legacy.key).running_requests == 12
    finally:
        for s in (vllm, sglang, legacy):
            await s.stop()


async def test_default_engine_and_a_custom_label_key() -> None:
    srv = FakeModelServer(free_port(), SGLANG_TEXT)
    other = FakeModelServer(free_port(), vllm_text(waiting=3))
    await srv.start()
    await other.start()
    try:
        ds = Datastore()
        ds.upsert_endpoint(_meta(srv, {}))  # unlabelled: defaultEngine sglang
        ds.upsert_endpoint(_meta(other, {"example.com/engine": "vllm"}))
        source = MetricsSource(default_engine="sglang", engine_label="example.com/engine")
        async with running(MetricsScraper(ds, interval=0.02, source=source)):
            await async_wait_for(lambda: _true(len(ds.candidates()) == 2), timeout=5, what="both scraped")
            assert _metrics(ds, srv.key).running_requests == 12
            assert _metrics(ds, other.key).waiting_queue_size == 3
    finally:
        await srv.stop()
        await other.stop()


async def test_a_label_naming_no_known_engine_is_not_scraped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    srv = FakeModelServer(free_port(), vllm_text(waiting=1))
    await srv.start()
    try:
        ds = Datastore()
        ds.upsert_endpoint(_meta(srv, {"llm-d.ai/engine-type": "my-custom-engine"}))
        metrics = GatewayMetrics(CollectorRegistry())
        labels = {"source_type": "metrics-data-source", "extractor_type": "core-metrics-extractor"}

        async def counted() -> bool:
            return (
                metrics.registry.get_sample_value("llm_d_epp_datalayer_extract_errors_total", labels) or 0
            ) >= 2

        async with running(MetricsScraper(ds, interval=0.02, metrics=metrics)):
            await async_wait_for(counted, timeout=5, what="extract errors")
        assert ds.candidates() == [] and srv.hits["/metrics"] == 0
        assert sum("my-custom-engine" in r.getMessage() for r in caplog.records) == 1  # warned once
    finally:
        await srv.stop()


def _source(parameters: str) -> MetricsSource | None:
    text = f"plugins:\n- type: core-metrics-extractor\n  parameters: {parameters}\n- type: queue-scorer\n"
    cfg = parse_picker_config(text)
    build_scheduler(cfg)
    return metrics_source(cfg)


def test_the_extractor_parameters_reach_the_scraper() -> None:
    source = _source("{defaultEngine: trtllm-serve, engineLabelKey: example.com/engine}")
    assert source is not None and (source.default_engine, source.engine_label) == (
        "trtllm-serve",
        "example.com/engine",
    )
    plain = _source("{defaultEngine: vllm}")  # upstream's default: the pool's type stays in force
    assert plain is not None and plain.default_engine is None
    mine = _source("{engineConfigs: [{name: mine, queuedRequestsSpec: q}]}")
    assert mine is not None and [d.name for d in mine.engines] == ["mine"]
    with pytest.raises(ConfigError, match="defaultEngine"):
        _source("{defaultEngine: triton}")


def test_default_engine_and_the_pools_type_must_agree() -> None:
    with pytest.raises(ConfigError, match="disagree"):
        MetricsScraper(Datastore(), dialect="sglang", source=MetricsSource(default_engine="trtllm-serve"))
    MetricsScraper(Datastore(), dialect="sglang", source=MetricsSource(default_engine="sglang"))


async def test_a_custom_engine_is_scraped_with_its_names_and_custom_metrics() -> None:
    text = '# TYPE my_queue gauge\nmy_queue{state="waiting"} 6\n# TYPE my_depth gauge\nmy_depth 0.75\n'
    srv = FakeModelServer(free_port(), text)
    await srv.start()
    try:
        source = _source(
            "{engineConfigs: [{name: my-engine, queuedRequestsSpec: 'my_queue{state=waiting}', "
            "customMetrics: [{attributeKey: depth, metricSpec: my_depth}]}]}"
        )
        ds = Datastore()
        ds.upsert_endpoint(_meta(srv, {"llm-d.ai/engine-type": "my-engine"}))
        async with running(MetricsScraper(ds, interval=0.02, source=source)):
            await async_wait_for(lambda: _true(len(ds.candidates()) == 1), timeout=5, what="scraped")
            m = _metrics(ds, srv.key)
            assert m.waiting_queue_size == 6
            assert dict(m.attributes) == {("depth", "core-metrics-extractor"): 0.75}
    finally:
        await srv.stop()
