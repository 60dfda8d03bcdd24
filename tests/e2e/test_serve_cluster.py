"""`infergate serve` fed by a cluster: the built-in proxy in front of Pods the picker finds itself.

The counterpart of llm-d-router's standalone deployment (a proxy and the picker in one pod, no
Gateway): a real `infergate serve --endpoint-selector ... --endpoint-target-ports ...` process (and
`--pool-name` for a pool that exists) with a kubeconfig pointing at tests/k8s_apiserver.py's
stand-in, two real `infergate simulate` replicas as the Pods, and the OpenAI SDK as the client. It
checks that nothing is served before the Pods are known, that requests are answered and spread by
the picker once they are, that a Pod relabelled out of the selector stops receiving requests, and
that the objective an InferencePool's namespace holds applies.
"""

from __future__ import annotations

import json
import signal

import aiohttp
import pytest
from openai import AsyncOpenAI

from tests.e2e.test_epp_cluster import MODEL, POOL, Cluster, cluster, get  # noqa: F401 (a fixture)
from tests.k8s_apiserver import pod, pool
from tests.support import ChildProcess, async_wait_for, free_port, start_infergate


def start_serve(c: Cluster, *source: str, workers: int = 1) -> tuple[ChildProcess, int, int]:
    port, admin = free_port(), free_port()
    args = [
        "serve",
        *source,
        *("--pool-namespace", "default", "--kubeconfig", str(c.kubeconfig)),
        *("--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin)),
        *("--metrics-auth", "disabled", "--grace", "5", "--debug-headers", "--workers", str(workers)),
    ]
    return start_infergate(args, c.log_dir), port, admin


async def ready_status(child: ChildProcess, admin: int) -> bool:
    """/readyz answers 200 (the admin port is not bound until the process has started)."""
    assert child.alive(), child.output()
    try:
        return (await get(f"http://127.0.0.1:{admin}/readyz"))[0] == 200
    except aiohttp.ClientConnectionError:
        return False


async def served_by(client: AsyncOpenAI) -> str:
    raw = await client.completions.with_raw_response.create(model=MODEL, prompt="Say hello.", max_tokens=3)
    assert raw.parse().choices[0].text  # a well-formed completion
    return str(raw.headers["x-gateway-destination-endpoint-served"])


@pytest.mark.parametrize("workers", [1, 2])
async def test_serve_routes_to_the_pods_a_selector_picks(cluster: Cluster, workers: int) -> None:  # noqa: F811
    child, port, admin = start_serve(
        cluster,
        "--endpoint-selector",
        "app=vllm",
        "--endpoint-target-ports",
        str(cluster.sim_port),
        workers=workers,
    )
    try:
        await async_wait_for(
            lambda: ready_status(child, admin), timeout=30, what="/readyz after the Pods synced"
        )
        keys = {f"{ip}:{cluster.sim_port}" for ip in cluster.ips}

        async def candidates() -> set[str]:
            body = json.loads((await get(f"http://127.0.0.1:{admin}/debug/endpoints"))[1])
            return {e["key"] for e in body["endpoints"] if e["candidate"]}

        async def both_scraped() -> bool:
            return await candidates() == keys

        await async_wait_for(both_scraped, timeout=30, what="both replicas scraped")
        client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        seen: set[str] = set()

        async def both_served() -> bool:  # the picker spreads requests over both replicas
            seen.add(await served_by(client))
            return seen == keys

        # with several workers each learns the Pods from the gateway process a moment later
        await async_wait_for(both_served, timeout=30, what="requests on both replicas")
        models = await client.models.list()
        assert MODEL in {m.id for m in models.data}

        # relabelled out of the selector: no more requests for it
        cluster.api.apply(pod("vllm-1", cluster.ips[1], labels={"app": "other"}))
        gone = f"{cluster.ips[1]}:{cluster.sim_port}"

        async def withdrawn() -> bool:
            return await candidates() == keys - {gone}

        await async_wait_for(withdrawn, timeout=30, what="vllm-1 out of the pool")

        async def avoided() -> bool:
            return {await served_by(client) for _ in range(6)} == keys - {gone}

        await async_wait_for(avoided, timeout=30, what="no request for the relabelled Pod")
        await client.close()
    finally:
        assert child.stop(signal.SIGTERM, timeout=30) == 0, child.output()


async def test_serve_fronts_an_inference_pool_and_its_objectives(cluster: Cluster) -> None:  # noqa: F811
    cluster.api.apply(pool(POOL, ports=(cluster.sim_port,)))
    child, port, admin = start_serve(cluster, "--pool-name", POOL)
    try:
        await async_wait_for(
            lambda: ready_status(child, admin), timeout=30, what="/readyz after the pool synced"
        )
        async with aiohttp.ClientSession() as s:
            body = {"model": MODEL, "prompt": "Say hello.", "max_tokens": 2}
            headers = {"x-gateway-inference-objective": "food-review"}
            async with s.post(f"http://127.0.0.1:{port}/v1/completions", json=body, headers=headers) as r:
                assert r.status == 200, await r.text()
        text = (await get(f"http://127.0.0.1:{admin}/metrics"))[1]
        # the objective the cluster holds (priority 10) labelled the request
        assert "llm_d_epp_request_total{" in text and 'priority="10"' in text
    finally:
        assert child.stop(signal.SIGTERM, timeout=30) == 0, child.output()


def test_serve_needs_one_source() -> None:
    from typer.testing import CliRunner

    from infergate.cli import app

    runner = CliRunner()
    for args, message in (
        (["serve"], "give one of --pool-name"),
        (["serve", "-f", "x.yaml", "--pool-name", "p"], "give one of --pool-name"),
        (["serve", "-f", "x.yaml", "--kubeconfig", "k"], "--kubeconfig goes with --pool-name"),
        (["serve", "--pool-name", "p", "--endpoint-target-ports", "8000"], "goes with --endpoint-selector"),
        (["serve", "--pool-name", "p", "--data-plane", "envoy"], "runs the built-in proxy"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)


@pytest.mark.parametrize("flag", ["--pool-name=p", "--endpoint-selector=app=x"])
def test_serve_in_a_cluster_defaults_to_port_8080_and_kubernetes_metrics_auth(flag: str) -> None:
    from typer.testing import CliRunner

    from infergate.cli import app

    extra = ["--endpoint-target-ports", "8000"] if "selector" in flag else []
    result = CliRunner().invoke(app, ["serve", flag, *extra, "--print-settings"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split()[2] for line in result.output.splitlines() if " = " in line}
    assert lines["listeners.port"] == "8080" and lines["auth.metrics_auth"] == "kubernetes"
