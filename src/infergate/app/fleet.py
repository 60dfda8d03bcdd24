"""Local model-server replicas for ``infergate up``: simulator and LoRA-syncer child processes.

For each model-server Deployment in the manifests, ``replicas`` ``infergate simulate`` processes
run with the pod template's vLLM flags and literal env (``--port`` replaced by a free local port),
each with one ``infergate lora-syncer`` when the pod mounts a vLLMLoRAConfig ConfigMap, as the
tutorial's sidecar does. The fleet owns the processes: it waits for them to become healthy and
terminates and reaps every one of them on stop; and each of them dies with the gateway process
even when that is killed outright (:func:`~infergate.servers.children.with_parent_death`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import sys
import tempfile
import urllib.request
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from infergate.api.loader import ManifestSet
from infergate.api.workloads import DeploymentResource
from infergate.errors import ConfigError
from infergate.servers.children import with_parent_death
from infergate.types import H2C, EndpointMeta, PoolSpec

from .preflight import replica_port_list

__all__ = ["Fleet", "Replica", "free_port", "quiet_ports", "replace_port"]

log = logging.getLogger("infergate.fleet")


#: Where :func:`free_port` draws from: above the ports the test suite hands out (10,000 on, a
#: block of 1,000 per worker), below the kernel's ephemeral range (read from here).
_QUIET_PORTS_FROM = 20_000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_DRAWS = 64
#: Ports this process handed out lately: two calls in a row (a replica and its sidecar, a router and
#: its admin) must not draw the same port before either child has bound it.
_RECENT: deque[int] = deque(maxlen=256)


def quiet_ports(path: Path = _EPHEMERAL_RANGE) -> range:
    """Ports from 20,000 up to the kernel's ephemeral range (empty when that cannot be read)."""
    try:
        low = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return range(0)
    return range(_QUIET_PORTS_FROM, max(low, _QUIET_PORTS_FROM))


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1", *, quiet: range | None = None) -> int:
    """A port free a moment ago, for a child process to listen on once it has started.

    The child binds it a second or so later. A port the kernel chose (``bind(0)``, then closed)
    is one of its ephemeral ports, which it also hands to every outgoing connection and every
    other ``bind(0)`` on the machine meanwhile: any of them may take it first, and the child exits
    "address already in use" (seen with Envoy's listener port). So the port is drawn at random
    from ``quiet`` (default :func:`quiet_ports`), which only a process naming that very port can
    take; the kernel chooses only when ``quiet`` is empty or ``_DRAWS`` draws were all taken. No
    port is handed out twice among this process's last 256.
    """
    ports = quiet_ports() if quiet is None else quiet
    port = 0
    if ports:
        draw = random.SystemRandom()
        for _ in range(_DRAWS):
            candidate = draw.choice(ports)
            if candidate not in _RECENT and _bindable(host, candidate):
                port = candidate
                break
    while not port or port in _RECENT:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
    _RECENT.append(port)
    return port


