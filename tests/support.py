"""Helpers shared by the test suite: free ports, polling with a deadline, real child processes.

Tests never sleep to synchronise: they poll a condition until a deadline and fail with a message.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import yaml

from infergate.bench.workloads import WorkloadSpec
from infergate.config.settings import Settings

# Deadlines only stop hangs, they never measure: a loaded machine (CI has 2 cores shared with child
# processes) may need far longer than the caller expected, so no wait below gives up sooner than this.
MIN_DEADLINE = 60.0


def load_bench_script(name: str) -> ModuleType:
    """``bench/<name>.py`` as a module: the bench scripts are files, not a package."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _port_block() -> range | None:
    """The ports this test process hands out: 1,000 below the kernel's ephemeral range, a block per
    pytest-xdist worker. A port the kernel chose (``bind(0)``) and the test closed again may be
    chosen for another worker before the test's server binds it; ports from disjoint blocks outside
    the ephemeral range are never given out twice at once, nor to a client connection. None when the
    ephemeral range leaves no room below it (then the kernel chooses)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    start = 10_000 + 1_000 * index
    return range(start, start + 1_000) if start + 1_000 <= low else None


_PORTS = _port_block()
_next_port = 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, from this process's block when it has
    one (see :func:`_port_block`), taken in turn so that a port just closed is not handed out again
    at once."""
    global _next_port
    if _PORTS is not None:
        for _ in range(len(_PORTS)):
            port = _PORTS[_next_port % len(_PORTS)]
            _next_port += 1
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], bool], *, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it is true or fail after ``timeout`` (at least MIN_DEADLINE) seconds."""
    timeout = max(timeout, MIN_DEADLINE)
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def async_wait_for(
    predicate: Callable[[], Awaitable[bool]],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> None:
    """Async twin of :func:`wait_for`."""
    timeout = max(timeout, MIN_DEADLINE)
    deadline = time.monotonic() + timeout
    while True:
        if await predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def eventually(
    predicate: Callable[[], bool], *, timeout: float = 30.0, interval: float = 0.01, what: str = "condition"
) -> None:
    """Async poll of a plain (non-async) condition until it holds; fails after ``timeout`` seconds.

    The deadline is a bound against hangs, never a measurement: keep it generous (the machine may be
    loaded) and make the condition itself tell the behaviour apart.
    """
    timeout = max(timeout, MIN_DEADLINE)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError):
        return False


def envoy_concurrency(admin: str) -> int:
    """Envoy's worker threads, as its admin ``/server_info`` (``host:port``) reports its command line."""
    with urllib.request.urlopen(f"http://{admin}/server_info", timeout=10) as resp:
        return int(json.load(resp)["command_line_options"]["concurrency"])


