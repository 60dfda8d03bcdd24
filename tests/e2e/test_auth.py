"""API-key authentication on the inference listener: key files, Secrets, 401/403 end to end.

A real ``infergate simulate`` replica sits behind an in-process Gateway (and, for the CLI flag, an
``infergate serve`` child process); clients are the openai SDK and aiohttp.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import openai
import pytest
import yaml

from infergate.api.loader import load_manifests
from infergate.app.gateway import Gateway, ManifestPoolSource
from infergate.errors import AuthenticationError, ConfigError
from infergate.requestcontrol.access import presented_key
from infergate.servers.auth import ApiKeyStore, api_keys_from_manifests, load_api_keys
from tests.support import (
    ChildProcess,
    async_wait_for,
    free_port,
    local_settings,
    start_infergate,
    start_simulator,
    static_pool_docs,
)

BASE = "meta-llama/Llama-3.1-8B-Instruct"
ALL_KEY = "sk-all-0123456789abcdef"
FOOD_KEY = "sk-food-0123456789abcdef"
SECRET_KEY = "sk-secret-0123456789abcdef"
SECRET_FOOD_KEY = "sk-secret-food-0123456789"


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def pool_docs(port: int) -> list[dict[str, object]]:
    return static_pool_docs([f"127.0.0.1:{port}"], objectives={"food-review": 10})


SECRET = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {
        "name": "gateway-keys",
        "labels": {"infergate.dev/api-keys": "true"},
        "annotations": {"infergate.dev/objectives.food": "food-review"},
    },
    "type": "Opaque",
    "data": {"team-a": b64(SECRET_KEY), "food": b64(SECRET_FOOD_KEY)},
}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    sim = start_simulator(
        tmp_path_factory.mktemp("sim"), "--enable-lora", "--lora-modules", "food-review=/adapters/food-review"
    )
    try:
        yield sim.port
    finally:
        sim.child.stop()


@pytest.fixture
async def gateway(sim: int, tmp_path: Path) -> AsyncIterator[Gateway]:
    """Keys from a file (all / food-review only) plus a labelled Secret among the manifests."""
    manifests = tmp_path / "pool.yaml"
    manifests.write_text(yaml.safe_dump_all([*pool_docs(sim), SECRET]))
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({ALL_KEY: "*", FOOD_KEY: ["food-review"]}))
    gw = Gateway(
        ManifestPoolSource(load_manifests([manifests])),
        local_settings(),
        api_keys=load_api_keys(keys),
    )
    await gw.start()
    try:
        assert await gw.wait_ready(60)

        async def listed() -> bool:
            return "food-review" in gw.datastore.served_models()

        await async_wait_for(listed, timeout=10, what="adapter listed")
        yield gw
    finally:
        await gw.stop()


def client(gw: Gateway | int, key: str) -> openai.AsyncOpenAI:
    port = gw if isinstance(gw, int) else gw.port
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)


async def test_valid_keys_pass_missing_and_unknown_get_401(gateway: Gateway) -> None:
    for key in (ALL_KEY, SECRET_KEY):
        c = client(gateway, key)
        try:
            r = await c.completions.create(model=BASE, prompt="hi", max_tokens=2)
            assert r.choices[0].text
            r = await c.completions.create(model="food-review", prompt="hi", max_tokens=2)
            assert r.model == "food-review"
        finally:
            await c.close()
    c = client(gateway, "sk-wrong-0123456789abcdef")
    try:
        with pytest.raises(openai.AuthenticationError) as err:
            await c.completions.create(model=BASE, prompt="hi", max_tokens=2)
        assert err.value.status_code == 401
        body = err.value.body
        assert isinstance(body, dict) and body["type"] == "authentication_error"
        assert body["code"] == "invalid_api_key"
    finally:
        await c.close()
    url = f"http://127.0.0.1:{gateway.port}/v1/completions"
    payload = {"model": BASE, "prompt": "hi", "max_tokens": 2}
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=payload) as resp:
            assert resp.status == 401
            err_body = await resp.json()
            assert err_body["error"]["type"] == "authentication_error"
            assert err_body["error"]["code"] == "missing_api_key"
        # x-api-key works as well as Bearer; a Basic Authorization is no key
        async with s.post(url, json=payload, headers={"x-api-key": FOOD_KEY}) as resp:
            assert resp.status == 403
        async with s.post(url, json=payload, headers={"x-api-key": ALL_KEY}) as resp:
            assert resp.status == 200
        async with s.post(url, json=payload, headers={"Authorization": f"Basic {ALL_KEY}"}) as resp:
            assert resp.status == 401
        # an unauthenticated caller learns nothing about its body: 401 before 400
        async with s.post(url, data=b"{not json", headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 401
        # health stays open for probes
        async with s.get(f"http://127.0.0.1:{gateway.port}/health") as resp:
            assert resp.status == 200


async def test_scoped_keys_get_403_outside_their_objectives(gateway: Gateway) -> None:
    for key in (FOOD_KEY, SECRET_FOOD_KEY):
        c = client(gateway, key)
        try:
            r = await c.completions.create(model="food-review", prompt="hi", max_tokens=2)
            assert r.model == "food-review"
            with pytest.raises(openai.PermissionDeniedError) as err:
                await c.chat.completions.create(
                    model=BASE, messages=[{"role": "user", "content": "hi"}], max_tokens=2
                )
            body = err.value.body
            assert isinstance(body, dict)
            assert body["type"] == "permission_error" and body["code"] == "permission_denied"
            assert body["param"] == "model"
            with pytest.raises(openai.PermissionDeniedError):
                await c.completions.create(model=BASE, prompt="hi", max_tokens=2)
            # the objective header is a control header: this key may not send it (no bypass)
            with pytest.raises(openai.PermissionDeniedError) as err:
                await c.completions.create(
                    model=BASE,
                    prompt="hi",
                    max_tokens=2,
                    extra_headers={"x-gateway-inference-objective": "food-review"},
                )
            assert isinstance(err.value.body, dict)
            assert err.value.body["code"] == "control_header_not_allowed"
            # /v1/models is open to any valid key
            listed = await c.models.list()
            assert "food-review" in {m.id for m in listed.data}
        finally:
            await c.close()
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{gateway.port}/v1/models") as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["type"] == "authentication_error"


async def test_keys_are_never_logged(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for key in (ALL_KEY, FOOD_KEY, "sk-unknown-secret-value-42"):
        c = client(gateway, key)
        try:
            with contextlib.suppress(openai.APIStatusError):
                await c.completions.create(model=BASE, prompt="hi", max_tokens=2)
        finally:
            await c.close()
    text = caplog.text
    assert "request rejected" in text and "request done" in text  # logging did happen
    for key in (ALL_KEY, FOOD_KEY, "sk-unknown-secret-value-42"):
        assert key not in text


def test_key_file_formats(tmp_path: Path) -> None:
    j = tmp_path / "keys.json"
    j.write_text(json.dumps({"k1": "*", "k2": "a, b", "k3": ["c"]}))
    store = load_api_keys(j)
    assert len(store) == 3
    p = store.authenticate({"authorization": "Bearer k2"})
    assert p.allows("a") and p.allows("b") and not p.allows("c")
    assert store.authenticate({"x-api-key": "k1"}).allows("anything")
    assert "k2" not in p.name
    secret = tmp_path / "secret.yaml"
    secret.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "s", "annotations": {"infergate.dev/objectives": "x"}},
                "data": {"one": b64("key-one")},
                "stringData": {"two": "key-two"},
            }
        )
    )
    s2 = load_api_keys(secret)
    assert s2.authenticate({"x-api-key": "key-one"}).allows("x")
    assert not s2.authenticate({"x-api-key": "key-two"}).allows("y")
    with pytest.raises(AuthenticationError):
        s2.authenticate({"x-api-key": "key-on"})
    # an unlabelled Secret among manifests does not turn authentication on
    assert api_keys_from_manifests([secret]) is None
    # a labelled one does, also when found in a manifest directory
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    (mdir / "keys.yml").write_text(yaml.safe_dump(SECRET))
    found = api_keys_from_manifests([mdir])
    assert found is not None and len(found) == 2
    assert found.authenticate({"x-api-key": SECRET_KEY}).name == "gateway-keys/team-a"


@pytest.mark.parametrize(
    "content",
    [
        "[]",
        "{}",
        '{"": "*"}',
        '{"a b": "*"}',
        '{"k": []}',
        '{"k": 5}',
        "kind: Secret\nmetadata: {name: s}\ndata: {a: '!!notbase64'}\n",
        "kind: Secret\nmetadata: {name: s}\n",
        "{unclosed",
    ],
)
def test_bad_key_files_are_config_errors(tmp_path: Path, content: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError):
        load_api_keys(path)


def test_presented_key_and_constant_time_match() -> None:
    assert presented_key({"authorization": "Bearer  abc "}) == "abc"
    assert presented_key({"authorization": "bearer abc"}) == "abc"
    assert presented_key({"authorization": "Basic abc", "x-api-key": "k"}) == "k"
    assert presented_key({"authorization": "Bearer "}) is None
    assert presented_key({}) is None
    store = ApiKeyStore.from_mapping({"a": "*", "b": ["x"]})
    entry = store.match("b")
    assert entry is not None and entry.objectives == frozenset({"x"})
    assert store.match("") is None and store.match("bb") is None


def test_serve_flag_enables_auth(sim: int, tmp_path: Path) -> None:
    """``infergate serve --api-keys FILE``: the flag reaches the running gateway."""
    manifests = tmp_path / "pool.yaml"
    manifests.write_text(yaml.safe_dump_all(pool_docs(sim)))
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({ALL_KEY: "*"}))
    port, admin = free_port(), free_port()
    child: ChildProcess = start_infergate(
        [
            *("serve", "-f", str(manifests), "--host", "127.0.0.1", "--port", str(port)),
            *("--admin-port", str(admin), "--api-keys", str(keys)),
        ],
        tmp_path,
        health_url=f"http://127.0.0.1:{port}/health",
    )
    try:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {ALL_KEY}"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=30)
        assert err.value.code == 401
        assert json.loads(err.value.read())["error"]["type"] == "authentication_error"
        err.value.close()
    finally:
        child.stop()
    assert ALL_KEY not in child.output()
