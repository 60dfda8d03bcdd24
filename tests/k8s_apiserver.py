"""A Kubernetes API server stand-in for tests: the real REST and watch protocol over HTTP.

It serves just enough of the API for the picker's Kubernetes source and metrics auth, with the
semantics the real client library relies on:

- list (``GET .../pods``) answers a ``*List`` with ``metadata.resourceVersion``;
- watch (``?watch=true``) streams JSON lines ``{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR,
  "object": ...}`` starting after the given ``resourceVersion`` (replaying the history), or, without
  one, with synthetic ADDED events for the current state; ``allowWatchBookmarks`` adds BOOKMARK
  events; ``timeoutSeconds`` ends the stream cleanly;
- a ``resourceVersion`` older than the compaction point gets a 410 Gone ``ERROR`` event (watch) or
  a 410 ``Status`` (list), as etcd compaction does;
- GET/PUT of a custom object and its ``/status`` subresource (with optimistic concurrency: a stale
  ``metadata.resourceVersion`` is a 409 Conflict);
- ``tokenreviews`` and ``subjectaccessreviews`` (non-resource ``/metrics`` ``get``) from tables.

Tests change state with :meth:`FakeApiServer.apply` and :meth:`FakeApiServer.delete`, break every
open watch with :meth:`drop_watches` and force relists with :meth:`compact`.

Behaviours of a real kube-apiserver (v1.36, etcd 3.5) the picker must survive:

- :meth:`restart`: after a restart the server answers 429 "storage is (re)initializing" (with
  ``Retry-After``) while its watch cache fills, then 410 Gone for resourceVersions from before;
- :meth:`stall_watches`: watch connections that outlive a graceful shutdown (kept open by a proxy)
  and deliver nothing, not even bookmarks, and never end;
- ``bookmark_interval`` large: bookmarks that rarely come;
- ``status_conflicts``: the next status writes answered 409 Conflict, as when another picker
  replica wrote first;
- pods deleted with no Terminating phase (``delete`` emits DELETED without a prior
  ``deletionTimestamp``; :meth:`delete_gracefully` sets it first).

Every request's ``User-Agent`` is kept in ``user_agents``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from tests.support import free_port

CORE = ""
POOL_GROUP = "inference.networking.k8s.io"
X_GROUP = "inference.networking.x-k8s.io"
LLMD_GROUP = "llm-d.ai"

# (group, version, plural) → kind, for what the stand-in serves.
KINDS: dict[tuple[str, str, str], str] = {
    (CORE, "v1", "pods"): "Pod",
    (POOL_GROUP, "v1", "inferencepools"): "InferencePool",
    (X_GROUP, "v1alpha2", "inferenceobjectives"): "InferenceObjective",
    (X_GROUP, "v1alpha2", "inferencemodelrewrites"): "InferenceModelRewrite",
    (LLMD_GROUP, "v1alpha2", "inferenceobjectives"): "InferenceObjective",
    (LLMD_GROUP, "v1alpha2", "inferencemodelrewrites"): "InferenceModelRewrite",
}
# kind → its resource in the group a bare kind means (the GIE one for objectives and rewrites).
PLURALS = {kind: gvp for gvp, kind in KINDS.items() if gvp[0] != LLMD_GROUP}


def _resource(kind: str, api_version: str | None = None) -> tuple[str, str, str]:
    """The (group, version, plural) of ``kind``; ``api_version`` picks among groups serving it."""
    if api_version is None:
        return PLURALS[kind]
    group, _, version = api_version.rpartition("/")
    for gvp, k in KINDS.items():
        if k == kind and gvp[0] == group and gvp[1] == version:
            return gvp
    raise KeyError(f"{api_version} {kind}")


def _api_version(group: str, version: str) -> str:
    return f"{group}/{version}" if group else version


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


@dataclass
class _Event:
    rv: int
    resource: tuple[str, str, str]
    namespace: str
    type: str
    obj: dict[str, Any]


@dataclass
class _Watcher:
    resource: tuple[str, str, str]
    namespace: str
    labels: dict[str, str]
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)
    stalled: bool = False


@dataclass
class AuthTables:
    """Who is who for TokenReview, and who may ``get /metrics`` for SubjectAccessReview."""

    tokens: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # token → (user, groups)
    metrics_readers: set[str] = field(default_factory=set)  # user names or "group:<g>"
    token_reviews: int = 0
    access_reviews: int = 0
    last_access_review: dict[str, Any] | None = None


class FakeApiServer:
    """In-memory API server on 127.0.0.1; start with ``await start()``, stop with ``await stop()``."""

    def __init__(self, *, token: str = "admin-token", bookmark_interval: float = 0.2) -> None:
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.port = 0
        self.scheme = "http"
        self.auth = AuthTables()
        self._rv = 100
        self._compacted = 0
        self._objects: dict[tuple[tuple[str, str, str], str, str], dict[str, Any]] = {}
        self._history: list[_Event] = []
        self._watchers: list[_Watcher] = []
        self.requests: list[str] = []  # "VERB path?query" of every request, for assertions
        self.watch_requests: list[dict[str, str]] = []
        self.status_writes = 0
        # API groups whose CRDs are "not installed": their collections answer 404.
        self.uninstalled_groups: set[str] = set()
        self.user_agents: list[str] = []
        self.initializing = 0  # list/watch requests still answered 429 after a restart
        self.initializing_answers = 0
        self.status_conflicts = 0  # status writes still answered 409
        self.conflicts_answered = 0
        # Too-old watches: an ERROR event in a 200 stream (watch cache) or a plain HTTP 410.
        self.gone_as_http_status = False
        self._runner: web.AppRunner | None = None
        app = web.Application(middlewares=[self._authn])
        app.router.add_get("/api/v1/namespaces/{ns}/{plural}", self._list_or_watch_core)
        app.router.add_get("/apis/{group}/{version}/namespaces/{ns}/{plural}", self._list_or_watch)
        app.router.add_get("/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}", self._get)
        app.router.add_put("/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}/status", self._put_status)
        app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self._token_review)
        app.router.add_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", self._access_review)
        self.app = app

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def start(self, port: int | None = None, *, ssl_context: ssl.SSLContext | None = None) -> None:
        """Listen on ``port`` (a free one by default; pass the old port to simulate a restart)."""
        self._runner = web.AppRunner(self.app, shutdown_timeout=0.5)
        await self._runner.setup()
        self.port = port or free_port()
        self.scheme = "https" if ssl_context is not None else "http"
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=ssl_context).start()

    async def stop(self) -> None:
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def write_kubeconfig(self, path: Path, *, namespace: str = "default") -> Path:
        """A kubeconfig pointing the real client at this server with the admin bearer token."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [
                {"name": "fake", "context": {"cluster": "fake", "user": "admin", "namespace": namespace}}
            ],
            "current-context": "fake",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        return path

    # ------------------------------------------------------------------ state changes (tests)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object (by kind, namespace, name); emits ADDED or MODIFIED."""
        obj = copy.deepcopy(obj)
        resource = _resource(obj["kind"], obj.get("apiVersion"))
        meta = obj.setdefault("metadata", {})
        ns = meta.setdefault("namespace", "default")
        key = (resource, ns, meta["name"])
        old = self._objects.get(key)
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        if old is None:
            meta.setdefault("uid", f"uid-{self._rv}")
            meta.setdefault(
                "creationTimestamp", f"2026-01-01T00:{self._rv // 60 % 60:02d}:{self._rv % 60:02d}Z"
            )
        else:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            if "status" in old and "status" not in obj and obj["kind"] != "Pod":
                obj["status"] = old["status"]
        self._objects[key] = obj
        self._emit(resource, ns, "MODIFIED" if old is not None else "ADDED", obj)
        return obj

    def delete(
        self, kind: str, name: str, namespace: str = "default", *, api_version: str | None = None
    ) -> None:
        resource = _resource(kind, api_version)
        obj = self._objects.pop((resource, namespace, name))
        self._rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._emit(resource, namespace, "DELETED", obj)

    def get(
        self, kind: str, name: str, namespace: str = "default", *, api_version: str | None = None
    ) -> dict[str, Any] | None:
        obj = self._objects.get((_resource(kind, api_version), namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def drop_watches(self) -> None:
        """Break every open watch mid-stream, as a restarting API server or a proxy timeout would."""
        for w in self._watchers:
            w.queue.put_nowait(None)

    def restart(self, *, initializing: int = 3) -> None:
        """A restarted server: open watches break, history is gone (410 for older versions), and
        the next ``initializing`` list/watch requests get 429 while the watch cache fills."""
        self.drop_watches()
        self.compact()
        self.initializing = initializing

    def stall_watches(self) -> None:
        """Open watches stay connected but go silent forever (no events, bookmarks or end)."""
        for w in self._watchers:
            w.stalled = True
            w.queue.put_nowait({"type": "STALL"})  # wake it so it stops at once

    def delete_gracefully(self, kind: str, name: str, namespace: str = "default") -> None:
        """Deletion with a grace period: MODIFIED with ``deletionTimestamp``, then DELETED."""
        obj = self.get(kind, name, namespace)
        assert obj is not None
        obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        self.apply(obj)
        self.delete(kind, name, namespace)

    def compact(self) -> None:
        """Forget the history: watches from any older resourceVersion now get 410 Gone."""
        self._rv += 1
        self._compacted = self._rv
        self._history.clear()

    @property
    def resource_version(self) -> int:
        return self._rv

    def open_watches(self, kind: str | None = None) -> int:
        return sum(1 for w in self._watchers if kind is None or w.resource == PLURALS[kind])

    def _emit(self, resource: tuple[str, str, str], ns: str, type_: str, obj: dict[str, Any]) -> None:
        event = _Event(self._rv, resource, ns, type_, copy.deepcopy(obj))
        self._history.append(event)
        for w in self._watchers:
            if w.resource == resource and w.namespace == ns and _labels_match(w.labels, obj):
                w.queue.put_nowait({"type": type_, "object": event.obj})

    # ------------------------------------------------------------------ HTTP handlers

    @web.middleware
    async def _authn(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path_qs}")
        self.user_agents.append(request.headers.get("User-Agent", ""))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(status_body(401, "Unauthorized", "Unauthorized"), status=401)
        result: web.StreamResponse = await handler(request)
        return result

    async def _list_or_watch_core(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_collection(request, (CORE, "v1", request.match_info["plural"]))

    async def _list_or_watch(self, request: web.Request) -> web.StreamResponse:
        m = request.match_info
        return await self._serve_collection(request, (m["group"], m["version"], m["plural"]))

    async def _serve_collection(
        self, request: web.Request, resource: tuple[str, str, str]
    ) -> web.StreamResponse:
        if self.initializing > 0:
            self.initializing -= 1
            self.initializing_answers += 1
            return web.json_response(
                status_body(429, "TooManyRequests", "storage is (re)initializing"),
                status=429,
                headers={"Retry-After": "1"},
            )
        if resource not in KINDS or resource[0] in self.uninstalled_groups:
            return web.json_response(
                status_body(404, "NotFound", "the server could not find the resource"), status=404
            )
        ns = request.match_info["ns"]
        labels = _parse_selector(request.query.get("labelSelector", ""))
        if _parse_bool(request.query.get("watch")):
            return await self._watch(request, resource, ns, labels)
        rv = request.query.get("resourceVersion", "")
        if rv not in ("", "0") and int(rv) < self._compacted:
            return _gone(rv, self._compacted)
        items = [
            copy.deepcopy(o)
            for (res, o_ns, _), o in sorted(self._objects.items())
            if res == resource and o_ns == ns and _labels_match(labels, o)
        ]
        for item in items:  # typed lists omit apiVersion/kind on items, like the real server
            if resource[0] == CORE:
                item.pop("apiVersion", None)
                item.pop("kind", None)
        return web.json_response(
            {
                "apiVersion": _api_version(resource[0], resource[1]),
                "kind": KINDS[resource] + "List",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }
        )

    async def _watch(
        self, request: web.Request, resource: tuple[str, str, str], ns: str, labels: dict[str, str]
    ) -> web.StreamResponse:
        q = request.query
        self.watch_requests.append(dict(q))
        rv_text = q.get("resourceVersion", "")
        bookmarks = _parse_bool(q.get("allowWatchBookmarks"))
        timeout = float(q.get("timeoutSeconds", "0") or 0)
        too_old = rv_text not in ("", "0") and int(rv_text) < self._compacted
        if too_old and self.gone_as_http_status:
            return _gone(rv_text, self._compacted)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        if too_old:
            await _write(resp, {"type": "ERROR", "object": _gone_status(rv_text, self._compacted)})
            return resp
        watcher = _Watcher(resource, ns, labels)
        if rv_text in ("", "0"):
            for (res, o_ns, _), obj in sorted(self._objects.items()):
                if res == resource and o_ns == ns and _labels_match(labels, obj):
                    watcher.queue.put_nowait({"type": "ADDED", "object": copy.deepcopy(obj)})
        else:
            start = int(rv_text)
            for ev in self._history:
                if (
                    ev.rv > start
                    and ev.resource == resource
                    and ev.namespace == ns
                    and _labels_match(labels, ev.obj)
                ):
                    watcher.queue.put_nowait({"type": ev.type, "object": copy.deepcopy(ev.obj)})
        self._watchers.append(watcher)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout > 0 else None
        api_version = _api_version(resource[0], resource[1])
        try:
            while True:
                if watcher.stalled:  # connected but dead: wait for the client to give up
                    await asyncio.Event().wait()
                wait = self.bookmark_interval if bookmarks else 3600.0
                if deadline is not None:
                    wait = min(wait, deadline - loop.time())
                    if wait <= 0:
                        break
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), timeout=wait)
                except TimeoutError:
                    if watcher.stalled:
                        await asyncio.Event().wait()
                    # A bookmark says "every event up to this resourceVersion was sent": only true
                    # while nothing is queued. Under load the timeout can fire although an event (or
                    # the drop) is already queued; a bookmark then would skip the client past them.
                    if bookmarks and watcher.queue.empty() and (deadline is None or loop.time() < deadline):
                        mark = {
                            "kind": KINDS[resource],
                            "apiVersion": api_version,
                            "metadata": {"resourceVersion": str(self._rv)},
                        }
                        await _write(resp, {"type": "BOOKMARK", "object": mark})
                    continue
                if watcher.stalled:  # went silent while waiting: deliver nothing, ever
                    await asyncio.Event().wait()
                if event is None:  # dropped mid-stream: abort the connection without a clean end
                    if request.transport is not None:
                        request.transport.abort()
                    return resp
                await _write(resp, event)
        except (ConnectionResetError, asyncio.CancelledError):
            if request.transport is not None:
                request.transport.abort()
            return resp
        finally:
            self._watchers.remove(watcher)
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        return resp

    async def _get(self, request: web.Request) -> web.StreamResponse:
        m = request.match_info
        resource = (m["group"], m["version"], m["plural"])
        obj = self._objects.get((resource, m["ns"], m["name"]))
        if obj is None:
            return web.json_response(
                status_body(404, "NotFound", f"{m['plural']} {m['name']!r} not found"), status=404
            )
        return web.json_response(obj)

    async def _put_status(self, request: web.Request) -> web.StreamResponse:
        m = request.match_info
        resource = (m["group"], m["version"], m["plural"])
        key = (resource, m["ns"], m["name"])
        obj = self._objects.get(key)
        if obj is None:
            return web.json_response(status_body(404, "NotFound", "not found"), status=404)
        body = await request.json()
        sent_rv = body.get("metadata", {}).get("resourceVersion")
        if self.status_conflicts > 0:  # another writer got there first
            self.status_conflicts -= 1
            self.conflicts_answered += 1
            self.apply(copy.deepcopy(obj))  # its write: a new resourceVersion
            obj = self._objects[key]
        if sent_rv and sent_rv != obj["metadata"]["resourceVersion"]:
            return web.json_response(
                status_body(
                    409,
                    "Conflict",
                    "the object has been modified; please apply your changes to the latest version",
                ),
                status=409,
            )
        new = copy.deepcopy(obj)
        new["status"] = body.get("status", {})
        self._rv += 1
        new["metadata"]["resourceVersion"] = str(self._rv)
        self._objects[key] = new
        self.status_writes += 1
        self._emit(resource, m["ns"], "MODIFIED", new)
        return web.json_response(new)

    async def _token_review(self, request: web.Request) -> web.StreamResponse:
        self.auth.token_reviews += 1
        body = await request.json()
        token = body.get("spec", {}).get("token", "")
        known = self.auth.tokens.get(token)
        status: dict[str, Any] = {"authenticated": False}
        if known is not None:
            status = {
                "authenticated": True,
                "user": {"username": known[0], "uid": f"uid-{known[0]}", "groups": known[1]},
            }
        body["status"] = status
        return web.json_response(body, status=201)

    async def _access_review(self, request: web.Request) -> web.StreamResponse:
        self.auth.access_reviews += 1
        body = await request.json()
        self.auth.last_access_review = body
        spec = body.get("spec", {})
        attrs = spec.get("nonResourceAttributes") or {}
        who = {spec.get("user", "")} | {f"group:{g}" for g in spec.get("groups") or []}
        allowed = (
            attrs.get("path") == "/metrics"
            and attrs.get("verb") == "get"
            and bool(who & self.auth.metrics_readers)
        )
        body["status"] = {"allowed": allowed, **({} if allowed else {"reason": "no RBAC rule matched"})}
        return web.json_response(body, status=201)


# ---------------------------------------------------------------------------- helpers


async def _write(resp: web.StreamResponse, event: dict[str, Any]) -> None:
    await resp.write(json.dumps(event).encode() + b"\n")


def _gone_status(rv: str, compacted: int) -> dict[str, Any]:
    return status_body(410, "Expired", f"too old resource version: {rv} ({compacted})")


def _gone(rv: str, compacted: int) -> web.Response:
    return web.json_response(_gone_status(rv, compacted), status=410)


def _parse_bool(value: str | None) -> bool:
    """Go's strconv.ParseBool, as the API server parses query booleans (the client sends "True")."""
    return value in ("1", "t", "T", "true", "TRUE", "True")


def _parse_selector(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, text.split(",")):
        k, _, v = part.partition("=")
        out[k.strip()] = v.strip().lstrip("=")
    return out


def _labels_match(selector: dict[str, str], obj: dict[str, Any]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------------------- object builders


def pod(
    name: str,
    ip: str | None = "10.0.0.1",
    *,
    labels: dict[str, str] | None = None,
    ready: bool = True,
    phase: str = "Running",
    terminating: bool = False,
    annotations: dict[str, str] | None = None,
    namespace: str = "default",
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels or {"app": "vllm"}}
    if annotations:
        meta["annotations"] = annotations
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T01:00:00Z"
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if ip:
        status["podIP"] = ip
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": []}, "status": status}


def pool(
    name: str = "vllm-pool",
    *,
    selector: dict[str, str] | None = None,
    ports: Iterable[int] = (8000,),
    namespace: str = "default",
) -> dict[str, Any]:
    return {
        "apiVersion": f"{POOL_GROUP}/v1",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": selector or {"app": "vllm"}},
            "targetPorts": [{"number": p} for p in ports],
            "endpointPickerRef": {"name": f"{name}-epp", "port": {"number": 9002}, "failureMode": "FailOpen"},
        },
    }


def objective(
    name: str,
    priority: int | None,
    pool_name: str = "vllm-pool",
    namespace: str = "default",
    group: str = X_GROUP,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"poolRef": {"name": pool_name}}
    if priority is not None:
        spec["priority"] = priority
    return {
        "apiVersion": f"{group}/v1alpha2",
        "kind": "InferenceObjective",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def rewrite(
    name: str,
    source: str | None,
    targets: dict[str, int],
    pool_name: str = "vllm-pool",
    namespace: str = "default",
    group: str = X_GROUP,
) -> dict[str, Any]:
    rule: dict[str, Any] = {"targets": [{"modelRewrite": m, "weight": w} for m, w in targets.items()]}
    if source is not None:
        rule["matches"] = [{"model": {"type": "Exact", "value": source}}]
    return {
        "apiVersion": f"{group}/v1alpha2",
        "kind": "InferenceModelRewrite",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"poolRef": {"name": pool_name}, "rules": [rule]},
    }
