"""The LoRA syncer: keeps a model server's runtime LoRA adapters equal to a config file.

This module owns the reconcile loop of the reference sidecar (GIE ``tools/dynamic-lora-sidecar``):
wait for ``/health``, read what is loaded from ``/v1/models``, ``POST /v1/load_lora_adapter`` for
each ``ensureExist`` adapter missing and ``POST /v1/unload_lora_adapter`` for each ``ensureNotExist``
adapter present; adapters listed in both are skipped with a warning. It reconciles at start, every
``interval`` seconds and as soon as the file changes (its target's identity, mtime or size; a
ConfigMap volume swaps a ``..data`` symlink, which this catches). A failed round is retried with
exponential back-off. It speaks HTTP only (aiohttp) and imports nothing from the gateway.

vLLM's answers it relies on: 200 on success; load of an adapter already loaded → 400 "The lora
adapter '<id>' has already been loaded."; unload of an unknown adapter → 404 (400 in older
versions) "The lora adapter '<id>' cannot be found." Both are treated as "already in the desired
state". Anything else (including 404 because runtime LoRA updating is disabled) is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from infergate.lora.config import Adapter, SyncerConfig, load_config

__all__ = ["LoraSyncer", "ReconcileResult", "ServerError"]

log = logging.getLogger("infergate.lora")


class ServerError(Exception):
    """The model server could not be reached or answered something unexpected."""


@dataclass
class ReconcileResult:
    """What one reconcile round did."""

    loaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def _error_message(body: str) -> str:
    """The message of a vLLM error body (old ``{"message"}`` or new ``{"error": {"message"}}``)."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        return body.strip()
    if isinstance(data, dict):
        inner = data.get("error")
        if isinstance(inner, dict) and "message" in inner:
            return str(inner["message"])
        if "message" in data:
            return str(data["message"])
        if "detail" in data:
            return str(data["detail"])
    return body.strip()


