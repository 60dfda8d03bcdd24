"""The Kubernetes source against an API-server stand-in speaking the real REST + watch protocol.

The real ``kubernetes_asyncio`` client (built from a generated kubeconfig) does every request; the
stand-in (tests/k8s_apiserver.py) replays history from a resourceVersion, sends bookmarks, answers
410 Gone after compaction and can break watches mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from infergate.datastore.store import Datastore
from infergate.servers.tls import self_signed_pair
from infergate.sources.kubernetes import KubernetesSource
from infergate.sources.kubernetes_client import make_api_client
from infergate.sources.kubernetes_status import PoolHealth, desired_status
from infergate.sources.scraper import MetricsScraper
from infergate.types import Objective
from tests.k8s_apiserver import FakeApiServer, objective, pod, pool, rewrite
from tests.support import async_wait_for, free_port


@pytest.fixture
async def apiserver() -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer(bookmark_interval=0.1)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Harness:
    def __init__(self, server: FakeApiServer, ds: Datastore, source: KubernetesSource) -> None:
        self.server = server
        self.ds = ds
        self.source = source

    def endpoint_keys(self) -> set[str]:
        return {e.key for e in self.ds.endpoints()}

    def names(self) -> set[str]:
        return {e.meta.name for e in self.ds.endpoints()}

    async def until(self, predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        async def check() -> bool:
            return predicate()

        await async_wait_for(check, timeout=timeout, what=what)


@contextlib.asynccontextmanager
async def running(server: FakeApiServer, tmp_path: Path, **kwargs: Any) -> AsyncIterator[Harness]:
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    client = await make_api_client(kubeconfig=str(kubeconfig))
    ds = Datastore()
    kwargs.setdefault("status_interval", 0.05)
    source = KubernetesSource(
        ds, pool_name="vllm-pool", pool_namespace="default", api_client=client, backoff_initial=0.05, **kwargs
    )
    task = asyncio.create_task(source.run())
    try:
        await asyncio.wait_for(source.synced.wait(), timeout=60)
        yield Harness(server, ds, source)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


async def test_pods_ready_unready_terminating_and_relabelled(
    apiserver: FakeApiServer, tmp_path: Path
) -> None:
    apiserver.apply(pool())
    apiserver.apply(pod("vllm-0", "10.0.0.1"))
    apiserver.apply(pod("vllm-1", "10.0.0.2", ready=False))
    apiserver.apply(pod("other", "10.0.0.9", labels={"app": "other"}))
    async with running(apiserver, tmp_path) as h:
        assert h.endpoint_keys() == {"10.0.0.1:8000"}
        assert h.ds.pool is not None and h.ds.pool.name == "vllm-pool"
        assert h.ds.pool.failure_mode == "FailOpen"

        apiserver.apply(pod("vllm-1", "10.0.0.2", ready=True))
        await h.until(lambda: h.endpoint_keys() == {"10.0.0.1:8000", "10.0.0.2:8000"}, "pod becoming ready")

        h.ds.acquire("10.0.0.2:8000")  # live state must survive identity updates
        apiserver.apply(pod("vllm-1", "10.0.0.2", labels={"app": "vllm", "extra": "x"}))
        await h.until(lambda: dict(h.ds.endpoint("10.0.0.2:8000").meta.labels).get("extra") == "x", "relabel")  # type: ignore[union-attr]
        ep = h.ds.endpoint("10.0.0.2:8000")
        assert ep is not None and ep.in_flight == 1

        apiserver.apply(pod("vllm-0", "10.0.0.1", ready=False))
        await h.until(lambda: h.endpoint_keys() == {"10.0.0.2:8000"}, "pod becoming unready")

        apiserver.apply(pod("vllm-1", "10.0.0.2", terminating=True))
        await h.until(lambda: h.endpoint_keys() == set(), "terminating pod leaving at once")

        apiserver.apply(pod("other", "10.0.0.9", labels={"app": "vllm"}))
        await h.until(lambda: h.endpoint_keys() == {"10.0.0.9:8000"}, "pod relabelled into the pool")
        apiserver.apply(pod("other", "10.0.0.9", labels={"app": "other"}))
        await h.until(lambda: h.endpoint_keys() == set(), "pod relabelled out of the pool")

        apiserver.apply(pod("vllm-2", None))  # no IP yet
        apiserver.apply(pod("vllm-3", "10.0.0.4", phase="Pending"))
        apiserver.apply(pod("vllm-4", "10.0.0.5"))
        await h.until(lambda: h.endpoint_keys() == {"10.0.0.5:8000"}, "only running pods with an IP")
        apiserver.delete("Pod", "vllm-4")
        await h.until(lambda: h.endpoint_keys() == set(), "deleted pod")


async def test_pool_changes_reevaluate_pods_and_multi_port(apiserver: FakeApiServer, tmp_path: Path) -> None:
    apiserver.apply(pool())
    apiserver.apply(pod("a", "10.0.0.1"))
    apiserver.apply(pod("b", "10.0.0.2", labels={"app": "sglang"}))
    async with running(apiserver, tmp_path) as h:
        assert h.endpoint_keys() == {"10.0.0.1:8000"}
        apiserver.apply(pool(selector={"app": "sglang"}, ports=(8000, 8001)))
        await h.until(
            lambda: h.endpoint_keys() == {"10.0.0.2:8000", "10.0.0.2:8001"}, "selector and ports change"
        )
        assert h.names() == {"b-rank-0", "b-rank-1"}
        assert h.ds.pool is not None and h.ds.pool.target_ports == (8000, 8001)

        apiserver.apply(
            pod(
                "b",
                "10.0.0.2",
                labels={"app": "sglang"},
                annotations={"inference.networking.k8s.io/active-ports": "8001"},
            )
        )
        await h.until(lambda: h.endpoint_keys() == {"10.0.0.2:8001"}, "active-ports annotation")

        apiserver.delete("InferencePool", "vllm-pool")
        await h.until(lambda: h.endpoint_keys() == set(), "pool deleted: no endpoints")
        assert h.source.pool_spec is None
        apiserver.apply(pool())
        await h.until(lambda: h.endpoint_keys() == {"10.0.0.1:8000"}, "pool recreated")


async def test_objectives_and_rewrites(apiserver: FakeApiServer, tmp_path: Path) -> None:
    apiserver.apply(pool())
    apiserver.apply(objective("critical", 2))
    apiserver.apply(objective("elsewhere", 5, pool_name="another-pool"))
    async with running(apiserver, tmp_path) as h:
        assert h.ds.objectives() == [Objective(name="critical", priority=2, pool="vllm-pool")]

        apiserver.apply(objective("sheddable", -1))
        apiserver.apply(objective("default-priority", None))
        await h.until(
            lambda: {o.name for o in h.ds.objectives()} == {"critical", "sheddable", "default-priority"},
            "objectives added",
        )
        assert h.ds.objective("sheddable") == Objective(name="sheddable", priority=-1, pool="vllm-pool")
        assert h.ds.objective("default-priority") is not None
        assert h.ds.objective("default-priority").priority == 0  # type: ignore[union-attr]

        apiserver.apply(objective("critical", 3))
        await h.until(lambda: getattr(h.ds.objective("critical"), "priority", None) == 3, "objective changed")
        apiserver.delete("InferenceObjective", "sheddable")
        await h.until(lambda: h.ds.objective("sheddable") is None, "objective deleted")
        apiserver.apply(objective("critical", 3, pool_name="another-pool"))
        await h.until(lambda: h.ds.objective("critical") is None, "objective moved to another pool")

        apiserver.apply(rewrite("first", "food-review", {"food-review-v1": 90, "food-review-v2": 10}))
        apiserver.apply(rewrite("generic", None, {"base": 1}))
        await h.until(lambda: [r.name for r in h.ds.rewrites()] == ["first", "generic"], "rewrites added")
        rules = h.ds.rewrites()[0].rules
        assert rules[0].match_models == ("food-review",)
        assert [(t.model, t.weight) for t in rules[0].targets] == [
            ("food-review-v1", 90),
            ("food-review-v2", 10),
        ]

        apiserver.apply(rewrite("first", "food-review", {"food-review-v2": 1}))
        await h.until(
            lambda: h.ds.rewrites()[0].rules[0].targets[0].model == "food-review-v2", "rewrite changed"
        )
        assert [r.name for r in h.ds.rewrites()] == ["first", "generic"]  # oldest first is kept
        apiserver.delete("InferenceModelRewrite", "first")
        await h.until(lambda: [r.name for r in h.ds.rewrites()] == ["generic"], "rewrite deleted")


async def test_watch_broken_mid_stream_resumes_without_relist(
    apiserver: FakeApiServer, tmp_path: Path
) -> None:
    apiserver.apply(pool())
    apiserver.apply(pod("a", "10.0.0.1"))
    async with running(apiserver, tmp_path) as h:
        pods = h.source.reflectors["pods"]
        lists_before = pods.lists
        await h.until(lambda: apiserver.open_watches("Pod") == 1, "pod watch open")
        watches_before = pods.watches
        apiserver.drop_watches()
        apiserver.apply(pod("b", "10.0.0.2"))  # happens while nobody watches
        apiserver.delete("Pod", "a")
        await h.until(lambda: h.endpoint_keys() == {"10.0.0.2:8000"}, "state after the broken watch")
        assert pods.watches > watches_before
        assert pods.lists == lists_before, "a resumable watch must not relist"
        # The resumed watch asked for the last resourceVersion seen and for bookmarks.
        last = [q for q in apiserver.watch_requests if "labelSelector" not in q][-1]
        assert last["allowWatchBookmarks"].lower() == "true"
        assert int(last["resourceVersion"]) > 0


@pytest.mark.parametrize("as_http_status", [False, True], ids=["error-event", "http-410"])
async def test_410_gone_relists_and_loses_no_state(
    apiserver: FakeApiServer, tmp_path: Path, as_http_status: bool
) -> None:
    apiserver.gone_as_http_status = as_http_status
    apiserver.apply(pool())
    apiserver.apply(pod("a", "10.0.0.1"))
    apiserver.apply(pod("b", "10.0.0.2"))
    apiserver.apply(pod("d", "10.0.0.4"))
    apiserver.apply(objective("gone-soon", 1))
    async with running(apiserver, tmp_path) as h:
        assert h.endpoint_keys() == {"10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.4:8000"}
        h.ds.acquire("10.0.0.2:8000")
        h.ds.remove_endpoint("10.0.0.4:8000")  # drift: a relist must repair it
        pods = h.source.reflectors["pods"]
        await h.until(lambda: apiserver.open_watches() == len(h.source.reflectors), "all watches open")
        apiserver.drop_watches()
        # While disconnected: changes, then the history is compacted away.
        apiserver.delete("Pod", "a")
        apiserver.apply(pod("c", "10.0.0.3"))
        apiserver.delete("InferenceObjective", "gone-soon")
        apiserver.compact()
        await h.until(
            lambda: h.endpoint_keys() == {"10.0.0.2:8000", "10.0.0.3:8000", "10.0.0.4:8000"},
            "state after relist",
        )
        await h.until(lambda: h.ds.objective("gone-soon") is None, "deleted objective gone after relist")
        assert pods.relists_gone >= 1
        ep = h.ds.endpoint("10.0.0.2:8000")
        assert ep is not None and ep.in_flight == 1, "an endpoint that stayed keeps its live state"


async def test_bookmarks_advance_resource_version(apiserver: FakeApiServer, tmp_path: Path) -> None:
    apiserver.apply(pool())
    async with running(apiserver, tmp_path) as h:
        pods = h.source.reflectors["pods"]
        before = int(pods.resource_version)
        apiserver.apply(objective("x", 1))  # bumps the global resourceVersion, no pod event
        await h.until(lambda: int(pods.resource_version) > before, "bookmark moving the pod watch forward")
        apiserver.drop_watches()
        apiserver.compact()
        apiserver.apply(pod("late", "10.0.0.7"))
        await h.until(lambda: h.endpoint_keys() == {"10.0.0.7:8000"}, "pod after compaction")


async def test_api_unreachable_at_start_then_recovers(tmp_path: Path) -> None:
    server = FakeApiServer(bookmark_interval=0.1)
    await server.start()
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    port = server.port
    await server.stop()
    client = await make_api_client(kubeconfig=str(kubeconfig))
    ds = Datastore()
    source = KubernetesSource(
        ds, pool_name="vllm-pool", api_client=client, backoff_initial=0.05, backoff_max=0.2
    )
    task = asyncio.create_task(source.run())
    try:
        await async_wait_for(
            lambda: _true_after(source.reflectors and source.reflectors["pods"].errors > 0),
            what="errors while the API is down",
        )
        server2 = FakeApiServer(bookmark_interval=0.1)
        server2.apply(pool())
        server2.apply(pod("a", "10.0.0.1"))
        await server2.start(port)  # the API server comes back on the same address
        try:
            await asyncio.wait_for(source.synced.wait(), timeout=60)
            await async_wait_for(
                lambda: _true_after({e.key for e in ds.endpoints()} == {"10.0.0.1:8000"}),
                what="endpoints after recovery",
            )
        finally:
            await server2.stop()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


async def _true_after(value: object) -> bool:
    return bool(value)


async def test_pool_status_default_parent_written(apiserver: FakeApiServer, tmp_path: Path) -> None:
    apiserver.apply(pool())
    apiserver.apply(pod("a", "10.0.0.1"))
    async with running(apiserver, tmp_path) as h:

        def resolved() -> dict[str, Any] | None:
            obj = apiserver.get("InferencePool", "vllm-pool") or {}
            parents = (obj.get("status") or {}).get("parents") or []
            for p in parents:
                for c in p.get("conditions", []):
                    if c["type"] == "ResolvedRefs":
                        return dict(c, controllerName=p.get("controllerName"), parentRef=p["parentRef"])
            return None

        await h.until(lambda: resolved() is not None, "status written")
        cond = resolved()
        assert cond is not None
        assert cond["status"] == "True" and cond["reason"] == "ResolvedRefs"
        assert "1 ready endpoint" in cond["message"]
        assert cond["parentRef"] == {"kind": "Status", "name": "default"}
        assert cond["controllerName"] == "infergate.dev/endpoint-picker"

        apiserver.apply(pod("b", "10.0.0.2"))
        await h.until(
            lambda: "2 ready endpoint" in (resolved() or {}).get("message", ""), "status follows pods"
        )
        writes = apiserver.status_writes
        # A Gateway takes over status.parents: the picker must not write any more.
        obj = apiserver.get("InferencePool", "vllm-pool")
        assert obj is not None
        obj["status"] = {"parents": [{"parentRef": {"kind": "Gateway", "name": "gw"}, "conditions": []}]}
        apiserver.apply(obj)
        apiserver.apply(pod("c", "10.0.0.3"))
        await h.until(lambda: len(h.endpoint_keys()) == 3, "third pod")
        assert apiserver.status_writes == writes
        final = apiserver.get("InferencePool", "vllm-pool")
        assert final is not None
        assert final["status"]["parents"][0]["parentRef"]["name"] == "gw"


def test_desired_status_is_idempotent() -> None:
    obj: dict[str, Any] = {"metadata": {"name": "p", "generation": 3}}
    first = desired_status(obj, PoolHealth(valid=True, ready_endpoints=2))
    assert first is not None
    assert desired_status({**obj, "status": first}, PoolHealth(valid=True, ready_endpoints=2)) is None
    bad = desired_status({**obj, "status": first}, PoolHealth(valid=False, ready_endpoints=0, message="nope"))
    assert bad is not None
    cond = next(c for c in bad["parents"][0]["conditions"] if c["type"] == "ResolvedRefs")
    assert (cond["status"], cond["reason"], cond["observedGeneration"]) == ("False", "InvalidExtensionRef", 3)


async def test_kubeconfig_token_is_used(apiserver: FakeApiServer, tmp_path: Path) -> None:
    apiserver.apply(pool())
    path = apiserver.write_kubeconfig(tmp_path / "kc")
    path.write_text(path.read_text().replace(apiserver.token, "wrong-token"))
    client = await make_api_client(kubeconfig=str(path))
    source = KubernetesSource(Datastore(), pool_name="vllm-pool", api_client=client, backoff_initial=0.05)
    task = asyncio.create_task(source.run())
    try:
        await async_wait_for(
            lambda: _true_after(source.reflectors and source.reflectors["pods"].errors > 0),
            what="401 counted as an error",
        )
        assert not source.synced.is_set()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


async def test_in_cluster_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Service-account token and CA as the kubelet mounts them, API over TLS at the service env."""
    cert, key = self_signed_pair("kubernetes", hosts=("127.0.0.1",))
    (tmp_path / "ca.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    (tmp_path / "token").write_text("sa-token")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "ca.crt", tmp_path / "tls.key")
    server = FakeApiServer(token="sa-token")
    server.apply(pool())
    server.apply(pod("a", "10.0.0.1"))
    await server.start(ssl_context=ctx)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
    client = await make_api_client(token_file=str(tmp_path / "token"), ca_file=str(tmp_path / "ca.crt"))
    ds = Datastore()
    source = KubernetesSource(ds, pool_name="vllm-pool", api_client=client, write_status=False)
    task = asyncio.create_task(source.run())
    try:
        await asyncio.wait_for(source.synced.wait(), timeout=60)
        assert {e.key for e in ds.endpoints()} == {"10.0.0.1:8000"}
        assert client.configuration.host == f"https://127.0.0.1:{server.port}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()
        await server.stop()


async def test_two_replicas_agree_without_a_leader(apiserver: FakeApiServer, tmp_path: Path) -> None:
    """HA: each picker replica watches on its own; status writes converge instead of flapping."""
    apiserver.apply(pool())
    apiserver.apply(pod("a", "10.0.0.1"))
    async with running(apiserver, tmp_path / "r1") as h1, running(apiserver, tmp_path / "r2") as h2:
        apiserver.apply(pod("b", "10.0.0.2"))
        want = {"10.0.0.1:8000", "10.0.0.2:8000"}
        await h1.until(
            lambda: h1.endpoint_keys() == want and h2.endpoint_keys() == want, "both replicas see both pods"
        )

        def message() -> str:
            obj = apiserver.get("InferencePool", "vllm-pool") or {}
            parents = (obj.get("status") or {}).get("parents") or [{}]
            conds = {c["type"]: c for c in parents[0].get("conditions", [])}
            return str(conds.get("ResolvedRefs", {}).get("message", ""))

        await h1.until(lambda: "2 ready endpoint" in message(), "status after both replicas wrote")
        settled = apiserver.status_writes
        apiserver.apply(objective("noop", 1))  # unrelated traffic: no status write may follow
        await h1.until(
            lambda: h1.ds.objective("noop") is not None and h2.ds.objective("noop") is not None,
            "objective on both replicas",
        )
        # A replica counts its write when the server's answer reached it, which may trail the
        # server's own count on a loaded machine: wait for the counts to meet too.
        await h2.until(
            lambda: (
                h1.source.reflectors["inferencepools"].resource_version
                == h2.source.reflectors["inferencepools"].resource_version
                and h1.source.status_writes + h2.source.status_writes == apiserver.status_writes
            ),
            "pool watches level and every status write answered",
        )
        assert apiserver.status_writes == settled


async def test_large_objects_and_many_pods(apiserver: FakeApiServer, tmp_path: Path) -> None:
    """Watch lines far beyond aiohttp's default line limit, and a namespace with 300 pods."""
    apiserver.apply(pool())
    for i in range(300):
        apiserver.apply(pod(f"p{i}", f"10.1.{i // 200}.{i % 200}"))
    async with running(apiserver, tmp_path) as h:
        assert len(h.endpoint_keys()) == 300
        big = pod("big", "10.2.0.1", annotations={"blob": "x" * 300_000})
        apiserver.apply(big)
        await h.until(lambda: "10.2.0.1:8000" in h.endpoint_keys(), "a 300 kB pod through the watch")
        for i in range(0, 300, 2):
            apiserver.apply(pod(f"p{i}", f"10.1.{i // 200}.{i % 200}", ready=False))
        await h.until(lambda: len(h.endpoint_keys()) == 151, "half the pods unready")


class _ModelServer:
    """A minimal vLLM look-alike on a loopback address: /metrics, /health, /v1/models."""

    def __init__(self, host: str, port: int, waiting: int) -> None:
        self.host, self.port, self.waiting = host, port, waiting
        self.scrapes = 0
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._ok)
        app.router.add_get("/v1/models", self._models)
        self.runner = web.AppRunner(app)

    async def start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, self.host, self.port).start()

    async def _metrics(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        text = (
            f'vllm:num_requests_waiting{{model_name="m"}} {self.waiting}\n'
            'vllm:num_requests_running{model_name="m"} 1\n'
            'vllm:kv_cache_usage_perc{model_name="m"} 0.25\n'
        )
        return web.Response(text=text)

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})


