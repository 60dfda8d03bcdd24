"""Prefill/decode disaggregation as a router sees vLLM's NIXL connector.

A P/D router (llm-d's routing sidecar, or infergate's) sends a request twice. First to a prefill
instance with ``kv_transfer_params: {"do_remote_decode": true, ...}`` and ``max_tokens`` 1: the
instance computes the prompt and answers with ``kv_transfer_params`` naming where the prompt's KV
blocks are (``remote_engine_id``, ``remote_block_ids``, ``remote_host``, ``remote_port``...). Then
to a decode instance with the original request plus those params (``do_remote_prefill``): it
allocates blocks, pulls the prompt's full blocks from the prefill instance instead of computing
them, computes only the rest (at least the last token) and generates.

The simulator has no second GPU to read from: a decode instance models the pull as a transfer
time (latency + bytes / bandwidth, bytes = the tokens not already in its prefix cache × the
profile's KV bytes per token / TP), during which the request holds its blocks and counts as
waiting, as in vLLM. Which requests an instance accepts follows ``kv_role``: a producer serves
``do_remote_decode``, a consumer ``do_remote_prefill``, ``kv_both`` either; a request for the
other role is refused with a 400 naming it, so routing mistakes show instead of being absorbed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from infergate.simulator.openai_api import ApiError, validation_error

KV_ROLES = ("kv_producer", "kv_consumer", "kv_both")
CONNECTORS = ("NixlConnector",)
# KVTransferConfig fields that change nothing a router can observe in the simulator
_NOT_MODELLED = frozenset(
    {
        "kv_buffer_device", "kv_buffer_size", "kv_rank", "kv_parallel_size", "kv_ip", "kv_port",
        "kv_connector_extra_config", "kv_connector_module_path", "enable_permute_local_kv",
        "kv_load_failure_policy",
    }
)  # fmt: skip
FIELD = "kv_transfer_params"


@dataclass(frozen=True)
class KvTransfer:
    """One instance's ``--kv-transfer-config`` and side-channel address."""

    role: str
    engine_id: str
    side_channel_host: str = "localhost"
    side_channel_port: int = 5600
    tp_size: int = 1

    @property
    def produces(self) -> bool:
        return self.role in ("kv_producer", "kv_both")

    @property
    def consumes(self) -> bool:
        return self.role in ("kv_consumer", "kv_both")


def parse_config(text: str, env: Mapping[str, str], tp_size: int, warn: Callable[[str], None]) -> KvTransfer:
    """``--kv-transfer-config JSON`` as vLLM takes it; ``ValueError`` naming what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--kv-transfer-config: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("--kv-transfer-config must be a JSON object")
    unknown = sorted(set(data) - {"kv_connector", "kv_role", "engine_id"} - _NOT_MODELLED)
    if unknown:
        raise ValueError(f"--kv-transfer-config: unknown field(s) {', '.join(unknown)}")
    for key in sorted(set(data) & _NOT_MODELLED):
        warn(f"WARNING: infergate simulate ignores --kv-transfer-config field not modelled: {key}")
    connector = data.get("kv_connector")
    if connector not in CONNECTORS:
        raise ValueError(
            f"--kv-transfer-config: kv_connector {connector!r} is not modelled (supported: NixlConnector)"
        )
    role = data.get("kv_role")
    if role not in KV_ROLES:
        raise ValueError(f"--kv-transfer-config: kv_role must be one of {', '.join(KV_ROLES)}, not {role!r}")
    engine_id = data.get("engine_id")
    if engine_id is not None and not isinstance(engine_id, str):
        raise ValueError("--kv-transfer-config: engine_id must be a string")
    port_text = env.get("VLLM_NIXL_SIDE_CHANNEL_PORT", "5600").strip() or "5600"
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"VLLM_NIXL_SIDE_CHANNEL_PORT={port_text!r} is not a port number") from None
    return KvTransfer(
        role=role,
        engine_id=engine_id or str(uuid.uuid4()),
        side_channel_host=env.get("VLLM_NIXL_SIDE_CHANNEL_HOST", "").strip() or "localhost",
        side_channel_port=port,
        tp_size=tp_size,
    )


@dataclass(frozen=True)
class TransferRequest:
    """What a request's ``kv_transfer_params`` ask of this instance."""

    remote_prefill_tokens: int = 0  # do_remote_prefill: prompt tokens whose KV is pulled
    remote_decode: bool = False  # do_remote_decode: keep the prompt's blocks for a decoder


def parse_request(body: Mapping[str, Any], kv: KvTransfer | None, block_size: int) -> TransferRequest:
    """Validate a request's ``kv_transfer_params``. Without ``--kv-transfer-config`` vLLM has no
    connector to hand them to and ignores them; so does the simulator."""
    params = body.get(FIELD)
    if params is None:
        return TransferRequest()
    if not isinstance(params, dict):
        raise validation_error(FIELD, "Input should be a valid dictionary", params)
    if kv is None:
        return TransferRequest()
    remote_decode = params.get("do_remote_decode") is True
    remote_prefill = params.get("do_remote_prefill") is True
    if remote_decode and remote_prefill:
        raise ApiError(
            400, "kv_transfer_params: do_remote_decode and do_remote_prefill are exclusive", param=FIELD
        )
    if remote_decode and not kv.produces:
        raise ApiError(400, f"{FIELD}: do_remote_decode sent to a {kv.role} instance", param=FIELD)
    if not remote_prefill:
        return TransferRequest(remote_decode=remote_decode)
    if not kv.consumes:
        raise ApiError(
            400, f"kv_transfer_params: do_remote_prefill sent to a {kv.role} instance", param=FIELD
        )
    for key, kind in (("remote_engine_id", str), ("remote_host", str), ("remote_port", int)):
        if not isinstance(params.get(key), kind) or isinstance(params.get(key), bool):
            raise ApiError(400, f"kv_transfer_params: do_remote_prefill needs {key}", param=FIELD)
    blocks = params.get("remote_block_ids")
    if isinstance(blocks, list) and blocks and all(isinstance(b, list) for b in blocks):
        blocks = blocks[0]  # one list per KV-cache group (newer connectors); one group here
    if not isinstance(blocks, list) or not all(
        isinstance(b, int) and not isinstance(b, bool) for b in blocks
    ):
        raise ApiError(400, "kv_transfer_params: remote_block_ids must be a list of block ids", param=FIELD)
    return TransferRequest(remote_prefill_tokens=len(blocks) * block_size)


def response_params(kv: KvTransfer, block_ids: tuple[int, ...], request_id: str) -> dict[str, Any]:
    """The ``kv_transfer_params`` a prefill instance answers with (the decode request's input)."""
    return {
        "do_remote_prefill": True,
        "do_remote_decode": False,
        "remote_block_ids": list(block_ids),
        "remote_engine_id": kv.engine_id,
        "remote_request_id": request_id,
        "remote_host": kv.side_channel_host,
        "remote_port": kv.side_channel_port,
        "tp_size": kv.tp_size,
    }
