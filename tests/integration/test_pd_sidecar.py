"""P/D end to end on loopback: simulators in the prefill (``kv_producer``) and decode
(``kv_consumer``) roles, ``infergate pd-sidecar``'s proxy in front of the decode one, and the gateway
with ``disagg-profile-handler`` choosing per request. The simulators' prompt-token counters by
source tell where each prompt was computed: ``local_compute`` on the prefill side and
``external_kv_transfer`` on the decode side when disaggregated, ``local_compute`` on the decode
side when not."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from aiohttp import web

from infergate.api.loader import load_manifests
from infergate.app.gateway import Gateway, ManifestPoolSource
from infergate.config.picker import parse_picker_config
from infergate.pdsidecar.proxy import PREFILLER_HEADER, SIDECAR_OPTIONS, SidecarOptions, build_app
from infergate.scheduling.plugins.disagg import DisaggProfileHandler
from infergate.simulator.args import parse_args
from infergate.simulator.server import SimServer
from tests.support import free_port, local_settings

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
FAST = ["--host", "127.0.0.1", "--port", "0", "--time-scale", "0.05", "--model", MODEL]


def _kv(role: str) -> list[str]:
    return ["--kv-transfer-config", json.dumps({"kv_connector": "NixlConnector", "kv_role": role})]


class Pool:
    def __init__(self, prefill: SimServer, decode: SimServer, sidecar: web.AppRunner, port: int) -> None:
        self.prefill, self.decode, self.runner, self.port = prefill, decode, sidecar, port

    @property
    def options(self) -> SidecarOptions:
        return self.runner.app[SIDECAR_OPTIONS]

    async def tokens(self, server: SimServer, source: str) -> float:
        async with aiohttp.ClientSession() as s, s.get(f"{server.url}/metrics") as r:
            for line in (await r.text()).splitlines():
                if line.startswith("vllm:prompt_tokens_by_source_total{") and f'source="{source}"' in line:
                    return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    prefill = SimServer(parse_args([*FAST, *_kv("kv_producer")], {}))
    decode = SimServer(parse_args([*FAST, *_kv("kv_consumer")], {}))
    await prefill.start()
    await decode.start()
    runner = web.AppRunner(build_app(SidecarOptions(decoder_url=decode.url)))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = int(runner.addresses[0][1])
    try:
        yield Pool(prefill, decode, runner, port)
    finally:
        await runner.cleanup()
        await prefill.stop()
        await decode.stop()


def client(port: int) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60)


async def test_sidecar_runs_the_prefill_remotely_and_streams_the_decode(pool: Pool) -> None:
    c = client(pool.port)
    messages: list[Any] = [{"role": "user", "content": "context " * 300}]
    stream = await c.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=12,
        stream=True,
        extra_body={"ignore_eos": True},
        extra_headers={PREFILLER_HEADER: pool.prefill.url.removeprefix("http://")},
    )
    chunks = [ch async for ch in stream]
    await c.close()
    assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) == 12
    computed = await pool.tokens(pool.prefill, "local_compute")
    assert computed > 300
    assert await pool.tokens(pool.decode, "external_kv_transfer") > 0.9 * computed
    assert pool.options.stats["disaggregated"] == 1


async def test_without_the_header_the_decode_server_computes_the_prompt(pool: Pool) -> None:
    c = client(pool.port)
    out = await c.completions.create(model=MODEL, prompt="hello " * 200, max_tokens=3)
    await c.close()
    assert out.usage is not None and out.usage.completion_tokens == 3
    assert await pool.tokens(pool.decode, "local_compute") > 200
    assert await pool.tokens(pool.prefill, "local_compute") == 0
    assert await pool.tokens(pool.decode, "external_kv_transfer") == 0


async def test_prefill_errors_reach_the_client(pool: Pool) -> None:
    url = f"http://127.0.0.1:{pool.port}/v1/completions"
    body = {"model": MODEL, "prompt": "x " * 50, "max_tokens": 2}
    async with aiohttp.ClientSession() as s:
        # the decode server refuses a prefill (it is a kv_consumer): its 400 is relayed as is
        headers = {PREFILLER_HEADER: pool.decode.url.removeprefix("http://")}
        async with s.post(url, json=body, headers=headers) as r:
            assert r.status == 400
            assert "do_remote_decode" in (await r.json())["error"]["message"]
        async with s.post(url, json=body, headers={PREFILLER_HEADER: "http://evil/x"}) as r:
            assert r.status == 400
        async with s.post(url, json=body, headers={PREFILLER_HEADER: f"127.0.0.1:{free_port()}"}) as r:
            assert r.status == 502
    assert pool.options.stats["disaggregated"] == 0


PICKER = """
plugins:
- type: prefix-cache-scorer
- type: queue-scorer
- type: prefill-filter
- type: decode-filter
- type: max-score-picker
- type: disagg-profile-handler
  parameters: {deciders: {prefill: prefix-based-pd-decider}}
