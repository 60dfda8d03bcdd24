"""Standalone mode (``epp --endpoint-selector SEL --endpoint-target-ports P``): the reference's way
to run the picker without the CRDs. Against the API-server stand-in (tests/k8s_apiserver.py):
only Pods are asked for, the selector's full syntax picks them, the ports come from the flag, and
an InferencePool in the namespace changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from infergate.config.settings import Settings
from infergate.datastore.store import Datastore
from infergate.errors import ConfigError
from infergate.sources.kubernetes import KubernetesSource, standalone_pool_name
from infergate.sources.kubernetes_client import make_api_client
from infergate.sources.label_selector import LabelSelector, standalone_args
from tests.integration.test_kubernetes_source import Harness, apiserver  # noqa: F401 (a fixture)
from tests.k8s_apiserver import FakeApiServer, pod, pool


async def test_pods_the_selector_picks_on_the_given_ports(
    apiserver: FakeApiServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    apiserver.apply(pool())  # an InferencePool selecting app=vllm: standalone mode must not read it
    apiserver.apply(pod("qwen-0", "10.0.0.1", labels={"app": "qwen", "tier": "a"}))
    apiserver.apply(pod("qwen-1", "10.0.0.2", labels={"app": "qwen", "tier": "b"}))
    apiserver.apply(pod("qwen-canary", "10.0.0.3", labels={"app": "qwen", "tier": "a", "canary": "1"}))
    apiserver.apply(pod("vllm-0", "10.0.0.4"))
    monkeypatch.setenv("POD_NAME", "qwen-router-epp-6f7d9c8b5-x2k4p")
    settings = Settings().replace(
        {
            "kubernetes.endpoint_selector": "app=qwen, tier in (a, b), !canary",
            "kubernetes.endpoint_target_ports": (8000, 8001),
            "kubernetes.pool_namespace": "default",
        }
    )
    kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig")
    client = await make_api_client(kubeconfig=str(kubeconfig))
    ds = Datastore()
    source = KubernetesSource.from_settings(settings, ds, api_client=client)
    task = asyncio.create_task(source.run())
    try:
        await asyncio.wait_for(source.synced.wait(), timeout=60)
        h = Harness(apiserver, ds, source)
        assert h.endpoint_keys() == {"10.0.0.1:8000", "10.0.0.1:8001", "10.0.0.2:8000", "10.0.0.2:8001"}
        assert h.names() == {"qwen-0-rank-0", "qwen-0-rank-1", "qwen-1-rank-0", "qwen-1-rank-1"}
        assert ds.pool is not None and ds.pool.name == "qwen-router-epp"  # the picker's Deployment
        assert ds.pool.target_ports == (8000, 8001)
        apiserver.apply(pod("qwen-1", "10.0.0.2", labels={"app": "qwen", "tier": "c"}))
        await h.until(lambda: "10.0.0.2:8000" not in h.endpoint_keys(), "a pod relabelled out")
        apiserver.apply(pod("qwen-canary", "10.0.0.3", labels={"app": "qwen", "tier": "b"}))
        await h.until(lambda: "10.0.0.3:8001" in h.endpoint_keys(), "a pod relabelled in")
        assert [r for r in apiserver.requests if "inferencepools" in r or "inferenceobjectives" in r] == []
        assert source.status_writes == 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("app=vllm", {"app": "vllm"}, True),
        ("app==vllm,env!=dev", {"app": "vllm"}, True),  # != holds when the key is absent
        ("app==vllm,env!=dev", {"app": "vllm", "env": "dev"}, False),
        ("tier in (a,b)", {"tier": "c"}, False),
        ("tier notin (a,b)", {}, True),
        ("gpu", {"gpu": ""}, True),
        ("!gpu", {"gpu": "h100"}, False),
        ("example.com/role=decode", {"example.com/role": "decode"}, True),
        ("", {"anything": "x"}, True),
    ],
)
def test_selector_syntax(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert LabelSelector.parse(selector).matches(labels) is expected


@pytest.mark.parametrize(
    ("selector", "ports", "named"),
    [
        ("app in (a", "8000", "--endpoint-selector: 'app in (a': unbalanced '('"),
        ("app=a=b", "8000", "'a=b' is not a label value"),
        ("app=x", None, "--endpoint-target-ports: 1 to 8 ports"),
        ("app=x", "1,2,3,4,5,6,7,8,9", "1 to 8 ports"),
        ("app=x", "70000", "1 to 8 ports in 1..65535"),
        ("app=x", "80,http", "is not a list of port numbers"),
    ],
)
def test_bad_standalone_flags_are_named(selector: str, ports: str | None, named: str) -> None:
    with pytest.raises(ValueError) as info:
        standalone_args(selector, ports)
    assert named in str(info.value)


def test_standalone_settings_are_checked_and_named() -> None:
    assert standalone_args("app=x", "8000,8001,8000") == (8000, 8001)  # duplicates dropped
    assert standalone_pool_name("router-epp-6f7d9c8b5-x2k4p") == "router-epp"
    assert standalone_pool_name(None) == "standalone"
    both = Settings().replace({"pool": "p", "kubernetes.endpoint_selector": "app=x"})
    with pytest.raises(ConfigError, match="either pool"):
        KubernetesSource.from_settings(both, Datastore())
    no_ports = Settings().replace({"kubernetes.endpoint_selector": "app=x"})
    with pytest.raises(ConfigError, match="endpoint_target_ports"):
        KubernetesSource.from_settings(no_ports, Datastore())