async def test_endpoints_reach_the_scraper(apiserver: FakeApiServer, tmp_path: Path) -> None:
    """Pods from the API become scraped candidates; a terminating pod stops being one at once."""
    port = free_port()
    servers = [_ModelServer("127.0.0.2", port, 3), _ModelServer("127.0.0.3", port, 7)]
    for s in servers:
        await s.start()
    apiserver.apply(pool(ports=(port,)))
    apiserver.apply(pod("m-0", "127.0.0.2"))
    apiserver.apply(pod("m-1", "127.0.0.3"))
    try:
        async with running(apiserver, tmp_path) as h:
            scraper = MetricsScraper(h.ds, interval=0.05, health_interval=0.1, models_interval=0.2)
            task = asyncio.create_task(scraper.run())
            try:
                both = {f"127.0.0.2:{port}", f"127.0.0.3:{port}"}
                await h.until(lambda: {e.key for e in h.ds.candidates()} == both, "both pods scraped")
                queues = {e.key: e.metrics.waiting_queue_size for e in h.ds.candidates()}
                assert queues == {f"127.0.0.2:{port}": 3, f"127.0.0.3:{port}": 7}
                await h.until(lambda: "m" in h.ds.served_models(), "models listed")

                apiserver.apply(pod("m-1", "127.0.0.3", terminating=True))
                await h.until(lambda: h.endpoint_keys() == {f"127.0.0.2:{port}"}, "terminating pod out")
                assert {e.key for e in h.ds.candidates()} == {f"127.0.0.2:{port}"}
                scrapes = servers[1].scrapes
                await h.until(lambda: servers[0].scrapes > scrapes + 5, "the other pod still scraped")
                assert servers[1].scrapes <= scrapes + 1, "a removed endpoint is no longer scraped"
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        for s in servers:
            await s.runner.cleanup()