@dataclass
class ChildProcess:
    """A real ``infergate`` child process, its output kept in a file for failure messages."""

    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] = field(repr=False)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def start_infergate(
    args: Sequence[str],
    log_dir: Path,
    *,
    health_url: str | None = None,
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
) -> ChildProcess:
    """Start ``python -m infergate ARGS`` and, if ``health_url`` is given, wait until it answers 2xx."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"infergate-{os.getpid()}-{time.monotonic_ns()}.log"
    full_env = dict(os.environ)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    if env:
        full_env.update(env)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "infergate", *args], stdout=log, stderr=subprocess.STDOUT, env=full_env
        )
    child = ChildProcess(list(args), log_path, proc)
    if health_url is not None:
        timeout = max(timeout, MIN_DEADLINE)
        deadline = time.monotonic() + timeout
        while not http_ok(health_url):
            if not child.alive():
                raise AssertionError(f"infergate {args} exited early:\n{child.output()}")
            if time.monotonic() > deadline:
                child.stop()
                raise AssertionError(f"infergate {args} not healthy after {timeout}s:\n{child.output()}")
            time.sleep(0.05)
    return child


class Simulator(NamedTuple):
    """An ``infergate simulate`` child on 127.0.0.1 and its ``host:port`` key."""

    child: ChildProcess
    key: str

    @property
    def port(self) -> int:
        return int(self.key.rsplit(":", 1)[1])

    @property
    def url(self) -> str:
        return f"http://{self.key}"


def start_simulator(tmp: Path, *args: str) -> Simulator:
    """``infergate simulate --host 127.0.0.1 --port <free> ARGS``, returned once ``/health`` answers."""
    port = free_port()
    argv = ["simulate", "--host", "127.0.0.1", "--port", str(port), *args]
    child = start_infergate(argv, tmp, health_url=f"http://127.0.0.1:{port}/health")
    return Simulator(child, f"127.0.0.1:{port}")


def write_pool(
    tmp: Path,
    addresses: Sequence[str],
    *,
    objectives: dict[str, int] | None = None,
    annotations: dict[str, str] | None = None,
    name: str = "pool.yaml",
) -> Path:
    """:func:`static_pool_docs` written to ``tmp/name`` (the manifests file a gateway is given)."""
    path = tmp / name
    path.write_text(
        yaml.safe_dump_all(static_pool_docs(addresses, objectives=objectives, annotations=annotations))
    )
    return path


def static_pool_docs(
    addresses: Sequence[str],
    *,
    objectives: dict[str, int] | None = None,
    annotations: dict[str, str] | None = None,
) -> list[dict[str, object]]:
    """Manifests of a pool ``pool`` whose endpoints are the given ``host:port`` addresses (labelled
    ``app: sim``, named ``sim0``, ``sim1``…), plus InferenceObjectives ``name → priority``; every
    objective gets ``annotations``."""
    docs: list[dict[str, object]] = [
        {
            "apiVersion": "inference.networking.k8s.io/v1",
            "kind": "InferencePool",
            "metadata": {"name": "pool"},
            "spec": {
                "selector": {"matchLabels": {"app": "sim"}},
                "targetPorts": [{"number": 8000}],
                "endpointPickerRef": {"name": "epp", "port": {"number": 9002}},
            },
        }
    ]
    for name, priority in (objectives or {}).items():
        metadata: dict[str, object] = {"name": name}
        if annotations:
            metadata["annotations"] = dict(annotations)
        docs.append(
            {
                "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
                "kind": "InferenceObjective",
                "metadata": metadata,
                "spec": {"priority": priority, "poolRef": {"name": "pool"}},
            }
        )
    docs.append(
        {
            "apiVersion": "infergate.dev/v1alpha1",
            "kind": "EndpointList",
            "metadata": {"name": "sims"},
            "spec": {
                "poolName": "pool",
                "endpoints": [
                    {"name": f"sim{i}", "address": address, "labels": {"app": "sim"}}
                    for i, address in enumerate(addresses)
                ],
            },
        }
    )
    return docs


def local_settings(changes: dict[str, Any] | None = None) -> Settings:
    """Gateway settings for a test on loopback: 127.0.0.1, free inference and admin ports, and
    ``changes`` (dotted setting paths such as ``scrape.health_interval``)."""
    base = {"listeners.host": "127.0.0.1", "listeners.port": 0, "listeners.admin_port": 0}
    return Settings().replace({**base, **(changes or {})})


def session_workload(**fields: object) -> WorkloadSpec:
    """A small ``shared_prefix`` workload (2 tenants, 4 sessions of 3 turns, 2 replicas); ``fields``
    set or add its workload fields (``turn_after_answer``, ``staggered``)."""
    body = {
        "type": "shared_prefix",
        "tenants": 2,
        "system_prompt_tokens": 40,
        "question": {"mean": 20},
        "answer": {"mean": 30},
        "turns": 3,
        "sessions": 4,
        **fields,
    }
    return WorkloadSpec.model_validate({"name": "s", "seed": 3, "workload": body, "pool": {"replicas": 2}})


def granted_rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    """A rendered Role's or ClusterRole's rules as (API group, resource, verb) triples."""
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
