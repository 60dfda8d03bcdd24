"""``session-affinity-scorer`` and ``-filter``: exact scores for both strategies, the filter's pin,
bindings with TTL on a fake clock, and the ``x-session-token`` response header through the built-in
proxy, echoed back by a client."""

from __future__ import annotations

import base64
from pathlib import Path

import aiohttp
import pytest

from infergate.config.picker import parse_picker_config
from infergate.errors import ConfigError
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.scheduling.plugins.session_affinity import (
    SessionAffinityFilter,
    SessionAffinityParams,
    SessionAffinityScorer,
    session_token,
)
from infergate.scheduling.sdk.framework import CycleState
from infergate.types import Endpoint, EndpointMeta, InferenceRequest, SchedulingResult
from tests.integration.test_proxy_faults import MODEL, FakeServer, start_gateway, url


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t


def ep(i: int) -> Endpoint:
    return Endpoint(meta=EndpointMeta(name=f"pod-{i}", address=f"10.0.0.{i}", port=8000, namespace="ns"))


def req(**headers: str) -> InferenceRequest:
    return InferenceRequest(request_id="r", model="m", target_model="m", headers=headers)


CANDS = [ep(1), ep(2), ep(3)]


def test_encoded_endpoint_header_strategy() -> None:
    s = SessionAffinityScorer()
    token = base64.b64encode(b"ns/pod-2").decode()
    assert session_token(ep(2)) == token
    assert dict(s.score(req(**{"x-session-token": token}), CANDS, CycleState())) == {"10.0.0.2:8000": 1.0}
    assert dict(s.score(req(**{"x-session-token": "%%%"}), CANDS, CycleState())) == {}
    assert dict(s.score(req(), CANDS, CycleState())) == {}
    gone = base64.b64encode(b"ns/pod-9").decode()
    assert dict(s.score(req(**{"x-session-token": gone}), CANDS, CycleState())) == {}
    assert s.response_headers(ep(3)) == {"x-session-token": session_token(ep(3))}


def test_the_filter_pins_the_session_s_endpoint_and_passes_everyone_otherwise() -> None:
    f = SessionAffinityFilter()
    token = session_token(ep(2))
    assert f.filter(req(**{"x-session-token": token}), CANDS, CycleState()) == [ep(2)]
    for headers in ({}, {"x-session-token": "%%%"}, {"x-session-token": session_token(ep(9))}):
        assert f.filter(req(**headers), CANDS, CycleState()) == CANDS
    # session_id: unbound passes everyone; after a pick it pins there; a departed endpoint rebinds
    clock = Clock()
    sid = SessionAffinityFilter(SessionAffinityParams.model_validate({"strategy": "session_id"}), clock=clock)
    first = req(**{"x-session-id": "s1"})
    assert sid.filter(first, CANDS, CycleState()) == CANDS
    sid.post_pick(first, SchedulingResult(profile="default", targets=(ep(3),)), CycleState())
    assert sid.filter(first, CANDS, CycleState()) == [ep(3)]
    assert sid.filter(first, [ep(1), ep(2)], CycleState()) == [ep(1), ep(2)]
    # in a config: a filter stage of its profile, and it writes the token as the scorer does
    cfg = parse_picker_config(
        "plugins: [{type: session-affinity-filter}, {type: queue-scorer}]\n"
        "schedulingProfiles: [{name: default, plugins: [{pluginRef: session-affinity-filter}, "
        "{pluginRef: queue-scorer}]}]\n"
    )
    s = build_scheduler(cfg)
    assert [slot.name for slot in s.profiles["default"].filters] == ["session-affinity-filter"]
    assert s.response_headers(ep(1)) == {"x-session-token": session_token(ep(1))}


