"""One resource kind kept in sync with the Kubernetes API by list + watch (a "reflector").

The reflector owns a name → object map (raw JSON dicts) for one namespaced resource. It lists once,
then watches from the list's ``resourceVersion`` with bookmarks, so the map follows the server with
no gaps:

- a watch that ends cleanly (server timeout) or breaks mid-stream is resumed from the last
  resourceVersion seen (event or BOOKMARK), so nothing is missed and nothing is listed again;
- a watch answered with 410 Gone (the resourceVersion was compacted away) triggers a relist; the
  relist *replaces* the map, so objects deleted while we were not watching disappear too;
- any other failure (connection refused, 5xx, bad JSON) is retried with capped exponential backoff
  and jitter, starting from where it failed.

A resource marked ``optional`` whose API is not installed (404 on list, e.g. a CRD group the cluster
does not have) counts as synced and empty, and is listed again every ``backoff_max`` seconds, so
installing the CRD later is noticed without a restart.

After every change the ``on_change`` callback runs synchronously; the owner recomputes what it
derives from all the maps. The reflector never writes anything to the API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from typing import Any

import aiohttp

from infergate.sources.kubernetes_client import Resource, k8s_client

__all__ = ["Reflector", "WatchError"]

log = logging.getLogger("infergate.kubernetes")


class WatchError(Exception):
    """The API answered something other than a usable list or event (status code kept).

    ``retry_after`` is the server's ``Retry-After`` (seconds), e.g. with 429 "storage is
    (re)initializing" while a restarted API server fills its watch cache.
    """

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.retry_after = retry_after


class _Gone(Exception):
    """410 Gone: our resourceVersion is too old to watch from; relist."""


class _NotInstalled(Exception):
    """404 on list of an optional resource: its API (CRD) is not installed in the cluster."""


class Reflector:
    """List + watch one resource in one namespace into :attr:`items`.

    Args:
        api_client: a ``kubernetes_asyncio`` ``ApiClient``.
        resource: which resource (pods, or a custom resource).
        namespace: the namespace watched.
        on_change: called synchronously with the reflector after each list and each event.
        watch_timeout: ``timeoutSeconds`` asked of the server for each watch; the watch is then
            resumed, which bounds how long a silently dead connection can go unnoticed.
        backoff_initial, backoff_max: retry delays (seconds) after an error, doubled each time.
    """

    def __init__(
        self,
        api_client: Any,
        resource: Resource,
        namespace: str,
        on_change: Callable[[Reflector], None],
        *,
        watch_timeout: int = 300,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        rng: random.Random | None = None,
        optional: bool = False,
    ) -> None:
        self.resource = resource
        self.optional = optional
        self.installed = True
        self.namespace = namespace
        self.items: dict[str, dict[str, Any]] = {}
        self.resource_version = ""
        self.synced = asyncio.Event()
        self.lists = 0
        self.watches = 0
        self.relists_gone = 0
        self.errors = 0
        self._api_client = api_client
        self._on_change = on_change
        self._watch_timeout = watch_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._rng = rng or random.Random()

    # ------------------------------------------------------------------ main loop

    async def run(self) -> None:
        """List, then watch forever; returns only by cancellation."""
        backoff = self._backoff_initial
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch_once()
                backoff = self._backoff_initial
            except _NotInstalled:
                if self.installed:
                    log.info("%s: not installed in the cluster (404); treating as empty", self._what)
                self.installed = False
                need_list = True
                await asyncio.sleep(self._backoff_max)
            except _Gone:
                self.relists_gone += 1
                log.info(
                    "%s: resourceVersion %s expired (410 Gone); relisting", self._what, self.resource_version
                )
                need_list = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # network, HTTP, JSON or a malformed object: retry, never die
                self.errors += 1
                delay = backoff * (0.5 + self._rng.random())
                hint = getattr(exc, "retry_after", None)
                if hint is not None:  # the server said when; never wait longer than our cap
                    delay = min(max(delay, hint), self._backoff_max)
                log.warning("%s: %s; retrying in %.2fs", self._what, _describe(exc), delay)
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, self._backoff_max)

    @property
    def _what(self) -> str:
        r = self.resource
        group = f".{r.group}" if r.group else ""
        return f"{r.plural}{group} in {self.namespace}"

    # ------------------------------------------------------------------ list

    async def _call(self, **kwargs: Any) -> Any:
        """The generated client's list call for this resource, raw response (not preloaded)."""
        r = self.resource
        if r.group == "":
            api = k8s_client.CoreV1Api(self._api_client)
            method = getattr(api, f"list_namespaced_{r.kind.lower()}")
            return await method(self.namespace, _preload_content=False, **kwargs)
        api = k8s_client.CustomObjectsApi(self._api_client)
        return await api.list_namespaced_custom_object(
            r.group, r.version, self.namespace, r.plural, _preload_content=False, **kwargs
        )

    async def _list(self) -> None:
        resp = await self._call(_request_timeout=aiohttp.ClientTimeout(total=60))
        try:
            body = await resp.read()
            if resp.status == 410:
                raise _Gone
            if resp.status == 404 and self.optional:
                self._set_items({}, "")
                raise _NotInstalled
            if resp.status != 200:
                raise WatchError(resp.status, _status_message(body), _retry_after(resp))
        finally:
            resp.release()
        data = json.loads(body)
        items: dict[str, dict[str, Any]] = {}
        for item in data.get("items") or []:
            obj = self._complete(item)
            items[obj["metadata"]["name"]] = obj
        self.installed = True
        self._set_items(items, str((data.get("metadata") or {}).get("resourceVersion", "")))

    def _set_items(self, items: dict[str, dict[str, Any]], resource_version: str) -> None:
        self.items = items
        self.resource_version = resource_version
        self.lists += 1
        self.synced.set()
        self._on_change(self)

    def _complete(self, obj: dict[str, Any]) -> dict[str, Any]:
        # Items of typed lists come without apiVersion/kind; models downstream expect them.
        obj.setdefault("apiVersion", self.resource.api_version)
        obj.setdefault("kind", self.resource.kind)
        return obj

    # ------------------------------------------------------------------ watch

    async def _watch_once(self) -> None:
        """One watch request, applied event by event until the server ends it."""
        self.watches += 1
        resp = await self._call(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout,
            # A watch whose connection outlives the server (a proxy keeps it open across an API
            # server restart) delivers nothing, not even bookmarks: give up on it soon after the
            # server should have ended it, then resume or relist.
            _request_timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=10,
                sock_read=self._watch_timeout + min(30.0, 2.0 * self._watch_timeout),
            ),
        )
        try:
            if resp.status == 410:
                raise _Gone
            if resp.status != 200:
                raise WatchError(resp.status, _status_message(await resp.read()), _retry_after(resp))
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        self._apply_event(json.loads(line))
            if buffer.strip():
                self._apply_event(json.loads(buffer))
        finally:
            resp.close()

    def _apply_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = int(obj.get("code") or 0)
            if code == 410:
                raise _Gone
            raise WatchError(code, str(obj.get("message", "watch error")))
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            if rv:
                self.resource_version = str(rv)
            return
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            raise WatchError(0, f"unexpected watch event type {kind!r}")
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.items.pop(name, None)
        else:
            self.items[name] = self._complete(obj)
        if rv:
            self.resource_version = str(rv)
        self._on_change(self)


def _retry_after(resp: Any) -> float | None:
    value = (getattr(resp, "headers", None) or {}).get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _status_message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace")
    if isinstance(data, dict):
        return str(data.get("message") or data.get("reason") or data)
    return str(data)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