def replace_port(argv: Sequence[str], port: int, host: str = "127.0.0.1") -> list[str]:
    """``argv`` with any ``--port``/``--host`` removed and ours appended."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--port", "--host"):
            skip = True
            continue
        if arg.startswith(("--port=", "--host=")):
            continue
        out.append(arg)
    return [*out, "--host", host, "--port", str(port)]


@dataclass
class Replica:
    """One simulated pod: its server process and optional LoRA-syncer sidecar."""

    name: str
    deployment: str
    port: int
    labels: dict[str, str]
    argv: list[str]
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    syncer: asyncio.subprocess.Process | None = None
    syncer_argv: list[str] = field(default_factory=list)
    sidecar: asyncio.subprocess.Process | None = None
    sidecar_argv: list[str] = field(default_factory=list)
    """P/D decode pods: ``infergate pd-sidecar`` on ``port`` in front of the simulator."""
    server_port: int = 0
    """The simulator's own port: ``port`` unless a P/D sidecar listens there."""
    adapters: tuple[str, ...] = ()
    """Adapters its LoRA syncer must load (``ensureExist``); the fleet is ready once they are."""

    @property
    def key(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        """The server runs, and so does its P/D sidecar if the pod has one (a sidecar that could
        not bind its port fails the start at once instead of after the health deadline)."""
        sidecar_ok = not self.sidecar_argv or (self.sidecar is not None and self.sidecar.returncode is None)
        return self.proc is not None and self.proc.returncode is None and sidecar_ok


def _model_ids(url: str) -> set[str]:
    """The ids ``/v1/models`` lists; empty when the server does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            data = json.loads(resp.read())
        return {str(m.get("id")) for m in data.get("data", []) if isinstance(m, dict)}
    except (OSError, ValueError, AttributeError):
        return set()


def _health_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as resp:
            return 200 <= int(resp.status) < 300
    except OSError:
        return False


class Fleet:
    """Starts, watches and stops the simulated replicas of every model-server Deployment."""

    def __init__(
        self,
        manifests: ManifestSet,
        pool: PoolSpec,
        *,
        replicas: int | None = None,
        run_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        ports: Sequence[int] = (),
    ) -> None:
        """``ports``: ``--replica-ports`` (one per replica, or the first of a run); free ports if empty."""
        self._manifests = manifests
        self._ports = list(ports)
        self._pool = pool
        self._replicas_override = replicas
        self.run_dir = run_dir or Path(tempfile.mkdtemp(prefix="infergate-up-"))
        self._extra_args = list(extra_args)
        self.replicas: list[Replica] = []

    def _deployments(self) -> list[DeploymentResource]:
        deps = [d for d in self._manifests.deployments if self._selected(d)]
        if not deps:
            raise ConfigError(
                f"no model-server Deployment whose pod labels match InferencePool/{self._pool.name} selector "
                f"{dict(self._pool.selector)}"
            )
        return deps

    def _selected(self, d: DeploymentResource) -> bool:
        labels = d.pod_labels
        return all(labels.get(k) == v for k, v in self._pool.selector.items())

    def plan(self) -> list[Replica]:
        """Decide names, ports and command lines (kept in :attr:`replicas`); nothing is started."""
        if self._pool.app_protocol == H2C:
            raise ConfigError(
                f"InferencePool/{self._pool.name}: spec.appProtocol: {H2C}: the simulated replicas of "
                "`up` speak HTTP/1.1 only; use appProtocol: http, or `infergate serve` in front of "
                "model servers that take HTTP/2"
            )
        out: list[Replica] = []
        deployments = self._deployments()
        counts = [
            self._replicas_override if self._replicas_override is not None else d.replicas
            for d in deployments
        ]
        chosen = iter(replica_port_list(self._ports, sum(counts)))
        for dep, count in zip(deployments, counts, strict=True):
            flags = dep.vllm_argv()
            sidecar = dep.pd_sidecar_container()
            for i in range(count):
                port = next(chosen, None) or free_port()
                server_port = free_port() if sidecar is not None else port
                name = f"{dep.name}-{i}"
                argv = [
                    sys.executable,
                    "-m",
                    "infergate",
                    "simulate",
                    *replace_port(flags, server_port),
                    "--seed",
                    str(i),
                    *self._extra_args,
                ]
                r = Replica(
                    name=name,
                    deployment=dep.name,
                    port=port,
                    labels=dict(dep.pod_labels),
                    argv=argv,
                    log_path=self.run_dir / f"{name}.log",
                    server_port=server_port,
                )
                if sidecar is not None:  # the pod's port is the sidecar's; the server sits behind it
                    r.sidecar_argv = [
                        sys.executable,
                        "-m",
                        "infergate",
                        "pd-sidecar",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--model-server-port",
                        str(server_port),
                    ]
                cm = dep.lora_configmap()
                if cm is not None:
                    r.syncer_argv = self._syncer_argv(dep, cm, r)
                    lora = self._manifests.lora_configs.get(cm)
                    if r.syncer_argv and lora is not None:
                        r.adapters = tuple(a.id for a in lora.ensure_exist)
                out.append(r)
        self.replicas = out
        return out

    def _syncer_argv(self, dep: DeploymentResource, configmap: str, r: Replica) -> list[str]:
        cms = [c for c in self._manifests.config_maps if c.name == configmap]
        if not cms:
            log.warning(
                "Deployment/%s mounts ConfigMap %s which is not in the manifests", dep.name, configmap
            )
            return []
        key = dep.lora_config_key()
        text = cms[0].data.get(key)
        if text is None:
            log.warning("ConfigMap/%s has no key %s", configmap, key)
            return []
        path = self.run_dir / f"{configmap}.yaml"
        path.write_text(text)
        return [
            sys.executable,
            "-m",
            "infergate",
            "lora-syncer",
            "--config",
            str(path),
            "--host",
            "127.0.0.1",
            "--port",
            str(r.port),
        ]

    def endpoints(self) -> list[EndpointMeta]:
        return [
            EndpointMeta(name=r.name, address="127.0.0.1", port=r.port, pool=self._pool.name, labels=r.labels)
            for r in self.replicas
        ]

    def _env(self, dep_name: str, port: int) -> dict[str, str]:
        """The pod's literal env; ``port`` is the server's own."""
        env = dict(os.environ)
        for dep in self._manifests.deployments:
            if dep.name == dep_name:
                env.update(dep.vllm_env())
        env["PORT"] = str(port)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    async def start(self, *, health_wait: float = 60.0) -> None:
        """Start every replica (and sidecar) and wait until all answer ``/health``."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.replicas:
            self.plan()
        for r in self.replicas:
            env = self._env(r.deployment, r.server_port or r.port)
            r.proc = await _spawn(r.argv, r.log_path, env=env)
            log.info("started %s on port %d (pid %d)", r.name, r.server_port or r.port, r.proc.pid)
            if r.sidecar_argv:
                r.sidecar = await _spawn(r.sidecar_argv, self.run_dir / f"{r.name}-pd-sidecar.log")
        await self._wait_healthy(health_wait)
        for r in self.replicas:
            if r.syncer_argv:
                r.syncer = await _spawn(r.syncer_argv, self.run_dir / f"{r.name}-lora-syncer.log")
        await self._wait_adapters(health_wait)

    async def _wait_adapters(self, limit: float) -> None:
        """Wait until every replica lists the adapters its syncer must load, so the first request
        for an adapter does not meet a server that has not loaded it yet. A syncer that cannot load
        them is reported, not fatal: the gateway then routes around the missing adapter."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        pending = {r.name: r for r in self.replicas if r.adapters}
        while pending:
            for name, r in list(pending.items()):
                models = await asyncio.to_thread(_model_ids, f"http://{r.key}/v1/models")
                if set(r.adapters) <= models:
                    del pending[name]
            if not pending:
                return
            if loop.time() > deadline:
                log.warning("LoRA adapters not loaded after %.0fs on: %s", limit, ", ".join(pending))
                return
            await asyncio.sleep(0.1)

    async def _wait_healthy(self, limit: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        pending = {r.name: r for r in self.replicas}
        while pending:
            for name, r in list(pending.items()):
                if not r.alive():
                    raise RuntimeError(f"replica {name} exited early:\n{self.tail(r)}")
                if await asyncio.to_thread(_health_ok, f"http://{r.key}{self._pool.health_path}"):
                    del pending[name]
            if not pending:
                return
            if loop.time() > deadline:
                raise RuntimeError(f"replicas not healthy after {limit}s: {', '.join(pending)}")
            await asyncio.sleep(0.1)

    @staticmethod
    def tail(r: Replica, lines: int = 30) -> str:
        try:
            return "\n".join(r.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every child, wait up to ``grace`` seconds, SIGKILL the rest; always reaps them."""
        procs = [p for r in self.replicas for p in (r.syncer, r.sidecar, r.proc) if p is not None]
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.terminate()

        async def reap(p: asyncio.subprocess.Process) -> None:
            try:
                await asyncio.wait_for(p.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()

        await asyncio.gather(*(reap(p) for p in procs))


async def _spawn(
    argv: Sequence[str], log_path: Path, *, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """Start a child of the fleet: output appended to ``log_path``, no stdin, dying with a
    SIGKILLed gateway (``with_parent_death``), and in its own session so Ctrl-C reaches the gateway
    only: it drains, then stops its children."""
    with log_path.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            *with_parent_death(argv),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
