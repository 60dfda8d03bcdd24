"""MetricsScraper against real aiohttp model-server stand-ins on 127.0.0.1, and apply_manifests."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from infergate.datastore.store import Datastore
from infergate.sources.health import HealthTracker
from infergate.sources.manifests import apply_manifests
from infergate.sources.scraper import MetricsScraper
from infergate.telemetry import GatewayMetrics
from infergate.types import EndpointMeta, EndpointMetrics, ModelRewrite, Objective, PoolSpec
from tests.conftest import SEED_DIR
from tests.support import async_wait_for, eventually, free_port
from tests.unit.test_sources_dialects import SGLANG_TEXT, vllm_text

BASE = "meta-llama/Llama-3.1-8B-Instruct"


class FakeModelServer:
    """Serves /metrics, /health and /v1/models from mutable fields; counts requests per path."""

    def __init__(self, port: int, text: str, metrics_route: str = "/metrics") -> None:
        self.port = port
        self.metrics_route = metrics_route
        self.text = text
        self.health_status = 200
        self.models = [BASE, "food-review"]
        self.hang = asyncio.Event()
        self.hang.set()  # cleared = every request hangs
        self.hits: Counter[str] = Counter()
        self.redirects: dict[str, str] = {}  # path -> Location answered with 307
        self.chunked = False  # /metrics in chunked transfer encoding, in two pieces
        self.metrics_headers: dict[str, str] = {}  # of the last /metrics request
        self._runner: web.AppRunner | None = None

    @property
    def key(self) -> str:
        return f"127.0.0.1:{self.port}"

    def meta(self, name: str = "pod") -> EndpointMeta:
        return EndpointMeta(name=name, address="127.0.0.1", port=self.port, labels={"app": "vllm"})

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] += 1
        self.metrics_headers = dict(request.headers)
        await self.hang.wait()
        if not self.chunked:
            return web.Response(text=self.text, content_type="text/plain")
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        half = len(self.text) // 2
        await resp.write(self.text[:half].encode())
        await resp.write(self.text[half:].encode())
        await resp.write_eof()
        return resp

    async def _redirect(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        return web.Response(status=307, headers={"Location": self.redirects[request.path]})

    async def _health(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        await self.hang.wait()
        return web.Response(status=self.health_status)

    async def _models(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        await self.hang.wait()
        data = [{"id": m, "object": "model", "owned_by": "vllm"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(self.metrics_route, self._metrics)
        for path in self.redirects:
            app.router.add_get(path, self._redirect)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        self.hang.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def server() -> AsyncIterator[FakeModelServer]:
    s = FakeModelServer(free_port(), vllm_text(waiting=7))
    await s.start()
    yield s
    await s.stop()


@contextlib.asynccontextmanager
async def running(scraper: MetricsScraper) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(scraper.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _metrics(ds: Datastore, key: str) -> EndpointMetrics:
    e = ds.endpoint(key)
    assert e is not None
    return e.metrics


async def test_metrics_models_appear_and_follow_changes(server: FakeModelServer) -> None:
    ds = Datastore()
    ds.upsert_endpoint(server.meta())
    async with running(MetricsScraper(ds, interval=0.02)):

        async def scraped() -> bool:
            return _metrics(ds, server.key).waiting_queue_size == 7

        await async_wait_for(scraped, timeout=5, what="first scrape")
        m = _metrics(ds, server.key)
        assert m.running_adapters == frozenset({"food-review", "cad-fabricator"})
        assert m.block_size == 16 and m.kv_cache_usage == 0.4375
        assert [e.key for e in ds.candidates()] == [server.key]

        async def models_known() -> bool:
            return ds.models(server.key) == frozenset({BASE, "food-review"})

        await async_wait_for(models_known, timeout=5, what="/v1/models")

        server.text = vllm_text(waiting=0, running=11, kv=0.9)

        async def changed() -> bool:
            m = _metrics(ds, server.key)
            return (m.waiting_queue_size, m.running_requests, m.kv_cache_usage) == (0, 11, 0.9)

        await async_wait_for(changed, timeout=5, what="changed metrics")
        before = server.hits["/metrics"]
        await eventually(lambda: server.hits["/metrics"] >= before + 10, what="10 more scrapes")
        assert server.hits["/health"] >= 1


async def _true(v: bool) -> bool:
    return v


async def _more_hits(srv: FakeModelServer, n: int) -> None:
    target = srv.hits["/metrics"] + n
    await async_wait_for(lambda: _true(srv.hits["/metrics"] >= target), timeout=5, what=f"{n} more scrapes")


async def test_dead_endpoint_leaves_rotation_and_rejoins(server: FakeModelServer) -> None:
    ds = Datastore()
    ds.upsert_endpoint(server.meta())
    async with running(MetricsScraper(ds, interval=0.05)):
        await async_wait_for(lambda: _true(len(ds.candidates()) == 1), timeout=5, what="ready")
        await server.stop()

        def unhealthy() -> bool:
            e = ds.endpoint(server.key)
            return e is not None and not e.healthy

        await eventually(unhealthy, what="unhealthy after stop")
        assert ds.candidates() == []

        await server.start()
        await async_wait_for(lambda: _true(len(ds.candidates()) == 1), timeout=3, what="rejoin after restart")


async def test_health_failure_and_consecutive_successes(server: FakeModelServer) -> None:
    ds = Datastore()
    ds.upsert_endpoint(server.meta())
    changes: list[bool] = []
    orig = ds.set_healthy

    def record(key: str, healthy: bool) -> None:
        changes.append(healthy)
        orig(key, healthy)

    ds.set_healthy = record  # type: ignore[method-assign]
    async with running(MetricsScraper(ds, interval=0.02, health_interval=0.1, rise=3)):
        await async_wait_for(lambda: _true(len(ds.candidates()) == 1), timeout=5, what="ready")
        server.health_status = 503
        await async_wait_for(lambda: _true(changes == [False]), timeout=2, what="503 → unhealthy")
        # Scrapes keep succeeding, but while /health says 503 the endpoint stays out.
        probes = server.hits["/health"]
        await _more_hits(server, 20)
        await async_wait_for(lambda: _true(server.hits["/health"] >= probes + 2), timeout=2, what="probes")
        assert changes == [False]
        assert ds.candidates() == []
        server.health_status = 200
        await async_wait_for(lambda: _true(changes == [False, True]), timeout=2, what="rejoin")
        assert len(ds.candidates()) == 1


async def test_hanging_endpoint_times_out_into_unhealthy(server: FakeModelServer) -> None:
    ds = Datastore()
    ds.upsert_endpoint(server.meta())
    # The connection pool bounds no wait by itself: only the scrape and probe timeouts (0.3 s)
    # turn the hanging endpoint unhealthy.
    async with running(MetricsScraper(ds, interval=0.05, timeout=0.3, health_timeout=0.3)):
        await async_wait_for(lambda: _true(len(ds.candidates()) == 1), timeout=5, what="ready")
        server.hang.clear()
        await eventually(lambda: ds.candidates() == [], what="hang → unhealthy")
        server.hang.set()
        await async_wait_for(lambda: _true(len(ds.candidates()) == 1), timeout=3, what="recovered")


@pytest.mark.parametrize("location", ["/metrics/", "metrics/", "http://{key}/metrics/"])
async def test_a_redirect_to_the_same_server_is_followed(location: str) -> None:
    """A metrics app mounted under ``/metrics/`` answers ``/metrics`` with 307: the scrape
    follows it on the same server, whichever way the Location is written."""
    s = FakeModelServer(free_port(), vllm_text(waiting=4), metrics_route="/metrics/")
    s.redirects["/metrics"] = location.format(key=s.key)
    await s.start()
    try:
        ds = Datastore()
        ds.upsert_endpoint(s.meta())
        async with running(MetricsScraper(ds, interval=0.05)):
            await eventually(lambda: _metrics(ds, s.key).waiting_queue_size == 4, what="scraped")
        assert s.hits["/metrics"] >= 1 and s.hits["/metrics/"] >= 1
    finally:
        await s.stop()


async def test_a_redirect_to_another_server_is_a_failed_scrape() -> None:
    s = FakeModelServer(free_port(), vllm_text(waiting=4), metrics_route="/elsewhere")
    s.redirects["/metrics"] = "http://192.0.2.1:9/elsewhere"  # the path this server does serve
    await s.start()
    try:
        ds = Datastore()
        ds.upsert_endpoint(s.meta())
        async with running(MetricsScraper(ds, interval=0.05)):
            await eventually(lambda: s.hits["/metrics"] >= 3, what="three scrapes answered 307")
            assert ds.candidates() == []
            assert _metrics(ds, s.key).waiting_queue_size == 0
    finally:
        await s.stop()


async def test_pages_are_asked_for_uncompressed(server: FakeModelServer) -> None:
    """No Accept-Encoding: a vLLM server would gzip every page for a client that accepts it."""
    ds = Datastore()
    ds.upsert_endpoint(server.meta())
    async with running(MetricsScraper(ds, interval=0.05)):
        await eventually(lambda: server.hits["/metrics"] >= 1, what="scraped")
    assert "Accept-Encoding" not in server.metrics_headers
    assert server.metrics_headers["Host"] == server.key


async def test_a_chunked_metrics_page_is_read_whole(server: FakeModelServer) -> None:
    server.chunked = True
    ds = Datastore()
    ds.upsert_endpoint(server.meta())
    async with running(MetricsScraper(ds, interval=0.05)):
        await eventually(lambda: _metrics(ds, server.key).waiting_queue_size == 7, what="scraped")
        await async_wait_for(lambda: _true(len(ds.candidates()) == 1), timeout=5, what="ready")


async def test_removed_endpoint_stops_being_scraped_and_new_one_starts(server: FakeModelServer) -> None:
    other = FakeModelServer(free_port(), SGLANG_TEXT)
    await other.start()
    try:
        ds = Datastore()
        ds.upsert_endpoint(server.meta("a"))
        scraper = MetricsScraper(ds, interval=0.02, dialect="vllm")
        async with running(scraper):
            await async_wait_for(lambda: _true(server.hits["/metrics"] > 2), timeout=5, what="scraping")
            ds.upsert_endpoint(other.meta("b"))
            await async_wait_for(lambda: _true(other.hits["/metrics"] > 2), timeout=5, what="new endpoint")
            ds.remove_endpoint(server.key)
            await async_wait_for(lambda: _true(scraper.scraping == {other.key}), timeout=2, what="task gone")
            # Let any request already on the wire land, then the count must stay put while the
            # other endpoint goes on being scraped.
            for _ in range(2):
                frozen = server.hits["/metrics"]
                await _more_hits(other, 5)
            assert server.hits["/metrics"] == frozen
            assert ds.endpoint(server.key) is None
    finally:
        await other.stop()


async def test_sglang_dialect_end_to_end() -> None:
    srv = FakeModelServer(free_port(), SGLANG_TEXT)
    await srv.start()
    try:
        ds = Datastore()
        ds.upsert_endpoint(srv.meta())
        async with running(MetricsScraper(ds, interval=0.02, dialect="sglang")):
            await async_wait_for(
                lambda: _true(_metrics(ds, srv.key).running_requests == 12), timeout=5, what="sglang"
            )
            assert _metrics(ds, srv.key).num_gpu_blocks == 120000
    finally:
        await srv.stop()


async def test_trtllm_serve_metrics_path_is_found() -> None:
    from tests.unit.test_sources_dialects import TRTLLM_SERVE_TEXT

    srv = FakeModelServer(free_port(), TRTLLM_SERVE_TEXT, metrics_route="/prometheus/metrics")
    await srv.start()
    try:
        ds = Datastore()
        ds.upsert_endpoint(srv.meta())
        async with running(MetricsScraper(ds, interval=0.02, dialect="trtllm")):
            await async_wait_for(lambda: _true(len(ds.candidates()) == 1), timeout=5, what="trtllm-serve")
            assert _metrics(ds, srv.key).running_requests == 9
    finally:
        await srv.stop()


def test_health_tracker_rules() -> None:
    t = HealthTracker(rise=2)
    assert t.record(True, probe=False) is None  # healthy from the start
    assert t.record(False, probe=False) is False  # one failed scrape: out at once
    assert t.record(True, probe=False) is None
    assert t.record(False, probe=True) is None  # a failure resets the streak
    assert t.record(True, probe=False) is None  # scrapes do not count while /health fails
    assert t.record(True, probe=False) is None
    assert t.record(True, probe=True) is None
    assert t.record(True, probe=False) is True  # two in a row, the last probe good: back in
    assert t.record(True, probe=True) is None


class FlakyDatastore(Datastore):
    """Raises on the first two metric updates, to prove one task's crash is survived."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 2

    def update_metrics(self, key: str, metrics: EndpointMetrics) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("boom")
        super().update_metrics(key, metrics)