def test_session_id_strategy_binds_and_expires() -> None:
    clock = Clock()
    params = SessionAffinityParams.model_validate(
        {
            "strategy": "session_id",
            "sessionIdConfig": {
                "sources": [{"header": "x-session-id"}, {"header": "x-conversation"}],
                "evictionTtlSeconds": 60,
                "evictionSweepSeconds": 1,
            },
        }
    )
    s = SessionAffinityScorer(params, clock=clock)
    r = req(**{"x-conversation": "c1"})
    assert dict(s.score(r, CANDS, CycleState())) == {}  # unbound: no preference
    s.post_pick(r, SchedulingResult(profile="default", targets=(ep(3),)), CycleState())
    assert dict(s.score(r, CANDS, CycleState())) == {"10.0.0.3:8000": 1.0}
    assert dict(s.score(r, CANDS[:2], CycleState())) == {}  # its endpoint is not a candidate
    assert s.response_headers(ep(3)) == {}
    clock.t += 61
    s.post_pick(
        req(**{"x-session-id": "other"}), SchedulingResult(profile="default", targets=(ep(1),)), CycleState()
    )
    assert s.sessions == 1  # c1 expired in the sweep
    assert dict(s.score(r, CANDS, CycleState())) == {}


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ("{profileName: prefill}", "profileName"),
        ("{strategy: session_id, sessionIdConfig: {sources: [{attribute: agent-identity}]}}", "attribute"),
        ("{strategy: sticky}", "strategy"),
    ],
)
def test_unsupported_parameters_are_refused(params: str, error: str) -> None:
    cfg = parse_picker_config(
        f"apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        f"plugins: [{{type: session-affinity-scorer, parameters: {params}}}]\n"
    )
    with pytest.raises(ConfigError, match=error):
        build_scheduler(cfg)


async def test_token_round_trip_through_the_proxy(tmp_path: Path) -> None:
    servers = [FakeServer(), FakeServer(), FakeServer()]
    for s in servers:
        await s.start()
    config = tmp_path / "epp.yaml"
    config.write_text(
        """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins: [{type: session-affinity-scorer}, {type: max-score-picker}]
schedulingProfiles:
- name: default
  plugins: [{pluginRef: session-affinity-scorer, weight: 10}, {pluginRef: max-score-picker}]
"""
    )
    from infergate.config.picker import load_picker_config

    gw = await start_gateway(tmp_path, servers, picker=load_picker_config(config))
    try:
        async with aiohttp.ClientSession() as http:
            body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
            async with http.post(url(gw), json=body) as r:
                assert r.status == 200
                token = r.headers["x-session-token"]
                first = r.headers["x-gateway-destination-endpoint-served"]
            for _ in range(8):
                async with http.post(url(gw), json=body, headers={"x-session-token": token}) as r:
                    assert r.status == 200
                    assert r.headers["x-gateway-destination-endpoint-served"] == first
                    assert r.headers["x-session-token"] == token
    finally:
        await gw.stop()
        for s in servers:
            await s.stop()


async def test_token_set_on_the_response_through_ext_proc() -> None:
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

    from infergate.dataplanes.extproc.server import serve_extproc
    from infergate.datastore.store import Datastore
    from infergate.requestcontrol.director import Director
    from tests.integration.test_extproc import (
        A,
        FakeClock,
        _add,
        body_msg,
        chat_body,
        headers_msg,
        read,
        response_headers_msg,
    )

    clock = FakeClock()
    ds = Datastore(clock)
    _add(ds, clock, A, queue=0, kv=0.1)
    cfg = parse_picker_config(
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins: [{type: session-affinity-scorer}, {type: max-score-picker}]\n"
    )
    director = Director(datastore=ds, scheduler=build_scheduler(cfg, clock=clock), flow=None, clock=clock)
    server = serve_extproc(director, "127.0.0.1", 0, endpoints=ds)
    await server.start()
    channel = grpc.aio.insecure_channel(server.address)
    try:
        call = pb_grpc.ExternalProcessorStub(channel).Process()
        await call.write(headers_msg())
        await call.write(body_msg(chat_body(), eos=True))
        await read(call, 2)
        await call.write(response_headers_msg())
        (rh,) = await read(call, 1)
        set_headers = {
            h.header.key: h.header.raw_value.decode()
            for h in rh.response_headers.response.header_mutation.set_headers
        }
        assert set_headers == {"x-session-token": session_token(ds.endpoint(A))}  # type: ignore[arg-type]
        await call.done_writing()
    finally:
        await channel.close()
        await server.stop(0)
