"""The openai SDK sees the same gateway on both data planes: models.retrieve (GET /v1/models/{id}),
OpenAI-shaped errors with their message and code (Envoy's local replies included), and answers it
did not stream teaching the scheduler."""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.support import free_port, start_infergate, wait_for

BASE = "meta-llama/Llama-3.1-8B-Instruct"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module", params=["builtin", "envoy"])
def plane(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, int]]:
    """``infergate up`` with one replica on the data plane named by the parameter: (port, admin port)."""
    port, admin = free_port(), free_port()
    args = ["up", "--quiet", "--replicas", "1", "--port", str(port), "--admin-port", str(admin)]
    args += ["--data-plane", request.param, "--metrics-auth", "disabled"]
    tmp = tmp_path_factory.mktemp(request.param)
    child = start_infergate(args, tmp, health_url=f"http://127.0.0.1:{admin}/readyz", timeout=120)
    try:
        yield port, admin
    finally:
        code = child.stop(signal.SIGINT, timeout=60)
    assert code == 0, child.output()


def test_models_retrieve_and_errors_through_the_sdk(plane: tuple[int, int]) -> None:
    port, _ = plane
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)

    def listed() -> bool:
        return {"food-review", BASE} <= {m.id for m in client.models.list().data}

    wait_for(listed, timeout=60, interval=0.2, what="the pool's models")
    assert client.models.retrieve("food-review").id == "food-review"
    assert client.models.retrieve(BASE).id == BASE  # an id with a slash
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    assert missing.value.code == "model_not_found" and "no-such-model" in missing.value.message
    with pytest.raises(openai.NotFoundError) as unserved:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
    assert unserved.value.code == "model_not_found", unserved.value.body
    assert unserved.value.message != "Error code: 404", unserved.value.message


def test_answers_not_streamed_teach_the_scheduler(plane: tuple[int, int]) -> None:
    """A one-token answer the SDK did not stream reaches the latency scorer's TTFT correction on
    either data plane (Envoy hands the picker the whole JSON body, usage included)."""
    port, admin = plane

    def observations() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/debug/endpoints", timeout=10) as r:
            debug: dict[str, Any] = json.load(r)
        model = debug["scheduler"]["predicted-latency-scorer"]
        return sum(int(m["observations"]) for m in model.values())

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    wait_for(
        lambda: BASE in {m.id for m in client.models.list().data}, timeout=60, interval=0.2, what="the pool"
    )
    before = observations()
    for i in range(3):
        answer = client.completions.create(model=BASE, prompt=f"question {i} " * 20, max_tokens=1)
        assert answer.usage is not None and answer.usage.completion_tokens == 1
    assert observations() == before + 3
