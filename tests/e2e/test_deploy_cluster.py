"""The chart's output driving the real Kubernetes source, against the API-server stand-in.

What `helm install -f deploy/examples/values-tutorial.yaml` and `kubectl apply -f deploy/examples/`
put in a cluster is loaded into tests/k8s_apiserver.py (each custom resource first validated
against deploy/crds, as the API server would), the picker's Kubernetes source is started with the
pool name, namespace and group from the rendered Deployment's flags, and then:

- the pool's Ready pods become endpoints, the tutorial's objectives their priorities;
- the pool status the picker writes is valid under the InferencePool CRD;
- every request the picker made is allowed by the chart's Role (RBAC matches behaviour).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from infergate.datastore.store import Datastore
from infergate.sources.kubernetes import KubernetesSource
from infergate.sources.kubernetes_client import make_api_client
from tests.e2e.test_deploy_chart import EXAMPLES, RELEASE, by_kind, flags, one, render
from tests.k8s_apiserver import FakeApiServer, pod
from tests.support import async_wait_for, granted_rules
from tests.unit.test_deploy_crds import crd_validate

NAMESPACE = "default"
POD_LABELS = {"app": RELEASE, "pod-template-hash": "7d9f"}


@pytest.fixture
async def apiserver() -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer(bookmark_interval=0.1)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _needed(request: str) -> tuple[str, str, str]:
    """(apiGroup, resource, verb) an API request needs, from "VERB /path?query"."""
    method, _, target = request.partition(" ")
    url = urlsplit(target)
    parts = url.path.strip("/").split("/")
    if parts[0] == "api":  # /api/v1/namespaces/NS/PLURAL[/NAME]
        group, rest = "", parts[2:]
    else:  # /apis/GROUP/VERSION/namespaces/NS/PLURAL[/NAME[/status]]
        group, rest = parts[1], parts[3:]
    assert rest[0] == "namespaces" and rest[1] == NAMESPACE, f"{request}: outside the release namespace"
    resource = rest[2]
    if len(rest) == 5:
        resource += "/" + rest[4]
    if method == "GET":
        verb = "get" if len(rest) >= 4 else ("watch" if "watch=true" in url.query.lower() else "list")
    else:
        verb = {"PUT": "update", "PATCH": "patch", "POST": "create", "DELETE": "delete"}[method]
    return group, resource, verb


async def test_tutorial_on_the_api_server_stand_in(apiserver: FakeApiServer, tmp_path: Path) -> None:
    docs = render("-f", str(EXAMPLES / "values-tutorial.yaml"), namespace=NAMESPACE)
    pool = one(docs, "InferencePool")
    crd_validate(pool)
    apiserver.apply(pool)
    objectives = [d for d in yaml.safe_load_all((EXAMPLES / "inferenceobjectives.yaml").read_text()) if d]
    for obj in objectives:
        crd_validate(obj)
        apiserver.apply(obj)
    for i in range(3):  # the vLLM Deployment's replicas
        apiserver.apply(pod(f"vllm-{i}", f"10.0.0.{i + 1}", labels=POD_LABELS))
    apiserver.apply(pod("other", "10.0.1.1", labels={"app": "something-else"}))

    f = flags(docs)
    kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)
    client = await make_api_client(kubeconfig=str(kubeconfig))
    ds = Datastore()
    source = KubernetesSource(
        ds,
        pool_name=f["pool-name"],
        pool_namespace=f["pool-namespace"],
        pool_group=f["pool-group"],
        api_client=client,
        backoff_initial=0.05,
        status_interval=0.05,
    )
    task = asyncio.create_task(source.run())
    try:
        await asyncio.wait_for(source.synced.wait(), timeout=60)

        async def endpoints_ready() -> bool:
            return {e.key for e in ds.endpoints()} == {f"10.0.0.{i}:8000" for i in (1, 2, 3)}

        await async_wait_for(endpoints_ready, timeout=10, what="the three vLLM pods as endpoints")
        assert {o.name: o.priority for o in ds.objectives()} == {"food-review": 10, "llama3-base-model": 20}
        spec = source.pool_spec
        assert spec is not None and spec.name == RELEASE and spec.model_server_type == "vllm"

        async def status_written() -> bool:
            stored = apiserver.get("InferencePool", RELEASE, NAMESPACE) or {}
            return bool((stored.get("status") or {}).get("parents"))

        await async_wait_for(status_written, timeout=10, what="pool status written by the picker")
        stored = apiserver.get("InferencePool", RELEASE, NAMESPACE)
        assert stored is not None
        stored["metadata"] = {k: v for k, v in stored["metadata"].items() if k != "managedFields"}
        crd_validate(stored)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()

    role = granted_rules(one(docs, "Role"))
    made = {_needed(r) for r in apiserver.requests}
    assert ("", "pods", "watch") in made and (
        "inference.networking.k8s.io",
        "inferencepools/status",
        "update",
    ) in made
    missing = made - role
    assert not missing, f"the chart's Role does not allow what the picker does: {sorted(missing)}"
    assert by_kind(docs, "ClusterRole")  # tokenreviews/subjectaccessreviews: checked in test_deploy_chart