async def test_crashing_endpoint_task_is_restarted(server: FakeModelServer) -> None:
    ds = FlakyDatastore()
    ds.upsert_endpoint(server.meta())
    async with running(MetricsScraper(ds, interval=0.02)) as task:
        await async_wait_for(lambda: _true(len(ds.candidates()) == 1), timeout=5, what="recovered")
        assert ds.failures == 0 and not task.done()


async def test_cancel_stops_all_children(server: FakeModelServer) -> None:
    ds = Datastore()
    ds.upsert_endpoint(server.meta())
    scraper = MetricsScraper(ds, interval=0.02)
    async with running(scraper):
        await async_wait_for(lambda: _true(server.hits["/metrics"] > 1), timeout=5, what="scraping")
    assert scraper.scraping == frozenset()
    # Nothing of the scraper is left to send a request: no task runs any of its coroutines.
    left = [
        t
        for t in asyncio.all_tasks()
        if not t.done() and t.get_coro().__qualname__.startswith("MetricsScraper.")  # type: ignore[union-attr]
    ]
    assert left == [], left


def _gauges(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest

    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            if s.name.startswith(("inference_pool_", "llm_d_epp_std_dev_", "llm_d_epp_datalayer_")):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_pool_gauges(server: FakeModelServer) -> None:
    other = FakeModelServer(free_port(), vllm_text(waiting=1, running=5, kv=0.5625))
    await other.start()
    try:
        registry = CollectorRegistry()
        ds = Datastore()
        ds.set_pool(PoolSpec(name="vllm-pool"))
        ds.upsert_endpoint(server.meta("pod-a"))
        ds.upsert_endpoint(other.meta("pod-b"))
        scraper = MetricsScraper(
            ds, interval=0.02, metrics=GatewayMetrics(registry), pool_metrics_interval=0.05
        )
        async with running(scraper):
            pool = (("name", "vllm-pool"),)

            async def ready() -> bool:
                return _gauges(registry).get(("inference_pool_ready_pods", pool)) == 2.0

            await async_wait_for(ready, timeout=5, what="ready pods gauge")
            g = _gauges(registry)
            assert g[("inference_pool_average_queue_size", pool)] == 4.0
            assert g[("inference_pool_average_running_requests", pool)] == 4.0
            assert g[("inference_pool_average_kv_cache_utilization", pool)] == 0.5
            # llm-d's spread of the same values (population deviation): queues 7 and 1, running
            # 3 and 5, KV 0.4375 and 0.5625
            assert g[("llm_d_epp_std_dev_queue_size", pool)] == 3.0
            assert g[("llm_d_epp_std_dev_running_requests", pool)] == 1.0
            assert g[("llm_d_epp_std_dev_kv_cache_utilization", pool)] == 0.0625
            per_pod = ("inference_pool_per_pod_queue_size", (("model_server_pod", "pod-b"), *pool))
            assert g[per_pod] == 1.0
            polls = ("llm_d_epp_datalayer_poll_errors_total", (("source_type", "metrics-data-source"),))
            await other.stop()

            async def one_left() -> bool:
                g = _gauges(registry)
                return g.get(("inference_pool_ready_pods", pool)) == 1.0 and per_pod not in g

            await async_wait_for(one_left, timeout=3, what="gauges after a pod died")
            assert _gauges(registry)[polls] >= 1  # the scrapes of the stopped server failed
            assert _gauges(registry)[("llm_d_epp_std_dev_queue_size", pool)] == 0.0
    finally:
        await other.stop()


class FakeManifests:
    def __init__(self, endpoints: list[EndpointMeta], objectives: list[Objective]) -> None:
        self.endpoints = endpoints
        self.objectives = objectives
        self.rewrites = [ModelRewrite(name="rw", pool="vllm-pool"), ModelRewrite(name="elsewhere", pool="x")]

    def endpoints_for(self, pool: PoolSpec) -> list[EndpointMeta]:
        return list(self.endpoints)

    def objective_values(self) -> list[Objective]:
        return list(self.objectives)

    def rewrite_values(self) -> list[ModelRewrite]:
        return list(self.rewrites)


def test_apply_manifests_syncs_and_keeps_live_state() -> None:
    ds = Datastore()
    pool = PoolSpec(name="vllm-pool", selector={"app": "vllm"})
    a = EndpointMeta(name="a", address="10.0.0.1", port=8000)
    b = EndpointMeta(name="b", address="10.0.0.2", port=8000)
    objectives = [Objective(name="base", priority=20, pool="vllm-pool"), Objective(name="food", priority=10)]
    apply_manifests(ds, FakeManifests([a, b], objectives), pool)
    assert ds.pool == pool
    assert sorted(e.key for e in ds.endpoints()) == ["10.0.0.1:8000", "10.0.0.2:8000"]
    assert {o.name: o.priority for o in ds.objectives()} == {"base": 20, "food": 10}
    assert [r.name for r in ds.rewrites()] == ["rw"]

    ds.update_metrics(a.key, EndpointMetrics(waiting_queue_size=3, updated_at=1.0))
    c = EndpointMeta(name="c", address="10.0.0.3", port=8000)
    a2 = EndpointMeta(name="a", address="10.0.0.1", port=8000, labels={"v": "2"})
    apply_manifests(ds, FakeManifests([a2, c], objectives[:1]), pool)
    assert sorted(e.key for e in ds.endpoints()) == ["10.0.0.1:8000", "10.0.0.3:8000"]
    kept = ds.endpoint(a.key)
    assert kept is not None and kept.metrics.waiting_queue_size == 3 and kept.meta.labels == {"v": "2"}
    assert [o.name for o in ds.objectives()] == ["base"]


def test_apply_tutorial_manifests_with_static_endpoints(tmp_path: Path) -> None:
    from infergate.api.loader import load_manifests

    static = tmp_path / "endpoints.yaml"
    static.write_text(
        "apiVersion: infergate.dev/v1alpha1\nkind: EndpointList\nmetadata:\n  name: local\n"
        "spec:\n  poolName: vllm-llama3.1-8b-instruct\n  endpoints:\n"
        "  - {name: r0, address: '127.0.0.1:8001'}\n  - {name: r1, address: '127.0.0.1:8002'}\n"
    )
    manifests = load_manifests([SEED_DIR, static])
    pool = manifests.pool_spec()
    ds = Datastore()
    apply_manifests(ds, manifests, pool)
    assert ds.pool is not None and ds.pool.name == "vllm-llama3.1-8b-instruct"
    assert sorted(e.key for e in ds.endpoints()) == ["127.0.0.1:8001", "127.0.0.1:8002"]
    assert {o.name: o.priority for o in ds.objectives()} == {"food-review": 10, "llama3-base-model": 20}

    static.write_text(static.read_text().replace("  - {name: r1, address: '127.0.0.1:8002'}\n", ""))
    apply_manifests(ds, load_manifests([SEED_DIR, static]), pool)
    assert [e.key for e in ds.endpoints()] == ["127.0.0.1:8001"]


async def test_a_page_without_a_gauge_counts_an_extract_error(server: FakeModelServer) -> None:
    """A page that parses but lacks a gauge the engine's extractor reads (here vLLM's queue) is
    still a scrape (the rest is used); llm-d-router counts it in
    ``llm_d_epp_datalayer_extract_errors_total`` per source and extractor, and so does infergate."""
    server.text = "\n".join(
        line for line in vllm_text(waiting=7).splitlines() if "num_requests_waiting" not in line
    )
    registry = CollectorRegistry()
    ds = Datastore()
    ds.upsert_endpoint(server.meta())
    extract = (
        "llm_d_epp_datalayer_extract_errors_total",
        (("extractor_type", "core-metrics-extractor"), ("source_type", "metrics-data-source")),
    )
    async with running(MetricsScraper(ds, interval=0.02, metrics=GatewayMetrics(registry))):

        async def counted() -> bool:
            return _gauges(registry).get(extract, 0.0) >= 2

        await async_wait_for(counted, timeout=5, what="extract errors")
        assert _metrics(ds, server.key).running_requests == 3  # the rest of the page was read
