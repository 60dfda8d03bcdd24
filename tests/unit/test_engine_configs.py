"""``core-metrics-extractor``'s ``engineConfigs``: custom engines and their ``customMetrics``.

Field names as llm-d-router v0.10's extractor (``name``, ``queuedRequestsSpec``, ...,
``customMetrics: [{attributeKey, metricSpec}]``). A custom engine is a dialect built from its
selector strings; an entry named like a built-in engine replaces that engine's names (an empty
spec read as absent); custom metrics become attributes of producer ``core-metrics-extractor``.
"""

from __future__ import annotations

import pytest

from infergate.app.core import metrics_source
from infergate.config.picker import parse_picker_config
from infergate.config.picker_units import parse_metric_selector
from infergate.datastore.store import Datastore
from infergate.errors import ConfigError
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.sources.dialects import VLLM, engine_dialect, parse_metrics_report
from infergate.sources.scraper import MetricsScraper, MetricsSource
from infergate.types import CORE_METRICS_PRODUCER, NO_ATTRIBUTES
from tests.unit.test_sources_dialects import vllm_text

CUSTOM_TEXT = """\
# HELP custom_queue_size Requests queued.
# TYPE custom_queue_size gauge
custom_queue_size{status="waiting"} 4
custom_queue_size{status="parked"} 40
# TYPE custom_running_size gauge
custom_running_size 2
# TYPE custom_cache_utilization gauge
custom_cache_utilization 0.25
# TYPE custom_queue_depth gauge
custom_queue_depth{tier="silver"} 9
custom_queue_depth{tier="gold"} 3
"""

CUSTOM_ENGINE = """
plugins:
- type: core-metrics-extractor
  parameters:
    engineConfigs:
    - name: my-custom-engine
      queuedRequestsSpec: "custom_queue_size{status=waiting}"
      runningRequestsSpec: custom_running_size
      kvUsageSpec: custom_cache_utilization
      customMetrics:
      - attributeKey: custom.queue_depth
        metricSpec: 'custom_queue_depth{tier="gold"}'
- type: queue-scorer
"""


def _source(text: str) -> MetricsSource:
    cfg = parse_picker_config(text)
    build_scheduler(cfg)  # the config check the gateway runs at start
    source = metrics_source(cfg)
    assert source is not None
    return source


def test_selectors_parse_as_upstream_writes_them() -> None:
    assert parse_metric_selector("custom_queue_size{status=waiting}") == (
        "custom_queue_size",
        (("status", "waiting"),),
    )
    assert parse_metric_selector(' x:y{b="2", a=1} ') == ("x:y", (("a", "1"), ("b", "2")))
    for bad in ("", "two words", "x{a}", "x{a=1,}", "9x", "x{a=1}y"):
        with pytest.raises(ValueError):
            parse_metric_selector(bad)


def test_a_custom_engine_reads_its_own_names_and_custom_metrics() -> None:
    (engine,) = _source(CUSTOM_ENGINE).engines
    report = parse_metrics_report(CUSTOM_TEXT, engine, now=5.0)
    m = report.metrics
    assert (m.waiting_queue_size, m.running_requests, m.kv_cache_usage) == (4, 2, 0.25)
    assert dict(m.attributes) == {("custom.queue_depth", CORE_METRICS_PRODUCER): 3.0}
    assert report.missing == ()


def test_a_missing_custom_metric_is_reported_and_leaves_no_attribute() -> None:
    engine = engine_dialect("e", queued="custom_queue_size", custom=[("absent", "nowhere_total")])
    report = parse_metrics_report(CUSTOM_TEXT, engine, now=1.0)
    assert report.missing == ("nowhere_total",)
    assert report.metrics.attributes is NO_ATTRIBUTES


def test_an_entry_named_like_a_builtin_replaces_its_names() -> None:
    source = _source(
        """
plugins:
- type: core-metrics-extractor
  parameters:
    engineConfigs:
    - name: vllm
      queuedRequestsSpec: vllm:num_requests_waiting
      runningRequestsSpec: vllm:num_requests_running
      customMetrics:
      - {attributeKey: preemptions, metricSpec: "vllm:num_preemptions_total"}
- type: queue-scorer
"""
    )
    (engine,) = source.engines
    # the pool's default engine (vllm) is now the configured one
    scraper = MetricsScraper(Datastore(), dialect="vllm", source=source)
    assert scraper._dialect is engine
    m = parse_metrics_report(vllm_text(waiting=7, kv=0.5), engine, now=1.0).metrics
    assert m.waiting_queue_size == 7
    assert m.kv_cache_usage == 0.0  # kvUsageSpec left empty: not read, as upstream
    assert ("preemptions", CORE_METRICS_PRODUCER) in m.attributes
    assert engine.finished == VLLM.finished  # infergate's finished counter stays
    assert parse_metrics_report(vllm_text(kv=0.5), VLLM, now=1.0).metrics.attributes is NO_ATTRIBUTES


def test_default_engine_may_name_a_custom_engine() -> None:
    source = _source(
        CUSTOM_ENGINE.replace("    engineConfigs:", "    defaultEngine: my-custom-engine\n    engineConfigs:")
    )
    assert source.default_engine == "my-custom-engine"
    scraper = MetricsScraper(Datastore(), source=source)
    assert scraper._dialect.name == "my-custom-engine"


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ("{engineConfigs: [{name: mine, queuedRequestsSpec: 'q{a}'}]}", "engineConfigs.0.queuedRequestsSpec"),
        ("{engineConfigs: [{name: mine, kvUsageSpec: 'two words'}]}", "engineConfigs.0.kvUsageSpec"),
        ("{engineConfigs: [{name: mine, customMetrics: [{attributeKey: x}]}]}", "customMetrics.0.metricSpec"),
        ("{engineConfigs: [{name: mine, customMetrics: [{metricSpec: x}]}]}", "customMetrics.0.attributeKey"),
        (
            "{engineConfigs: [{name: m, customMetrics: [{attributeKey: k, metricSpec: a}, "
            "{attributeKey: k, metricSpec: b}]}]}",
            "attributeKey 'k' is listed twice",
        ),
        ("{engineConfigs: [{name: mine}, {name: mine}]}", "engine 'mine' is configured twice"),
        ("{engineConfigs: [{name: default}]}", "'default' is reserved"),
        ("{engineConfigs: [{name: ''}]}", "engineConfigs.0.name"),
        ("{engineConfigs: [{name: mine, metricsPath: /m}]}", "engineConfigs.0.metricsPath"),
        ("{defaultEngine: triton}", "defaultEngine"),
        ("{defaultEngine: mine}", "defaultEngine"),
    ],
)
def test_what_is_not_honoured_is_refused_by_name(parameters: str, named: str) -> None:
    text = f"plugins:\n- type: core-metrics-extractor\n  parameters: {parameters}\n- type: queue-scorer\n"
    with pytest.raises(ConfigError, match=named.replace(".", r"\.").replace("'", "'")):
        _source(text)
