"""Endpoint attributes: named scalar values with their producer, kept on ``EndpointMetrics``.

The core scrape speaks for ``core-metrics-extractor``'s attributes only; another producer's
(``dcgm-extractor``) survive each scrape and reach the gateway's workers even when set between
scrapes.
"""

from __future__ import annotations

import pickle

import pytest

from infergate.app.workers.channel import apply_snapshot, snapshot_of
from infergate.datastore.store import Datastore
from infergate.types import (
    CORE_METRICS_PRODUCER,
    NO_ATTRIBUTES,
    Attributes,
    EndpointMeta,
    EndpointMetrics,
    PoolSpec,
)

META = EndpointMeta(name="pod-a", address="10.0.0.1", port=8000)
GPU = ("GPUUtilization", "dcgm-extractor")


def _core(**values: float) -> Attributes:
    return Attributes({(name, CORE_METRICS_PRODUCER): v for name, v in values.items()})


def test_an_endpoint_without_attributes_shares_the_one_empty_mapping() -> None:
    assert EndpointMetrics().attributes is NO_ATTRIBUTES
    assert NO_ATTRIBUTES.with_producer("dcgm-extractor", {}) is NO_ATTRIBUTES
    with pytest.raises(TypeError):
        NO_ATTRIBUTES[GPU] = 1.0  # type: ignore[index]


def test_attributes_pickle_hash_and_compare_by_value() -> None:
    a = Attributes({GPU: 0.5})
    b = pickle.loads(pickle.dumps(a))
    assert b == a and hash(b) == hash(a) and b.get(GPU) == 0.5
    assert hash(EndpointMetrics(attributes=a)) == hash(EndpointMetrics(attributes=b))
    assert pickle.loads(pickle.dumps(EndpointMetrics())).attributes is NO_ATTRIBUTES  # still shared
    assert a.with_producer("dcgm-extractor", {"GPUUtilization": 0.5}) is a  # unchanged: the same
    assert a.with_producer("dcgm-extractor", {}) is NO_ATTRIBUTES


def test_a_scrape_replaces_the_core_attributes_and_keeps_the_others() -> None:
    ds = Datastore()
    ds.upsert_endpoint(META)
    ds.set_attributes(META.key, "dcgm-extractor", {"GPUUtilization": 0.7})
    ds.update_metrics(META.key, EndpointMetrics(updated_at=1.0, attributes=_core(depth=3.0)))
    ep = ds.endpoint(META.key)
    assert ep is not None and dict(ep.metrics.attributes) == {GPU: 0.7, ("depth", CORE_METRICS_PRODUCER): 3.0}
    # the next scrape no longer shows the custom metric: it goes, the GPU value stays
    ds.update_metrics(META.key, EndpointMetrics(updated_at=2.0))
    ep = ds.endpoint(META.key)
    assert ep is not None and dict(ep.metrics.attributes) == {GPU: 0.7}
    assert ep.metrics.updated_at == 2.0
    # a producer's values removed leave the metrics as they were
    ds.set_attributes(META.key, "dcgm-extractor", {})
    ep = ds.endpoint(META.key)
    assert ep is not None and ep.metrics.attributes is NO_ATTRIBUTES and ep.metrics.updated_at == 2.0


def test_setting_attributes_notifies_listeners_only_on_a_change() -> None:
    ds = Datastore()
    ds.upsert_endpoint(META)
    calls: list[int] = []
    ds.add_listener(lambda: calls.append(1), in_flight=False)
    ds.set_attributes(META.key, "dcgm-extractor", {"GPUUtilization": 0.7})
    ds.set_attributes(META.key, "dcgm-extractor", {"GPUUtilization": 0.7})
    ds.set_attributes("10.9.9.9:8000", "dcgm-extractor", {"GPUUtilization": 0.1})  # unknown: ignored
    assert len(calls) == 1


def test_attributes_set_between_scrapes_reach_a_worker() -> None:
    parent = Datastore()
    parent.set_pool(PoolSpec(name="p"))
    parent.upsert_endpoint(META)
    parent.update_metrics(META.key, EndpointMetrics(updated_at=1.0))
    worker = Datastore()
    apply_snapshot(worker, snapshot_of(parent))
    parent.set_attributes(META.key, "dcgm-extractor", {"GPUUtilization": 0.95})  # same updated_at
    apply_snapshot(worker, snapshot_of(parent))
    ep = worker.endpoint(META.key)
    assert ep is not None and ep.metrics.attributes.get(GPU) == 0.95
    parent.set_attributes(META.key, "dcgm-extractor", {})  # expired in the gateway: gone in the worker
    apply_snapshot(worker, snapshot_of(parent))
    ep = worker.endpoint(META.key)
    assert ep is not None and GPU not in ep.metrics.attributes
