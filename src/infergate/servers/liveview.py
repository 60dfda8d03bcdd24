"""The live view: ``GET /live`` (one self-contained page) and ``GET /live/state`` (the JSON it polls).

This module owns the JSON document behind the page (:func:`live_state`), the assembly of the page
from the static files in ``liveview_static/`` (:func:`render_page`) and the aiohttp routes the app
mounts on the admin port (:func:`liveview_routes`).

The page is built once per process: the CSS and the JavaScript are inlined into ``live.html`` so a
browser never fetches anything but ``/live/state`` (works offline, in a locked-down cluster, behind
``kubectl port-forward``). Because nothing else is needed, the page can be served with a strict
Content-Security-Policy that allows only the two inlined blocks, by their SHA-256 hash, and
same-origin ``fetch``: even if a client-supplied model name slipped past the page's ``textContent``
rendering, no injected script or style could run.

Reading the state costs one pass over the datastore, the flow-control bands and the requested
number of decisions; nothing here runs unless somebody has the page open.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Collection, Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

from aiohttp import web

from infergate.datastore.store import Datastore
from infergate.flowcontrol.controller import FlowController
from infergate.scheduling.engine.decisions import DecisionLog
from infergate.types import Endpoint

__all__ = [
    "DEFAULT_DECISIONS",
    "MAX_DECISIONS",
    "live_state",
    "liveview_routes",
    "render_page",
]

#: decisions returned by ``/live/state`` when the query does not say (``?decisions=N``)
DEFAULT_DECISIONS = 50
#: upper bound for ``?decisions=N`` (the ring buffer caps it further)
MAX_DECISIONS = 1000

_STATIC = "liveview_static"
_CSS_MARK = "/*@CSS@*/"
_JS_MARK = "/*@JS@*/"

#: headers sent with the page; the CSP is added by :func:`render_page`
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


# -- the JSON state ----------------------------------------------------------------------------


def _endpoint_state(
    ds: Datastore, ep: Endpoint, *, now: float, candidate: bool, base_models: frozenset[str]
) -> dict[str, Any]:
    m = ep.metrics
    scraped = m.updated_at > 0.0
    models = ds.models(ep.key)
    busy = m.running_adapters | m.waiting_adapters
    # Adapters the server lists in /v1/models but runs nothing for right now: loaded and idle.
    # Only known when the base models are (else a base model would pass for an adapter).
    idle = sorted(models - base_models - busy) if base_models else []
    return {
        "key": ep.key,
        "name": ep.meta.name,
        "healthy": ep.healthy,
        "fresh": ds.is_fresh(ep, now),
        "candidate": candidate,
        "waiting": m.waiting_queue_size,
        "running": m.running_requests,
        "kv_pct": round(m.kv_cache_usage * 100.0, 1),
        "running_adapters": sorted(m.running_adapters),
        "waiting_adapters": sorted(m.waiting_adapters),
        "idle_adapters": idle,
        "max_adapters": m.max_active_adapters,
        "in_flight": ep.in_flight,
        "in_flight_started": ep.in_flight_started,
        "age": round(max(0.0, now - m.updated_at), 3) if scraped else None,
        "models": sorted(models),
    }


def _flow_state(flow: FlowController | None, now: float) -> dict[str, Any]:
    """Non-empty bands, highest priority first (the order in which they are served)."""
    if flow is None:
        return {"enabled": False, "queued": 0, "bytes": 0, "bands": []}
    bands: list[dict[str, Any]] = []
    for band in flow.snapshot():
        if band.queued <= 0:
            continue
        bands.append(
            {
                "priority": band.priority,
                "queued": band.queued,
                "bytes": band.bytes,
                "flows": [
                    {
                        "fairness_id": f.fairness_id,
                        "queued": f.queued,
                        "bytes": f.bytes,
                        "oldest_wait": round(max(0.0, now - f.oldest_enqueued_at), 3),
                    }
                    for f in band.flows
                ],
            }
        )
    return {
        "enabled": flow.config.enabled,
        "queued": sum(b["queued"] for b in bands),
        "bytes": sum(b["bytes"] for b in bands),
        "bands": bands,
    }


ModelState = Callable[[], Mapping[str, Mapping[str, Mapping[str, float]]]]
"""The scheduler's per-plugin, per-endpoint model state (``Scheduler.debug_state``)."""


