"""The worker channel: snapshots keep a worker's datastore equal to the gateway process's, except
for the worker's own in-flight counts; frames survive the trip; /metrics sums the workers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from infergate.api.loader import load_manifests
from infergate.app.gateway import Gateway
from infergate.app.sources import ManifestPoolSource
from infergate.app.workers.channel import (
    Message,
    WorkerDatastore,
    apply_snapshot,
    encode,
    read_message,
    snapshot_of,
)
from infergate.app.workers.metrics import MergedExposition, export_families
from infergate.config.settings import Settings
from infergate.dataplanes import DataPlaneFactory, data_plane_factory
from infergate.dataplanes.builtin import BuiltinDataPlane
from infergate.dataplanes.extproc.bootstrap import EXTPROC_CLUSTER, render_bootstrap
from infergate.dataplanes.extproc.workers import picker_ports
from infergate.datastore.store import Datastore
from infergate.errors import ConfigError
from infergate.types import EndpointMeta, EndpointMetrics, ModelRewrite, Objective, PoolSpec
from tests.support import write_pool


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t


def _meta(i: int) -> EndpointMeta:
    return EndpointMeta(name=f"sim{i}", address="10.0.0.1", port=8000 + i, labels={"app": "sim"})


def _parent() -> Datastore:
    ds = Datastore(_Clock())
    ds.set_pool(PoolSpec(name="pool", selector={"app": "sim"}))
    for i in range(3):
        ds.upsert_endpoint(_meta(i))
        ds.update_metrics(
            _meta(i).key, EndpointMetrics(waiting_queue_size=i, kv_cache_usage=0.1 * i, updated_at=99.0)
        )
        ds.set_models(_meta(i).key, frozenset({"base", f"lora{i}"}))
    ds.set_max_model_len(_meta(0).key, 4096)
    ds.set_healthy(_meta(2).key, False)
    ds.upsert_objective(Objective(name="high", priority=10))
    ds.upsert_rewrite(ModelRewrite(name="r"))
    return ds


def test_a_snapshot_copies_the_pool_and_keeps_the_workers_own_in_flight_counts() -> None:
    parent, worker = _parent(), Datastore(_Clock())
    apply_snapshot(worker, snapshot_of(parent))
    key = _meta(1).key
    worker.acquire(key, tokens=50)  # this worker sent a request there
    parent.update_metrics(key, EndpointMetrics(waiting_queue_size=7, updated_at=100.0))
    parent.remove_endpoint(_meta(0).key)
    parent.remove_objective("high")
    apply_snapshot(worker, snapshot_of(parent))

    assert worker.pool == parent.pool
    assert [e.key for e in worker.endpoints()] == [e.key for e in parent.endpoints()]
    mine = worker.endpoint(key)
    assert mine is not None
    assert mine.metrics.waiting_queue_size == 7
    assert (mine.in_flight, mine.in_flight_tokens) == (1, 50)
    assert [e.key for e in worker.candidates()] == [key]  # sim2 unhealthy as in the parent
    assert worker.models(key) == frozenset({"base", "lora1"})
    assert worker.objectives() == [] and [r.name for r in worker.rewrites()] == ["r"]
    assert worker.max_model_len() is None  # the only endpoint reporting one left


def test_frames_round_trip_and_a_closed_channel_reads_as_none() -> None:
    async def scenario() -> list[Message | None]:
        reader = asyncio.StreamReader()
        snap = snapshot_of(_parent())
        reader.feed_data(encode(Message("snapshot", snap)) + encode(Message("down", "10.0.0.1:8000")))
        reader.feed_data(encode(Message("ready"))[:3])  # the writer died mid-frame
        reader.feed_eof()
        return [await read_message(reader) for _ in range(3)]

    first, second, third = asyncio.run(scenario())
    assert first is not None and first.kind == "snapshot"
    assert [e.key for e in first.body.endpoints] == [_meta(i).key for i in range(3)]
    assert second == Message("down", "10.0.0.1:8000")
    assert third is None


def _worker_registry(count: float, in_flight: float) -> CollectorRegistry:
    r = CollectorRegistry()
    Counter("req", "requests", ["model"], registry=r).labels(model="m").inc(count)
    Gauge("busy", "in flight", registry=r).set(in_flight)
    Gauge("build_info", "build", ["v"], registry=r).labels(v="1").set(1)
    return r


def test_metrics_sum_over_workers_and_a_dead_workers_counters_stay() -> None:
    own = CollectorRegistry()
    Gauge("build_info", "build", ["v"], registry=own).labels(v="1").set(1)
    merged = MergedExposition(own)
    merged.update(0, export_families(_worker_registry(3, 2)))
    merged.update(1, export_families(_worker_registry(4, 1)))
    text = generate_latest(merged).decode()
    assert 'req_total{model="m"} 7.0' in text
    assert "busy 3.0" in text
    assert 'build_info{v="1"} 1.0' in text  # the gateway process's own, not one per worker

    merged.retire(1)  # worker 1 died; its replacement starts from zero
    merged.update(1, export_families(_worker_registry(1, 0)))
    text = generate_latest(merged).decode()
    assert 'req_total{model="m"} 8.0' in text
    assert "busy 2.0" in text


def test_gauges_each_worker_computes_for_the_same_pool_show_the_highest() -> None:
    merged = MergedExposition(CollectorRegistry())
    for worker, (share, stale, saturation) in enumerate([(0.25, 1, 0.5), (0.75, 0, 0.9)]):
        r = CollectorRegistry()
        Gauge("llm_d_epp_flow_control_capacity_utilization_requests", "s", ["priority"], registry=r).labels(
            "0"
        ).set(share)
        Gauge("llm_d_epp_flow_control_stale_endpoints", "s", ["detector"], registry=r).labels("d").set(stale)
        Gauge("llm_d_epp_flow_control_pool_saturation", "s", registry=r).set(saturation)
        merged.update(worker, export_families(r))
    text = generate_latest(merged).decode()
    assert 'llm_d_epp_flow_control_capacity_utilization_requests{priority="0"} 0.75' in text
    assert 'llm_d_epp_flow_control_stale_endpoints{detector="d"} 1.0' in text
    assert "llm_d_epp_flow_control_pool_saturation 0.9" in text


def test_workers_other_than_one_need_a_plane_that_runs_in_workers(tmp_path: Path) -> None:
    source = ManifestPoolSource(load_manifests([write_pool(tmp_path, ["127.0.0.1:8000"])]))
    one_process = DataPlaneFactory(BuiltinDataPlane, honors_subset_hint=False, queues_connections=True)
    with pytest.raises(ConfigError, match=r"proxy\.workers: the builtin data plane runs in one process"):
        Gateway(source, Settings().replace({"proxy.workers": 2}), data_plane=one_process)
    with pytest.raises(ConfigError, match=r"proxy\.workers"):
        Settings().replace({"proxy.workers": 0})
    for name in ("builtin", "envoy", "epp"):  # every shipped plane runs in workers
        assert data_plane_factory(name).worker_processes, name


def test_envoy_picker_ports_one_per_worker_and_each_an_endpoint_of_the_ext_proc_cluster() -> None:
    assert picker_ports(Settings().replace({"proxy.workers": 3})) == [0, 0, 0]
    fixed = Settings().replace({"proxy.workers": 3, "listeners.envoy_picker_port": 9100})
    assert picker_ports(fixed) == [9100, 9101, 9102]
    assert [p for p, _ in data_plane_factory("envoy").private_ports(fixed)][:3] == [9100, 9101, 9102]
    (cluster,) = [
        c
        for c in render_bootstrap(picker_ports=(9100, 9101))["static_resources"]["clusters"]
        if c["name"] == EXTPROC_CLUSTER
    ]
    hosts = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [h["endpoint"]["address"]["socket_address"]["port_value"] for h in hosts] == [9100, 9101]
    (single,) = [
        c
        for c in render_bootstrap(picker_port=9002)["static_resources"]["clusters"]
        if c["name"] == EXTPROC_CLUSTER
    ]
    assert len(single["load_assignment"]["endpoints"][0]["lb_endpoints"]) == 1


def test_a_workers_own_request_count_is_read_from_its_last_push() -> None:
    registry = CollectorRegistry()
    merged = MergedExposition(CollectorRegistry())
    counter = Counter("inference_objective_request", "r", ["model_name"], registry=registry)
    counter.labels("a").inc(3)
    counter.labels("b").inc(2)
    merged.update(0, export_families(registry))
    assert merged.sample_total(0, "inference_objective_request_total") == 5
    assert merged.sample_total(1, "inference_objective_request_total") == 0


def test_a_late_scrape_counts_what_the_worker_sent_after_it_as_waiting() -> None:
    clock = _Clock()
    parent, worker = _parent(), WorkerDatastore(clock)
    apply_snapshot(worker, snapshot_of(parent))
    key = _meta(1).key  # scraped with 1 waiting at t=99
    clock.t = 100.0
    worker.acquire(key)  # sent at t=100: the scrape taken at 100.5 may count it
    clock.t = 101.0
    worker.acquire(key)  # sent at t=101, after that scrape
    worker.acquire(key)
    worker.release(key)  # one finished at t=101: it let a waiting request start
    parent.update_metrics(key, EndpointMetrics(waiting_queue_size=4, updated_at=100.5))
    clock.t = 101.2  # the snapshot arrives one channel hop later
    apply_snapshot(worker, snapshot_of(parent))
    ep = worker.endpoint(key)
    assert ep is not None and ep.in_flight == 2
    assert ep.metrics.waiting_queue_size == 4 + 1  # +2 sent, -1 finished since the scrape
    apply_snapshot(worker, snapshot_of(parent))  # the same scrape again: nothing added twice
    ep = worker.endpoint(key)
    assert ep is not None and ep.metrics.waiting_queue_size == 5
