"""Property test of the proxy's input handling: whatever arrives, the answer is a well-formed
HTTP response (2xx from the model server, or a 4xx in the OpenAI error shape) and the gateway
keeps serving. The gateway and a fake model server run on a loop in a background thread.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infergate.app.gateway import Gateway
from tests.integration.test_proxy_faults import MODEL, FakeServer, start_gateway


@pytest.fixture(scope="module")
def gateway_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tmp = tmp_path_factory.mktemp("fuzz")
    loop = asyncio.new_event_loop()
    ready: list[tuple[Gateway, FakeServer]] = []
    started = threading.Event()
    stop = asyncio.Event()

    async def main() -> None:
        srv = FakeServer()
        await srv.start()
        gw = await start_gateway(tmp, [srv])
        ready.append((gw, srv))
        started.set()
        await stop.wait()
        await gw.stop()
        await srv.stop()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(60), "gateway did not start"
    try:
        yield ready[0][0].port
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(20)
        loop.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=15,
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"model": st.sampled_from([MODEL, "", "nope", 7]), "prompt": json_values},
        optional={"stream": json_values, "max_tokens": json_values, "messages": json_values},
    ).map(lambda v: json.dumps(v).encode()),
)
paths = st.sampled_from(
    ["/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/models", "/x", "/"]
)
methods = st.sampled_from(["POST", "GET", "PUT", "DELETE", "PATCH"])
ctypes = st.sampled_from(["application/json", "text/plain", "multipart/form-data; boundary=x", ""])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=methods, path=paths, body=bodies, ctype=ctypes)
def test_any_input_gets_a_well_formed_answer(
    gateway_port: int, method: str, path: str, body: bytes, ctype: str
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gateway_port, timeout=30)
    headers = {"Content-Type": ctype} if ctype else {}
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    assert resp.status < 500 or resp.status == 503, (resp.status, data[:300])
    if resp.status >= 400:
        err = json.loads(data)["error"]
        assert isinstance(err["message"], str) and "type" in err and "code" in err
    # and the gateway still serves a good request
    conn = http.client.HTTPConnection("127.0.0.1", gateway_port, timeout=30)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps({"model": MODEL, "prompt": "ok"}).encode())
        assert conn.getresponse().status == 200
    finally:
        conn.close()