async def test_a_pods_host_ip_is_its_endpoints_node_address(apiserver: FakeApiServer, tmp_path: Path) -> None:
    apiserver.apply(pool())
    with_node = pod("vllm-0", "10.0.0.1")
    with_node["status"]["hostIP"] = "192.168.1.7"  # the node a DaemonSet exporter runs on
    apiserver.apply(with_node)
    apiserver.apply(pod("vllm-1", "10.0.0.2"))  # not yet scheduled onto a known node
    async with running(apiserver, tmp_path) as h:
        await h.until(lambda: len(h.endpoint_keys()) == 2, "both pods")
        addresses = {e.meta.name: e.meta.node_address for e in h.ds.endpoints()}
        assert addresses == {"vllm-0": "192.168.1.7", "vllm-1": ""}


async def test_each_port_of_a_pod_is_an_endpoint_that_knows_its_pod(
    apiserver: FakeApiServer, tmp_path: Path
) -> None:
    """A pod serving on two target ports is two endpoints, ``<pod>-rank-<i>``; both carry the
    pod's own name, which a DaemonSet exporter's samples are labelled with (dcgm-extractor)."""
    apiserver.apply(pool(ports=(8000, 8001)))
    apiserver.apply(pod("vllm-0", "10.0.0.1"))
    async with running(apiserver, tmp_path) as h:
        await h.until(lambda: len(h.endpoint_keys()) == 2, "both ports")
        names = sorted((e.meta.name, e.meta.pod) for e in h.ds.endpoints())
        assert names == [("vllm-0-rank-0", "vllm-0"), ("vllm-0-rank-1", "vllm-0")]