- type: prefix-based-pd-decider
  parameters: {nonCachedTokens: 256}
schedulingProfiles:
- name: prefill
  plugins: [{pluginRef: prefill-filter}, {pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
- name: decode
  plugins:
  - {pluginRef: decode-filter}
  - {pluginRef: prefix-cache-scorer, weight: 2}
  - {pluginRef: queue-scorer}
  - {pluginRef: max-score-picker}
"""


def pd_manifest(prefill: str, decode: str) -> list[dict[str, Any]]:
    endpoints = [
        {"name": "prefill-0", "address": prefill, "labels": {"app": "sim", "llm-d.ai/role": "prefill"}},
        {"name": "decode-0", "address": decode, "labels": {"app": "sim", "llm-d.ai/role": "decode"}},
    ]
    return [
        {
            "apiVersion": "inference.networking.k8s.io/v1",
            "kind": "InferencePool",
            "metadata": {"name": "pool"},
            "spec": {
                "selector": {"matchLabels": {"app": "sim"}},
                "targetPorts": [{"number": 8000}],
                "endpointPickerRef": {"name": "epp", "port": {"number": 9002}},
            },
        },
        {
            "apiVersion": "infergate.dev/v1alpha1",
            "kind": "EndpointList",
            "metadata": {"name": "sims"},
            "spec": {"poolName": "pool", "endpoints": endpoints},
        },
    ]


async def test_gateway_disaggregates_long_prompts_and_not_short_chat(pool: Pool, tmp_path: Path) -> None:
    docs = tmp_path / "pool.yaml"
    prefill_addr = pool.prefill.url.removeprefix("http://")
    docs.write_text(yaml.safe_dump_all(pd_manifest(prefill_addr, f"127.0.0.1:{pool.port}")))
    gw = Gateway(
        ManifestPoolSource(load_manifests([docs])),
        local_settings({"proxy.served_header": True, "seed": 1}),
        picker=parse_picker_config(PICKER),
    )
    await gw.start()
    c = client(gw.port)
    try:
        assert await gw.wait_ready(60)
        # short chat: the handler keeps it on the decode pod
        for i in range(3):
            out = await c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=4
            )
            assert out.choices[0].message.content
        assert await pool.tokens(pool.prefill, "local_compute") == 0
        assert pool.options.stats["disaggregated"] == 0
        # a long new prompt: prefill on the prefill pod, decode on the decode pod, streamed back
        stream = await c.completions.create(
            model=MODEL,
            prompt="a long document " * 400,
            max_tokens=8,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        text = "".join([ch.choices[0].text async for ch in stream if ch.choices])
        assert text
        assert pool.options.stats["disaggregated"] == 1
        assert await pool.tokens(pool.prefill, "local_compute") > 1000
        assert await pool.tokens(pool.decode, "external_kv_transfer") > 1000
        handler = next(p for p in gw.scheduler.plugins() if isinstance(p, DisaggProfileHandler))
        assert handler.decisions == {"decode-only": 3, "prefill-decode": 1}
    finally:
        await c.close()
        await gw.stop()