def _fingerprint(path: Path) -> tuple[str, int, int, int, int] | None:
    """Identity of the file's current content; follows symlinks. ``None`` if it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.path.realpath(path), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class LoraSyncer:
    """Reconciles one model server against one config file until :meth:`run` is stopped.

    ``host``/``port`` given here override the file's (the ``--host``/``--port`` flags).
    """

    def __init__(
        self,
        config_path: Path,
        *,
        host: str | None = None,
        port: int | None = None,
        interval: float = 5.0,
        health_path: str = "/health",
        health_timeout: float = 300.0,
        health_interval: float = 0.5,
        watch_interval: float = 1.0,
        backoff: float = 0.5,
        backoff_max: float = 30.0,
        request_timeout: float = 120.0,
    ) -> None:
        self.config_path = Path(config_path)
        self.host_override = host
        self.port_override = port
        self.interval = interval
        self.health_path = health_path if health_path.startswith("/") else "/" + health_path
        self.health_timeout = health_timeout
        self.health_interval = health_interval
        self.watch_interval = watch_interval
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.request_timeout = request_timeout
        self.config: SyncerConfig | None = None
        self.status: dict[str, bool] = {}
        """Adapter id → loaded, as of the last round (the reference's ``lora_syncer_adapter_status``)."""
        self.rounds = 0
        self._session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ HTTP

    @property
    def base_url(self) -> str:
        cfg = self.config
        host = self.host_override or (cfg.host if cfg else "localhost")
        port = self.port_override or (cfg.port if cfg else 8000)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.request_timeout))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, limit_s: float | None = None
    ) -> tuple[int, str]:
        limit = aiohttp.ClientTimeout(total=limit_s) if limit_s is not None else None
        try:
            async with self._http().request(method, self.base_url + path, json=body, timeout=limit) as resp:
                return resp.status, await resp.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ServerError(f"{method} {self.base_url}{path}: {exc.__class__.__name__}: {exc}") from exc

    async def healthy(self) -> bool:
        try:
            status, _ = await self._request("GET", self.health_path, limit_s=min(5.0, self.request_timeout))
        except ServerError:
            return False
        return status == 200

    async def wait_healthy(self, stop: asyncio.Event | None = None) -> bool:
        """Poll the health path until 200; False on timeout or when ``stop`` is set."""
        deadline = time.monotonic() + self.health_timeout
        while True:
            if await self.healthy():
                return True
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                return False
            await _wait(stop, min(self.health_interval, max(0.0, deadline - time.monotonic())))

    async def registered(self) -> set[str]:
        """Ids the server lists in ``/v1/models`` (base model and adapters)."""
        status, text = await self._request("GET", "/v1/models")
        if status != 200:
            raise ServerError(f"GET /v1/models: HTTP {status}: {_error_message(text)}")
        try:
            data = json.loads(text)
            return {str(m["id"]) for m in data["data"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise ServerError(f"GET /v1/models: unexpected body: {text[:200]!r}") from exc

    async def load(self, adapter: Adapter) -> bool:
        """Load one adapter; True if it is loaded afterwards (also when it already was)."""
        body = {"lora_name": adapter.id, "lora_path": adapter.source}
        status, text = await self._request("POST", "/v1/load_lora_adapter", body)
        message = _error_message(text)
        if status == 200:
            log.info(
                "loaded adapter %s from %s (base %s): %s",
                adapter.id,
                adapter.source,
                adapter.base_model,
                message,
            )
            return True
        if status == 400 and "already been loaded" in message:
            log.info("adapter %s was already loaded", adapter.id)
            return True
        raise ServerError(f"load {adapter.id}: HTTP {status}: {message}")

    async def unload(self, adapter: Adapter) -> bool:
        """Unload one adapter; True if it is absent afterwards (also when it already was)."""
        status, text = await self._request("POST", "/v1/unload_lora_adapter", {"lora_name": adapter.id})
        message = _error_message(text)
        if status == 200:
            log.info("unloaded adapter %s: %s", adapter.id, message)
            return True
        if status in (400, 404) and "cannot be found" in message:
            log.info("adapter %s was not loaded", adapter.id)
            return True
        raise ServerError(f"unload {adapter.id}: HTTP {status}: {message}")

    # ------------------------------------------------------------------ reconcile

    async def reconcile(self) -> ReconcileResult:
        """One round against the current config; never raises for server trouble (see ``failed``)."""
        result = ReconcileResult()
        cfg = self.config
        if cfg is None:
            result.failed["(config)"] = "no valid configuration"
            return result
        self.rounds += 1
        want = {a.id: a for a in cfg.ensure_exist}
        drop = {a.id: a for a in cfg.ensure_not_exist}
        both = sorted(want.keys() & drop.keys())
        for aid in both:
            log.warning("adapter %s is in both ensureExist and ensureNotExist; skipping it", aid)
            result.skipped.append(aid)
        try:
            present = await self.registered()
        except ServerError as exc:
            result.failed["/v1/models"] = str(exc)
            log.warning("cannot list adapters: %s", exc)
            return result
        for aid, adapter in want.items():
            if aid in drop:
                continue
            if aid in present:
                result.unchanged.append(aid)
                self.status[aid] = True
                continue
            try:
                await self.load(adapter)
                result.loaded.append(aid)
                self.status[aid] = True
            except ServerError as exc:
                result.failed[aid] = str(exc)
                self.status[aid] = False
                log.warning("%s", exc)
        for aid, adapter in drop.items():
            if aid in want:
                continue
            if aid not in present:
                result.unchanged.append(aid)
                self.status[aid] = False
                continue
            try:
                await self.unload(adapter)
                result.unloaded.append(aid)
                self.status[aid] = False
            except ServerError as exc:
                result.failed[aid] = str(exc)
                log.warning("%s", exc)
        return result

    def reload_config(self) -> bool:
        """Re-read the file; on error keep the previous config and return False."""
        try:
            cfg = load_config(self.config_path)
        except ValueError as exc:
            log.error("invalid LoRA config, keeping the previous one: %s", exc)
            return False
        if cfg != self.config:
            log.info(
                "config %s: ensureExist=%s ensureNotExist=%s",
                self.config_path,
                [a.id for a in cfg.ensure_exist],
                [a.id for a in cfg.ensure_not_exist],
            )
        self.config = cfg
        return True

    async def run(self, stop: asyncio.Event, *, grace: float = 1.0) -> int:
        """Wait for health, then reconcile until ``stop`` is set. Returns a process exit code.

        When ``stop`` is set during a slow request (a model server loading a large adapter), that
        request gets ``grace`` seconds to finish before it is abandoned.
        """
        work = asyncio.create_task(self._run(stop))
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                try:
                    return await asyncio.wait_for(work, grace)
                except TimeoutError:
                    log.warning("stopped while a request to %s was still running", self.base_url)
                    return 0
            return work.result()
        finally:
            stopped.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
            await self.close()

    async def _run(self, stop: asyncio.Event) -> int:
        try:
            if self.config is None and not self.reload_config():
                return 2
            log.info("waiting for %s%s", self.base_url, self.health_path)
            if not await self.wait_healthy(stop):
                if stop.is_set():
                    return 0
                log.error("model server %s not healthy after %.0fs", self.base_url, self.health_timeout)
                return 1
            seen = _fingerprint(self.config_path)
            next_round = 0.0
            delay = self.backoff
            while not stop.is_set():
                current = _fingerprint(self.config_path)
                if current != seen:
                    seen = current
                    if current is None:
                        log.warning("config %s disappeared; keeping the previous one", self.config_path)
                    elif self.reload_config():
                        next_round = 0.0
                now = time.monotonic()
                if now >= next_round:
                    result = await self.reconcile()
                    if result.ok:
                        delay = self.backoff
                        next_round = time.monotonic() + self.interval
                    else:
                        log.warning(
                            "reconcile failed (%s); retrying in %.1fs", ", ".join(result.failed), delay
                        )
                        next_round = time.monotonic() + delay
                        delay = min(delay * 2, self.backoff_max)
                await _wait(stop, max(0.0, min(self.watch_interval, next_round - time.monotonic())))
            return 0
        finally:
            await self.close()


async def _wait(stop: asyncio.Event | None, seconds: float) -> None:
    """Sleep up to ``seconds``, returning early when ``stop`` is set."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
