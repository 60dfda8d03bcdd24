"""What a request costs on the ext_proc stream: counted by Envoy itself, with the real gateway.

``infergate serve --data-plane envoy`` in front of one ``infergate simulate`` replica; the
``openai`` SDK talks to Envoy. Envoy's admin counters say how many ext_proc messages went each way
and whether streams were reset; the gateway's ``/metrics`` says that usage was still read from the
responses the picker now receives in fewer messages.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Simulator, envoy_concurrency, free_port, start_infergate, wait_for, write_pool

pytestmark = pytest.mark.slow

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def envoy_counters(admin: str) -> dict[str, int]:
    with urllib.request.urlopen(f"http://{admin}/stats?filter=ext_proc", timeout=10) as resp:
        text = resp.read().decode()
    return {k: int(v) for k, v in re.findall(r"^(\S+): (\d+)$", text, re.M)}


def gateway_metric(admin: str, name: str) -> float:
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name)


def delta(before: dict[str, int], after: dict[str, int], suffix: str) -> int:
    return sum(v - before.get(k, 0) for k, v in after.items() if k.endswith(suffix))


async def test_a_completion_costs_four_messages_each_way_and_no_reset(
    tmp_path: Path, start_sims: Callable[..., Sequence[Simulator]]
) -> None:
    (sim,) = start_sims([])
    port, admin, envoy_admin = free_port(), free_port(), free_port()
    gateway = start_infergate(
        [
            *("serve", "-f", str(write_pool(tmp_path, [sim.key])), "--host", "127.0.0.1"),
            *("--port", str(port), "--admin-port", str(admin), "--metrics-auth", "disabled"),
            *("--data-plane", "envoy"),
        ],
        tmp_path,
        health_url=f"http://127.0.0.1:{admin}/readyz",
        env={"INFERGATE_LISTENERS__ENVOY_ADMIN_PORT": str(envoy_admin)},
    )
    try:
        envoy, gw = f"127.0.0.1:{envoy_admin}", f"127.0.0.1:{admin}"
        # one picker: one Envoy worker thread, so every stream shares one connection to it
        assert envoy_concurrency(envoy) == 1
        url = f"http://127.0.0.1:{port}/v1"
        n = 6
        async with openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=60) as client:
            await client.completions.create(model=MODEL, prompt="warm up", max_tokens=1)
            wait_for(lambda: gateway_metric(gw, "inference_objective_running_requests") == 0, what="idle")
            before = envoy_counters(envoy)
            tokens_before = gateway_metric(gw, "inference_objective_output_tokens_sum")
            for i in range(n):
                done = await client.completions.create(model=MODEL, prompt=f"count {i}", max_tokens=3)
                assert done.usage is not None and done.usage.completion_tokens == 3

        def settled() -> bool:
            return delta(before, envoy_counters(envoy), "ext_proc.streams_closed") == n

        wait_for(settled, what="every ext_proc stream closed")
        after = envoy_counters(envoy)
        # request headers, request body, response headers, the whole JSON body: 4 each way
        assert delta(before, after, "ext_proc.stream_msgs_sent") == 4 * n
        assert delta(before, after, "ext_proc.stream_msgs_received") == 4 * n
        # Envoy half-closes each finished stream instead of resetting it
        assert delta(before, after, "cluster.ext_proc.upstream_rq_tx_reset") == 0
        # the usage still reaches the metrics, read from the one buffered body message
        wait_for(
            lambda: gateway_metric(gw, "inference_objective_output_tokens_sum") - tokens_before == 3 * n,
            what="output tokens of every completion recorded",
        )
        assert gateway_metric(gw, "inference_objective_request_error_total") == 0
    finally:
        gateway.stop()