def live_state(
    datastore: Datastore,
    *,
    flow: FlowController | None = None,
    decisions: DecisionLog | None = None,
    pool_name: str | None = None,
    limit: int = DEFAULT_DECISIONS,
    model_state: ModelState | None = None,
    base_models: Collection[str] = (),
) -> dict[str, Any]:
    """The JSON document the page polls (also handy for scripts and tests).

    ``base_models``: the names the servers serve as base models, so that every other name an
    endpoint lists counts as a loaded LoRA adapter (``idle_adapters`` when nothing runs on it).

    ``now`` and every decision's ``at`` are the datastore's clock (the gateway's monotonic clock),
    meaningful only as differences; ``age`` and ``oldest_wait`` are already differences, in
    seconds. The flow controller and the datastore are expected to share that clock, as they do
    in the gateway. Endpoints are sorted by name so rows do not jump between polls.
    """
    now = datastore.clock.now()
    candidates = {e.key for e in datastore.candidates()}
    endpoints = sorted(datastore.endpoints(), key=lambda e: (e.meta.name, e.key))
    if pool_name is None:
        pool = datastore.pool
        pool_name = pool.name if pool is not None else ""
    models = model_state() if model_state is not None else {}
    base = frozenset(base_models)
    return {
        "pool": pool_name,
        "now": now,
        "latency_model": {key: state for plugin in models.values() for key, state in plugin.items()},
        "staleness": datastore.staleness,
        "endpoints": [
            _endpoint_state(datastore, e, now=now, candidate=e.key in candidates, base_models=base)
            for e in endpoints
        ],
        "flow": _flow_state(flow, now),
        "decisions": decisions.recent(limit) if decisions is not None else [],
        "decisions_total": decisions.total if decisions is not None else 0,
    }


# -- the page ----------------------------------------------------------------------------------


def _sha256_source(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def _read_static(name: str) -> str:
    return resources.files(__package__ or "infergate.servers").joinpath(_STATIC, name).read_text("utf-8")


@lru_cache(maxsize=1)
def render_page() -> tuple[str, str]:
    """The page with CSS and JavaScript inlined, and the Content-Security-Policy that fits it.

    Returns ``(html, csp)``. The policy denies everything by default; only the inlined script
    and style run (matched by the SHA-256 of their exact text), ``fetch`` may go to the same
    origin only, and the ``data:`` favicon (which stops the browser asking for
    ``/favicon.ico``) may load. Built once: the static files do not change while running.
    """
    html = _read_static("live.html")
    css = _read_static("live.css")
    js = _read_static("live.js")
    if html.count(_CSS_MARK) != 1 or html.count(_JS_MARK) != 1:
        raise RuntimeError("live.html must contain each inline marker exactly once")
    if "</style" in css.lower() or "</script" in js.lower():
        raise RuntimeError("inlined CSS/JS must not close its own element")
    page = html.replace(_CSS_MARK, css).replace(_JS_MARK, js)
    csp = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_sha256_source(js)}",
            f"style-src {_sha256_source(css)}",
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return page, csp


# -- routes ------------------------------------------------------------------------------------


def _decisions_limit(request: web.Request) -> int:
    raw = request.query.get("decisions")
    if raw is None:
        return DEFAULT_DECISIONS
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"decisions must be an integer 0..{MAX_DECISIONS}\n") from None
    if not 0 <= value <= MAX_DECISIONS:
        raise web.HTTPBadRequest(text=f"decisions must be an integer 0..{MAX_DECISIONS}\n")
    return value


def liveview_routes(
    datastore: Datastore,
    *,
    flow: FlowController | None = None,
    decisions: DecisionLog | None = None,
    pool_name: str | None = None,
    model_state: ModelState | None = None,
    base_models: Collection[str] = (),
) -> list[web.RouteDef]:
    """``GET /live``, ``GET /live/`` (the page) and ``GET /live/state`` (the JSON) for an aiohttp app."""

    async def page(request: web.Request) -> web.Response:
        html, csp = render_page()
        resp = web.Response(text=html, content_type="text/html", charset="utf-8")
        resp.headers.update(_PAGE_HEADERS)
        resp.headers["Content-Security-Policy"] = csp
        return resp

    async def state(request: web.Request) -> web.Response:
        body = live_state(
            datastore,
            flow=flow,
            decisions=decisions,
            pool_name=pool_name,
            limit=_decisions_limit(request),
            model_state=model_state,
            base_models=base_models,
        )
        resp = web.json_response(body)
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        return resp

    return [
        web.get("/live", page),
        web.get("/live/", page),
        web.get("/live/state", state),
    ]
