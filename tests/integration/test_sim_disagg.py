"""Prefill/decode disaggregation: ``--kv-transfer-config`` roles, the NIXL request/response fields a
P/D router exchanges, between two simulators (the engine's KV pull: tests/unit/test_sim_disagg_engine.py)."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from infergate.simulator.args import parse_args
from infergate.simulator.server import SimServer

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
FAST = ["--host", "127.0.0.1", "--port", "0", "--time-scale", "0.05"]
PREFILL_PARAMS = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}


def _config(role: str, **extra: Any) -> str:
    return json.dumps({"kv_connector": "NixlConnector", "kv_role": role, **extra})


async def _start(argv: list[str], env: dict[str, str] | None = None) -> SimServer:
    server = SimServer(parse_args([*FAST, *argv], env or {}))
    await server.start()
    return server


@pytest.fixture
async def pd_pair() -> AsyncIterator[tuple[SimServer, SimServer]]:
    env = {"VLLM_NIXL_SIDE_CHANNEL_HOST": "10.0.0.7", "VLLM_NIXL_SIDE_CHANNEL_PORT": "5601"}
    prefill = await _start(["--kv-transfer-config", _config("kv_producer", engine_id="prefill-0")], env)
    decode = await _start(["--kv-transfer-config", _config("kv_consumer")])
    try:
        yield prefill, decode
    finally:
        await prefill.stop()
        await decode.stop()


async def _post(server: SimServer, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.post(f"{server.url}{path}", json=body) as r:
        return r.status, json.loads(await r.text())


async def _counter(server: SimServer, name: str, source: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"{server.url}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith(name + "{") and f'source="{source}"' in line:
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{source={source}}} not exported")


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_prefill_then_decode_as_the_pd_sidecar_does(
    pd_pair: tuple[SimServer, SimServer], path: str
) -> None:
    prefill, decode = pd_pair
    if path == "/v1/completions":
        body: dict[str, Any] = {"model": MODEL, "prompt": "shared context " * 40, "max_tokens": 20}
    else:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "context " * 80}], "max_tokens": 20}
    body["ignore_eos"] = True
    # 1. the prefill leg: the request capped at one token, with do_remote_decode
    status, pre = await _post(prefill, path, {**body, "max_tokens": 1, "kv_transfer_params": PREFILL_PARAMS})
    assert status == 200, pre
    params = pre["kv_transfer_params"]
    prompt_tokens = pre["usage"]["prompt_tokens"]
    assert params["do_remote_prefill"] is True and params["do_remote_decode"] is False
    assert (params["remote_engine_id"], params["remote_host"], params["remote_port"]) == (
        "prefill-0",
        "10.0.0.7",
        5601,
    )
    assert len(params["remote_block_ids"]) == prompt_tokens // 16  # the prompt's full blocks
    assert params["remote_request_id"] == pre["id"] and params["tp_size"] == 1
    # 2. the decode leg: the original request plus the prefill's params
    status, out = await _post(decode, path, {**body, "kv_transfer_params": params})
    assert status == 200, out
    assert out["usage"] == {**out["usage"], "prompt_tokens": prompt_tokens, "completion_tokens": 20}
    assert out["kv_transfer_params"] is None  # only a prefill leg answers with them
    # the decode instance computed only the trailing partial block (at least the last token)
    external = await _counter(decode, "vllm:prompt_tokens_by_source_total", "external_kv_transfer")
    local = await _counter(decode, "vllm:prompt_tokens_by_source_total", "local_compute")
    assert external == min(prompt_tokens // 16 * 16, prompt_tokens - 1)
    assert local == prompt_tokens - external >= 1
    assert await _counter(prefill, "vllm:prompt_tokens_by_source_total", "local_compute") == prompt_tokens


async def test_roles_and_malformed_params_are_refused(pd_pair: tuple[SimServer, SimServer]) -> None:
    prefill, decode = pd_pair
    body = {"model": MODEL, "prompt": "x " * 40, "max_tokens": 1}
    status, err = await _post(decode, "/v1/completions", {**body, "kv_transfer_params": PREFILL_PARAMS})
    assert status == 400 and "do_remote_decode sent to a kv_consumer instance" in err["error"]["message"]
    remote = {"do_remote_prefill": True, "remote_block_ids": [1, 2], "remote_engine_id": "p",
              "remote_host": "h", "remote_port": 1}  # fmt: skip
    status, err = await _post(prefill, "/v1/completions", {**body, "kv_transfer_params": remote})
    assert status == 400 and "do_remote_prefill sent to a kv_producer instance" in err["error"]["message"]
    for missing in ("remote_engine_id", "remote_host", "remote_port"):
        broken = {k: v for k, v in remote.items() if k != missing}
        status, err = await _post(decode, "/v1/completions", {**body, "kv_transfer_params": broken})
        assert status == 400 and missing in err["error"]["message"]
    status, err = await _post(
        decode, "/v1/completions", {**body, "kv_transfer_params": {**remote, "remote_block_ids": "1,2"}}
    )
    assert status == 400 and "remote_block_ids" in err["error"]["message"]
    status, err = await _post(decode, "/v1/completions", {**body, "kv_transfer_params": [1]})
    assert status == 400 and err["error"]["param"] == "kv_transfer_params"


async def test_without_a_connector_the_params_are_ignored_as_vllm_does() -> None:
    server = await _start([])
    try:
        body = {"model": MODEL, "prompt": "x " * 40, "max_tokens": 1, "kv_transfer_params": PREFILL_PARAMS}
        status, out = await _post(server, "/v1/completions", body)
        assert status == 200 and out["kv_transfer_params"] is None
    finally:
        await server.stop()


def test_kv_transfer_config_is_parsed_as_vllm_takes_it() -> None:
    err = io.StringIO()
    args = parse_args(["--kv-transfer-config", _config("kv_both", kv_buffer_device="cuda")], {}, stderr=err)
    assert args.kv_transfer is not None and args.kv_transfer.produces and args.kv_transfer.consumes
    assert "ignores --kv-transfer-config field not modelled: kv_buffer_device" in err.getvalue()
    assert args.kv_transfer.engine_id  # a fresh id when none is configured
    for bad in (
        json.dumps({"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}),
        _config("kv_reader"),
        _config("kv_both", kv_everything=True),
        "{not json",
    ):
        with pytest.raises(SystemExit):
            parse_args(["--kv-transfer-config", bad], {}, stderr=io.StringIO())
    args = parse_args(["--kv-transfer-bandwidth", "50", "--kv-transfer-latency-ms", "1"], {})
    cfg = args.engine_config()
    assert (cfg.kv_transfer_bandwidth, cfg.kv_transfer_latency) == (50e9, 0.001)
