"""A P/D pool whose decode endpoints are busy must not answer 503 while they are alive.

Under a burst, the decode servers (the only ones the decode profile may pick for a short prompt)
answer their metrics scrape late and drop out of the fresh candidates, while the idle prefill
servers stay fresh: flow control sees capacity and admits, and the profiles' role filters then
kept nothing. The request must still go to a live decode server (and wait in its queue), as an
aggregated pool's would; only a pool with no live endpoint the profiles accept answers 503.
"""

from __future__ import annotations

import json
import random

import pytest

from infergate.bench.strategies import pd_picker_config
from infergate.datastore.store import Datastore
from infergate.errors import NoCapacityError
from infergate.requestcontrol.core import RequestCore
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.scheduling.plugins.disagg import ROLE_LABEL
from infergate.types import EndpointMeta, EndpointMetrics, InferenceRequest, Objective

BASE = "meta-llama/Llama-3.1-8B-Instruct"
NOW = 100.0


class Clock:
    def now(self) -> float:
        return NOW


def pd_core(decode_scraped_at: float) -> tuple[RequestCore, Datastore, list[str]]:
    clock = Clock()
    ds = Datastore(clock, staleness=2.0)
    decode: list[str] = []
    for i, role in enumerate(("prefill", "prefill", "decode", "decode")):
        meta = EndpointMeta(name=f"ep{i}", address=f"10.0.0.{i + 1}", port=8000, labels={ROLE_LABEL: role})
        ds.upsert_endpoint(meta)
        fresh = NOW if role == "prefill" else decode_scraped_at
        ds.update_metrics(
            meta.key, EndpointMetrics(updated_at=fresh, waiting_queue_size=0 if role == "prefill" else 9)
        )
        ds.set_models(meta.key, frozenset({BASE}))
        if role == "decode":
            decode.append(meta.key)
    sched = build_scheduler(pd_picker_config(1024), rng=random.Random(0), clock=clock)
    return RequestCore(datastore=ds, scheduler=sched, rng=random.Random(0)), ds, decode


def short_chat(core: RequestCore) -> InferenceRequest:
    body = {"model": BASE, "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 8}
    raw = json.dumps(body).encode()
    return core.resolve(path="/v1/chat/completions", headers={}, body=raw, request_id="r", now=NOW).request


def test_stale_decode_servers_still_serve_a_short_prompt() -> None:
    core, _, decode = pd_core(decode_scraped_at=NOW - 5.0)  # scraped 5 s ago: past the 2 s staleness
    assert core.schedule(short_chat(core)).primary.key in decode


def test_decode_servers_with_no_room_still_serve_a_released_request() -> None:
    """Flow control narrows a released request to endpoints with room: those may all be prefill
    servers, which the decode profile never picks; the full decode servers then take it."""
    core, ds, decode = pd_core(decode_scraped_at=NOW)
    ds.upsert_objective(Objective(name="batch", priority=-1))
    prefill = {e.key for e in ds.endpoints() if e.key not in decode}
    result = core.schedule(short_chat(core), room=lambda eps: [e for e in eps if e.key in prefill])
    assert result.primary.key in decode


def test_no_live_decode_server_is_still_503() -> None:
    core, ds, decode = pd_core(decode_scraped_at=NOW)
    for key in decode:
        ds.set_healthy(key, False)
    with pytest.raises(NoCapacityError):
        core.schedule(short_chat(core))
