"""``/metrics`` protection: TokenReview + SubjectAccessReview against the API-server stand-in,
static token files, and the disabled mode, on the real admin server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from infergate.datastore.store import Datastore
from infergate.servers.admin import AdminServer
from infergate.servers.metrics_auth import (
    KubernetesMetricsAuth,
    MetricsAuthorizer,
    StaticTokenAuth,
    build_metrics_auth,
    generate_token,
    metrics_auth_middleware,
    write_token_file,
)
from infergate.sources.kubernetes_client import make_api_client
from infergate.telemetry import GatewayMetrics
from tests.k8s_apiserver import FakeApiServer


@contextlib.asynccontextmanager
async def admin_with(authorizer: MetricsAuthorizer | None) -> AsyncIterator[str]:
    metrics = GatewayMetrics(CollectorRegistry())
    metrics.running_requests.labels(model_name="m", target_model_name="m", fairness_id="f", priority="0").set(
        3
    )
    admin = AdminServer(Datastore(), metrics)
    admin.app.middlewares.append(metrics_auth_middleware(authorizer))
    await admin.start("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{admin.port}"
    finally:
        await admin.stop()


async def get(url: str, token: str | None = None, scheme: str = "Bearer") -> tuple[int, str, Any]:
    headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        return r.status, await r.text(), r.headers


@pytest.fixture
async def apiserver() -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer()
    server.auth.tokens = {
        "prom-token": ("system:serviceaccount:monitoring:prometheus", ["system:serviceaccounts"]),
        "nobody-token": ("system:serviceaccount:default:nobody", ["system:serviceaccounts"]),
        "group-token": ("alice", ["metrics-readers"]),
    }
    server.auth.metrics_readers = {"system:serviceaccount:monitoring:prometheus", "group:metrics-readers"}
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def k8s_auth(apiserver: FakeApiServer, tmp_path: Path) -> AsyncIterator[KubernetesMetricsAuth]:
    client = await make_api_client(kubeconfig=str(apiserver.write_kubeconfig(tmp_path / "kc")))
    try:
        yield KubernetesMetricsAuth(client, allow_ttl=60, deny_ttl=60)
    finally:
        await client.close()


async def test_kubernetes_mode_allow_and_deny(
    apiserver: FakeApiServer, k8s_auth: KubernetesMetricsAuth
) -> None:
    async with admin_with(k8s_auth) as base:
        status, _, headers = await get(f"{base}/metrics")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert (await get(f"{base}/metrics", "not-a-token"))[0] == 401
        assert (await get(f"{base}/metrics", "prom-token", scheme="Basic"))[0] == 401
        status, text, _ = await get(f"{base}/metrics", "nobody-token")
        assert status == 403 and "system:serviceaccount:default:nobody" in text

        status, text, _ = await get(f"{base}/metrics", "prom-token")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(text)}
        running = families["inference_objective_running_requests"].samples
        assert [(s.labels["model_name"], s.value) for s in running] == [("m", 3.0)]

        assert (await get(f"{base}/metrics", "group-token"))[0] == 200  # allowed through a group
        # The SubjectAccessReview carried the user, groups and the non-resource attributes.
        review = apiserver.auth.last_access_review
        assert review is not None
        assert review["spec"]["user"] == "alice" and review["spec"]["groups"] == ["metrics-readers"]
        assert review["spec"]["nonResourceAttributes"] == {"path": "/metrics", "verb": "get"}

        # Probes are not protected; /debug is.
        assert (await get(f"{base}/healthz"))[0] == 200
        assert (await get(f"{base}/readyz"))[0] == 200
        assert (await get(f"{base}/debug/endpoints", "prom-token"))[0] == 403


async def test_kubernetes_answers_are_cached(
    apiserver: FakeApiServer, k8s_auth: KubernetesMetricsAuth
) -> None:
    async with admin_with(k8s_auth) as base:
        for _ in range(3):
            assert (await get(f"{base}/metrics", "prom-token"))[0] == 200
            assert (await get(f"{base}/metrics", "nobody-token"))[0] == 403
            assert (await get(f"{base}/metrics", "bad"))[0] == 401
        assert apiserver.auth.token_reviews == 3
        assert apiserver.auth.access_reviews == 2
        # Concurrent first requests with one new token share one review.
        apiserver.auth.tokens["new-token"] = ("bob", ["metrics-readers"])
        results = await asyncio.gather(*(get(f"{base}/metrics", "new-token") for _ in range(5)))
        assert [r[0] for r in results] == [200] * 5
        assert apiserver.auth.token_reviews == 4


async def test_cache_expires(apiserver: FakeApiServer, tmp_path: Path) -> None:
    now = [0.0]
    client = await make_api_client(kubeconfig=str(apiserver.write_kubeconfig(tmp_path / "kc")))
    try:
        auth = KubernetesMetricsAuth(client, allow_ttl=10, deny_ttl=2, clock=lambda: now[0])
        assert (await auth.authorize("prom-token", "/metrics")).allowed
        apiserver.auth.metrics_readers.clear()  # RBAC revoked
        now[0] = 9.0
        assert (await auth.authorize("prom-token", "/metrics")).allowed  # still cached
        now[0] = 10.5
        assert (await auth.authorize("prom-token", "/metrics")).status == 403
        apiserver.auth.metrics_readers.add("system:serviceaccount:monitoring:prometheus")
        now[0] = 11.0
        assert (await auth.authorize("prom-token", "/metrics")).status == 403  # deny cached
        now[0] = 13.0
        assert (await auth.authorize("prom-token", "/metrics")).allowed
    finally:
        await client.close()


async def test_api_unreachable_is_not_cached(apiserver: FakeApiServer, tmp_path: Path) -> None:
    client = await make_api_client(kubeconfig=str(apiserver.write_kubeconfig(tmp_path / "kc")))
    port = apiserver.port
    try:
        auth = KubernetesMetricsAuth(client)
        await apiserver.stop()
        decision = await auth.authorize("prom-token", "/metrics")
        assert decision.status == 401 and not decision.cacheable
        await apiserver.start(port)
        assert (await auth.authorize("prom-token", "/metrics")).allowed
    finally:
        await client.close()


async def test_static_token_file(tmp_path: Path) -> None:
    token = generate_token()
    path = write_token_file(tmp_path / "metrics-token", token)
    assert path.stat().st_mode & 0o777 == 0o600
    auth = build_metrics_auth("token", token_file=path)
    assert isinstance(auth, StaticTokenAuth)
    async with admin_with(auth) as base:
        assert (await get(f"{base}/metrics"))[0] == 401
        assert (await get(f"{base}/metrics", token + "x"))[0] == 401
        status, text, _ = await get(f"{base}/metrics", token)
        assert status == 200 and "inference_objective_running_requests" in text


async def test_disabled_mode_and_bad_modes(tmp_path: Path) -> None:
    assert build_metrics_auth("false") is None
    async with admin_with(build_metrics_auth("disabled")) as base:
        assert (await get(f"{base}/metrics"))[0] == 200
    with pytest.raises(ValueError, match="token-file"):
        build_metrics_auth("token")
    with pytest.raises(ValueError, match="Kubernetes API"):
        build_metrics_auth("kubernetes")
    with pytest.raises(ValueError, match="must be one of"):
        build_metrics_auth("maybe")
    (tmp_path / "empty").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="no token"):
        build_metrics_auth("token", token_file=tmp_path / "empty")
