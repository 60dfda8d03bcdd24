"""The gateway's lock-free metric classes expose exactly what prometheus_client's own do, and a
DualMetric's cached children follow removals."""

from __future__ import annotations

import math

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from infergate.telemetry import DualMetric, LabelCap
from infergate.telemetry import series as telemetry

BUCKETS = (0.005, 0.1, 1.0, 2.5, 10.0)
VALUES = (0.0, 0.005, 0.0051, 0.1, 0.7, 1.0, 3.0, 10.0, 11.0, 1e9, -1.0, math.inf)


def exposition(
    fast: type, slow: type, record: str, values: tuple[float, ...], **kw: object
) -> tuple[str, str]:
    out = []
    for cls in (fast, slow):
        reg = CollectorRegistry()
        metric = cls("m", "doc", ["model"], registry=reg, **kw)
        for value in values:
            getattr(metric.labels(model="a"), record)(value)
        getattr(metric.labels(model="b"), record)(values[0])
        out.append(generate_latest(reg).decode())
    return out[0], out[1]


def test_histogram_exposes_prometheus_clients_buckets_count_and_sum() -> None:
    fast, slow = exposition(
        telemetry.Histogram, prometheus_client.Histogram, "observe", VALUES, buckets=BUCKETS
    )
    assert fast == slow
    assert 'm_bucket{le="0.005",model="a"} 3.0' in fast  # -1, 0 and 0.005 itself: le is inclusive


def test_histogram_nan_counts_in_no_bucket_as_prometheus_client() -> None:
    fast, slow = exposition(
        telemetry.Histogram, prometheus_client.Histogram, "observe", (1.0, math.nan), buckets=BUCKETS
    )
    assert fast == slow


def test_counter_and_gauge_expose_as_prometheus_client() -> None:
    fast, slow = exposition(telemetry.Counter, prometheus_client.Counter, "inc", (1.0, 2.5, 0.0))
    assert fast == slow
    fast, slow = exposition(telemetry.Gauge, prometheus_client.Gauge, "inc", (1.0, -3.0, 0.5))
    assert fast == slow
    fast, slow = exposition(telemetry.Gauge, prometheus_client.Gauge, "set", (4.0, 2.0))
    assert fast == slow
    gauge = telemetry.Gauge("g", "doc", registry=CollectorRegistry())
    gauge.inc(3)
    gauge.dec(1)
    assert next(iter(gauge.collect())).samples[0].value == 2.0


def test_counter_refuses_a_negative_increment() -> None:
    counter = telemetry.Counter("c", "doc", registry=CollectorRegistry())
    with pytest.raises(ValueError):
        counter.inc(-1)


def test_dual_metric_children_are_cached_until_a_series_is_removed() -> None:
    reg = CollectorRegistry()
    dual = DualMetric(
        telemetry.Gauge("gie_q", "doc", ["model_server_pod"], registry=reg),
        telemetry.Gauge("llmd_q", "doc", ["model_server_endpoint"], registry=reg),
        rename={"model_server_pod": "model_server_endpoint"},
        caps={},
    )
    child = dual.labels(model_server_pod="p1")
    assert dual.labels(model_server_pod="p1") is child
    child.set(5)
    dual.remove("p1")
    dual.labels(model_server_pod="p1").set(2)  # a new series, not the removed one
    text = generate_latest(reg).decode()
    assert 'gie_q{model_server_pod="p1"} 2.0' in text
    assert 'llmd_q{model_server_endpoint="p1"} 2.0' in text


def test_dual_metric_cache_keeps_label_caps() -> None:
    reg = CollectorRegistry()
    cap = LabelCap(1)
    dual = DualMetric(
        telemetry.Counter("gie_r", "doc", ["model_name"], registry=reg),
        telemetry.Counter("llmd_r", "doc", ["model_name"], registry=reg),
        rename={},
        caps={"model_name": cap},
    )
    dual.labels(model_name="first").inc()
    for _ in range(2):
        dual.labels(model_name="second").inc()
    text = generate_latest(reg).decode()
    assert 'gie_r_total{model_name="first"} 1.0' in text
    assert 'gie_r_total{model_name="other"} 2.0' in text


@pytest.mark.parametrize("twin_buckets", [BUCKETS, (0.5, 5.0)])
def test_dual_histogram_records_each_value_in_both_series(twin_buckets: tuple[float, ...]) -> None:
    """Same buckets: the bucket is found once for both series; other buckets: each its own."""
    reg = CollectorRegistry()
    dual = DualMetric(
        telemetry.Histogram("gie_h", "doc", ["model_name"], registry=reg, buckets=BUCKETS),
        telemetry.Histogram("llmd_h", "doc", ["model_name"], registry=reg, buckets=twin_buckets),
        rename={},
        caps={},
    )
    reference = CollectorRegistry()
    alone = (
        prometheus_client.Histogram("gie_h", "doc", ["model_name"], registry=reference, buckets=BUCKETS),
        prometheus_client.Histogram(
            "llmd_h", "doc", ["model_name"], registry=reference, buckets=twin_buckets
        ),
    )
    for value in VALUES:
        dual.labels(model_name="m").observe(value)
        for metric in alone:
            metric.labels(model_name="m").observe(value)
    assert generate_latest(reg) == generate_latest(reference)
