"""The shared foundation: the error tree renders OpenAI's error shape, value types are immutable,
and the console script answers --help for every command."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from infergate import errors
from infergate.types import Endpoint, EndpointMeta, EndpointMetrics


@pytest.mark.parametrize(
    ("exc_type", "status", "error_type"),
    [
        (errors.BadRequestError, 400, "invalid_request_error"),
        (errors.AuthenticationError, 401, "authentication_error"),
        (errors.ModelNotFoundError, 404, "invalid_request_error"),
        (errors.RateLimitedError, 429, "rate_limit_error"),
        (errors.NoCapacityError, 503, "service_unavailable"),
        (errors.UpstreamError, 502, "upstream_error"),
        (errors.UpstreamTimeoutError, 504, "upstream_error"),
    ],
)
def test_request_errors_render_openai_shape(
    exc_type: type[errors.RequestError], status: int, error_type: str
) -> None:
    exc = exc_type("something went wrong", param="model")
    assert isinstance(exc, errors.GatewayError)
    assert exc.status == status
    body = exc.to_openai()
    assert set(body) == {"error"}
    err = body["error"]
    assert isinstance(err, dict)
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] == "something went wrong"
    assert err["type"] == error_type
    assert err["param"] == "model"
    assert err["code"] is not None


def test_explicit_code_overrides_class_default() -> None:
    exc = errors.BadRequestError("bad", code="invalid_json")
    assert exc.to_openai()["error"] == {
        "message": "bad",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_json",
    }


def test_endpoint_snapshot_is_immutable_and_keyed_by_address() -> None:
    ep = Endpoint(
        meta=EndpointMeta(name="pod-a", address="10.0.0.5", port=8000),
        metrics=EndpointMetrics(waiting_queue_size=3),
    )
    assert ep.key == "10.0.0.5:8000"
    with pytest.raises(dataclasses.FrozenInstanceError):
        ep.in_flight = 2  # type: ignore[misc]
    v6 = EndpointMeta(name="pod-b", address="fd00::1", port=8000)
    assert v6.key == "[fd00::1]:8000"


def test_every_command_answers_help() -> None:
    import typer.main

    from infergate.cli import app

    commands: dict[str, object] = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert {"simulate", "lora-syncer", "up", "serve", "epp", "bench"} <= set(commands)
    for command in sorted(commands):
        result = subprocess.run(
            [sys.executable, "-m", "infergate", command, "--help"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"{command} --help failed: {result.stderr}"
        assert "usage" in result.stdout.lower(), f"{command} --help printed no usage:\n{result.stdout}"
