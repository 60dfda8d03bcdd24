"""Startup errors of `infergate up` and `serve`: one `error:` line, exit code 2, and for `up`
nothing started (no replica, no run folder left)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "src" / "infergate" / "manifests" / "tutorial"


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def infergate(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmp)}
    return subprocess.run(
        [sys.executable, "-m", "infergate", *args], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["--admin-port", "{busy}"],
            "port {busy} on 127.0.0.1 is already in use; choose another with --admin-port",
        ),
        (["--replica-ports", "{busy}", "--replicas", "1"], "choose another with --replica-ports"),
        (["--data-plane", "envoy", "--grpc-port", "{busy}"], "choose another with --grpc-port"),
        (["--data-plane", "envoy", "--envoy-admin-port", "{busy}"], "choose another with --envoy-admin-port"),
        (
            ["--port", "{free}", "--admin-port", "{free}"],
            "port {free} is given to both --port and --admin-port",
        ),
        (["--data-plane", "nginx"], "data_plane"),
        (["--port", "eighty"], "--port"),
        (["--replica-ports", "8001,8002"], "2 ports given for 3 replicas"),
        (["/no/such/dir"], "/no/such/dir"),
    ],
)
def test_up_reports_startup_errors_in_one_line_before_starting_anything(
    tmp_path: Path, busy_port: int, args: list[str], says: str
) -> None:
    free = str(free_port())
    filled = [a.replace("{busy}", str(busy_port)).replace("{free}", free) for a in args]
    if "--port" not in filled:
        filled += ["--port", str(free_port())]
    if "--admin-port" not in filled:
        filled += ["--admin-port", str(free_port())]
    done = infergate(["up", "--quiet", *filled], tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), done.stderr
    assert says.replace("{busy}", str(busy_port)).replace("{free}", free) in errors[0]
    assert "starting" not in done.stdout  # no replica was started
    assert not list(tmp_path.glob("infergate-up-*"))


def test_serve_reports_a_busy_admin_port_in_one_line(tmp_path: Path, busy_port: int) -> None:
    args = ["serve", "-f", str(TUTORIAL), "--port", str(free_port()), "--admin-port", str(busy_port)]
    done = infergate([*args, "--log-level", "error"], tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"port {busy_port}" in done.stderr and "address already in use" in done.stderr


@pytest.fixture
def h2c_tutorial(tmp_path: Path) -> Path:
    """The tutorial's manifests, its model servers taking HTTP/2 (``appProtocol: kubernetes.io/h2c``)."""
    folder = tmp_path / "h2c"
    folder.mkdir()
    for source in TUTORIAL.glob("*.yaml"):
        text = source.read_text()
        if source.name == "inferencepool.yaml":
            text = text.replace("  targetPorts:\n", "  appProtocol: kubernetes.io/h2c\n  targetPorts:\n")
            assert "appProtocol" in text
        (folder / source.name).write_text(text)
    return folder


def test_up_refuses_a_pool_whose_servers_take_http2_only(tmp_path: Path, h2c_tutorial: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    args = ["up", "--quiet", str(h2c_tutorial), "--port", str(free_port()), "--admin-port", str(free_port())]
    done = infergate(args, run)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, done.stderr
    assert "spec.appProtocol: kubernetes.io/h2c" in errors[0] and "speak HTTP/1.1 only" in errors[0]
    assert not list(run.glob("infergate-up-*"))


def test_serve_with_the_builtin_proxy_refuses_an_h2c_pool(tmp_path: Path, h2c_tutorial: Path) -> None:
    args = ["serve", "-f", str(h2c_tutorial), "--port", str(free_port()), "--admin-port", str(free_port())]
    done = infergate([*args, "--log-level", "error"], tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "InferencePool/vllm-llama3.1-8b-instruct: spec.appProtocol: kubernetes.io/h2c" in done.stderr
    assert "the builtin data plane sends requests to model servers over HTTP/1.1" in done.stderr
