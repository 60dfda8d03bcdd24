"""`infergate up` end to end: the bundled tutorial, its curl for each model, a clean Ctrl-C."""

from __future__ import annotations

import json
import re
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port, http_ok, start_infergate, wait_for

BASE = "meta-llama/Llama-3.1-8B-Instruct"


def get_json(url: str, token: str | None = None) -> Any:
    return json.loads(get_text(url, token))


def get_text(url: str, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
        return str(r.read().decode())


def complete(port: int, model: str) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=json.dumps(
            {
                "model": model,
                "prompt": "Write as if you were a critic: San Francisco",
                "max_tokens": 20,
                "temperature": "0",
            }
        ).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return int(r.status), json.loads(r.read())


@pytest.mark.parametrize("plane", ["builtin", "envoy"])
def test_up_serves_the_tutorial_and_stops_cleanly(tmp_path: Path, plane: str) -> None:
    port, admin = free_port(), free_port()
    child = start_infergate(
        [
            "up",
            "--quiet",
            "--replicas",
            "2",
            "--port",
            str(port),
            "--admin-port",
            str(admin),
            "--data-plane",
            plane,
        ],
        tmp_path,
        health_url=f"http://127.0.0.1:{admin}/readyz",
        timeout=60,
    )
    try:
        wait_for(lambda: "curl -i -X POST" in child.output(), timeout=10, what="the ready banner")
        out = child.output()
        assert f"http://127.0.0.1:{port}" in out and "curl -i -X POST" in out and "food-review" in out
        # The admin /metrics is protected by a token generated for this run and printed with its curl.
        found = re.search(r"curl -H 'Authorization: Bearer (\S+)' http://127\.0\.0\.1:(\d+)/metrics", out)
        assert found is not None and int(found.group(2)) == admin, out
        token = found.group(1)
        with pytest.raises(urllib.error.HTTPError) as denied:
            get_text(f"http://127.0.0.1:{admin}/metrics")
        denied.value.close()
        assert denied.value.code == 401

        def adapters_loaded() -> bool:
            eps = get_json(f"http://127.0.0.1:{admin}/debug/endpoints", token)["endpoints"]
            want = {"food-review", "cad-fabricator", BASE}
            return len(eps) == 2 and all(want <= set(e["models"]) for e in eps)

        wait_for(adapters_loaded, timeout=30, interval=0.2, what="the LoRA syncers to load both adapters")
        for model in ("food-review", "cad-fabricator", BASE):
            status, body = complete(port, model)
            assert status == 200 and body["model"] == model, body
            assert body["choices"][0]["text"]
        sim_ports = [int(p) for p in re.findall(r"-\d+ http://127\.0\.0\.1:(\d+)", child.output())]
        assert len(sim_ports) == 2, child.output()
        metrics = get_text(f"http://127.0.0.1:{admin}/metrics", token)
        assert 'inference_objective_request_total{model_name="food-review",priority="10"' in metrics
    finally:
        code = child.stop(signal.SIGINT, timeout=30)
    assert code == 0, child.output()
    assert "infergate up: stopped" in child.output()
    for p in sim_ports:
        assert not http_ok(f"http://127.0.0.1:{p}/health", timeout=0.5), f"replica on {p} still running"
