"""The openai SDK sees the same API on both data planes: models.retrieve (GET /v1/models/{id}) and
OpenAI-shaped errors with their message and code (Envoy's local replies included)."""

from __future__ import annotations

import signal
from pathlib import Path

import openai
import pytest

from tests.support import free_port, start_infergate, wait_for

BASE = "meta-llama/Llama-3.1-8B-Instruct"

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
@pytest.mark.parametrize("plane", ["builtin", "envoy"])
def test_models_retrieve_and_errors_through_the_sdk(tmp_path: Path, plane: str) -> None:
    port, admin = free_port(), free_port()
    args = ["up", "--quiet", "--replicas", "1", "--port", str(port), "--admin-port", str(admin)]
    args += ["--data-plane", plane, "--metrics-auth", "disabled"]
    child = start_infergate(args, tmp_path, health_url=f"http://127.0.0.1:{admin}/readyz", timeout=120)
    try:
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
    finally:
        code = child.stop(signal.SIGINT, timeout=60)
    assert code == 0, child.output()
