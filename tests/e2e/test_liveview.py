"""The live view: the decision log, the scheduler hook, the JSON state, and the page in headless Chromium.

The browser tests serve the real routes from a real aiohttp app on a free port, backed by a real
Datastore (three endpoints with synthetic metrics, one unhealthy), a real FlowController holding
queued requests and a real Scheduler writing into a DecisionLog. Chromium is Debian's
``/usr/bin/chromium`` driven by Playwright (no browser download). Waiting is done by polling the DOM
with a deadline (``wait_for_function``), never by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web

from infergate.config.picker import default_picker_config, reference_picker_config
from infergate.datastore.store import Datastore
from infergate.errors import NoCapacityError
from infergate.flowcontrol.config import FlowControlConfig
from infergate.flowcontrol.controller import FlowController
from infergate.flowcontrol.saturation import SaturationDetector
from infergate.scheduling.engine.decisions import DecisionLog
from infergate.scheduling.engine.scheduler import Scheduler, build_scheduler
from infergate.servers.liveview import live_state, liveview_routes, render_page
from infergate.types import Endpoint, EndpointMeta, EndpointMetrics, InferenceRequest, SchedulingResult
from tests.support import free_port

if TYPE_CHECKING:
    from playwright.async_api import Page, ViewportSize

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1280, "height": 900}
EVIL_MODEL = "<script>window.__pwned=1;alert('xss')</script><img src=x onerror=alert(2)>"
EVIL_TARGET = "<b>food-review-1</b>"
BASE = "meta-llama/Llama-3.1-8B-Instruct"


# -- helpers -----------------------------------------------------------------------------------


def _ep(name: str, port: int) -> EndpointMeta:
    return EndpointMeta(name=name, address="127.0.0.1", port=port, pool="vllm-llama3-8b-instruct")


def _req(
    rid: str,
    model: str = BASE,
    *,
    priority: int = 0,
    fairness: str = "default-flow",
    target: str | None = None,
) -> InferenceRequest:
    return InferenceRequest(
        request_id=rid,
        model=model,
        target_model=target if target is not None else model,
        priority=priority,
        fairness_id=fairness,
        prompt=f"prompt of {rid}",
        body_size=1000,
    )


def _result(rid: str) -> SchedulingResult:
    a = Endpoint(meta=_ep("a", 1))
    b = Endpoint(meta=_ep("b", 2))
    return SchedulingResult(
        profile="default",
        targets=(a, b),
        scores={a.key: 0.9, b.key: 0.4},
        plugin_scores={"queue-scorer": {a.key: 1.0, b.key: 0.5}},
    )


def _scheduler(log: DecisionLog) -> Scheduler:
    # the reference profile: several scorers, so the page shows one score column per plugin
    return build_scheduler(reference_picker_config(lora=True, base_models=[BASE]), decision_log=log)


def _decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    """Validate a PNG (signature, chunk CRCs, 8-bit RGB/RGBA) and return width, height, bpp, pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(ctype + body) == crc, f"bad CRC in {ctype!r}"
        if ctype == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif ctype == b"IDAT":
            idat += body
        elif ctype == b"IEND":
            break
        pos += 12 + length
    assert ihdr is not None, "no IHDR"
    width, height, depth, color, _, _, interlace = ihdr
    assert depth == 8 and color in (2, 6) and interlace == 0, ihdr
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    out = bytearray()
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up = prev[i]
            ul = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + left) & 0xFF
            elif f == 2:
                line[i] = (line[i] + up) & 0xFF
            elif f == 3:
                line[i] = (line[i] + ((left + up) >> 1)) & 0xFF
            elif f == 4:
                p = left + up - ul
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else ul)
                line[i] = (line[i] + pred) & 0xFF
            else:
                assert f == 0, f"bad filter {f}"
        out += line
        prev = line
    return width, height, bpp, bytes(out)


# -- DecisionLog and the scheduler hook --------------------------------------------------------


def test_decision_log_is_bounded_and_newest_first() -> None:
    log = DecisionLog(capacity=3)
    for i in range(5):
        log.record(_req(f"r{i}"), _result(f"r{i}"), now=float(i))
    assert len(log) == 3 and log.total == 5 and log.capacity == 3
    recent = log.recent()
    assert [d["request_id"] for d in recent] == ["r4", "r3", "r2"]
    assert [d["request_id"] for d in log.recent(1)] == ["r4"]
    top = recent[0]
    assert top["endpoint"] == "127.0.0.1:1" and top["endpoint_name"] == "a"
    assert top["fallbacks"] == ["127.0.0.1:2"]
    assert top["plugin_scores"] == {"queue-scorer": {"127.0.0.1:1": 1.0, "127.0.0.1:2": 0.5}}
    assert top["at"] == 4.0 and top["model"] == BASE
    json.dumps(recent)  # JSON-ready
    with pytest.raises(ValueError):
        DecisionLog(capacity=0)


def test_scheduler_records_successful_decisions_only() -> None:
    log = DecisionLog()
    sched = _scheduler(log)
    cands = [
        Endpoint(meta=_ep("vllm-0", 8001), metrics=EndpointMetrics(waiting_queue_size=3, updated_at=1.0)),
        Endpoint(meta=_ep("vllm-1", 8002), metrics=EndpointMetrics(kv_cache_usage=0.1, updated_at=1.0)),
    ]
    result = sched.schedule(_req("ok-1"), cands)
    with pytest.raises(NoCapacityError):
        sched.schedule(_req("fail-1"), [])
    assert log.total == 1
    (d,) = log.recent()
    assert d["request_id"] == "ok-1"
    assert d["endpoint"] == result.primary.key == "127.0.0.1:8002"
    assert set(d["plugin_scores"]) >= {"queue-scorer", "kv-cache-utilization-scorer"}
    # without a log nothing is recorded and nothing breaks
    build_scheduler(default_picker_config(lora=False)).schedule(_req("x"), cands)
    assert log.total == 1


class _ManualClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


def test_live_state_marks_stale_and_unscraped_endpoints() -> None:
    clock = _ManualClock(100.0)
    ds = Datastore(clock, staleness=2.0)
    fresh, stale, never = _ep("fresh", 1), _ep("stale", 2), _ep("never", 3)
    for m in (fresh, stale, never):
        ds.upsert_endpoint(m)
    ds.update_metrics(fresh.key, EndpointMetrics(kv_cache_usage=0.333, updated_at=99.5))
    ds.update_metrics(stale.key, EndpointMetrics(updated_at=97.0))
    ds.acquire(fresh.key)
    state = live_state(ds)
    eps = {e["name"]: e for e in state["endpoints"]}
    assert [e["name"] for e in state["endpoints"]] == ["fresh", "never", "stale"]
    assert eps["fresh"]["fresh"] and eps["fresh"]["candidate"] and eps["fresh"]["age"] == 0.5
    assert eps["fresh"]["kv_pct"] == 33.3 and eps["fresh"]["in_flight"] == 1
    assert not eps["stale"]["fresh"] and not eps["stale"]["candidate"] and eps["stale"]["age"] == 3.0
    assert eps["never"]["age"] is None and not eps["never"]["fresh"]
    assert state["latency_model"] == {}


def test_live_state_carries_the_latency_models_view_of_each_endpoint() -> None:
    clock = _ManualClock(100.0)
    ds = Datastore(clock, staleness=2.0)
    sched = build_scheduler(default_picker_config(lora=False), clock=clock)
    ep = Endpoint(meta=_ep("vllm-0", 8001), metrics=EndpointMetrics(updated_at=99.0))
    sched.schedule(_req("q1"), [ep])
    sched.observe_ttft("q1", 0.02)
    state = live_state(ds, model_state=sched.debug_state)
    m = state["latency_model"][ep.key]
    assert m["observations"] == 1 and m["requests"] == 1
    assert m["last_observed_ttft_ms"] == 20.0
    # the first observation sets the correction factor to observed / predicted (clamped to 1/1.5..1.5)
    ratio = min(1.5, max(1 / 1.5, 20.0 / m["last_predicted_ttft_ms"]))
    assert m["ttft_observed_over_predicted"] == pytest.approx(ratio, rel=1e-3)
    assert state["flow"] == {"enabled": False, "queued": 0, "bytes": 0, "bands": []}
    assert state["decisions"] == [] and state["decisions_total"] == 0
    json.dumps(state)


# -- a live pool served on a real port ---------------------------------------------------------


@dataclass
class LivePool:
    datastore: Datastore
    flow: FlowController
    log: DecisionLog
    scheduler: Scheduler
    url: str
    keys: list[str]
    waiters: list[asyncio.Task[bool]] = field(default_factory=list)


@pytest.fixture
async def live_pool() -> AsyncIterator[LivePool]:
    ds = Datastore(staleness=600.0)
    metas = [_ep("vllm-0", 8001), _ep("vllm-1", 8002), _ep("vllm-2", 8003)]
    for m in metas:
        ds.upsert_endpoint(m)
        ds.set_models(m.key, frozenset({BASE, "food-review-1", "cad-fabricator"}))
    now = ds.clock.now()
    ds.update_metrics(
        metas[0].key,
        EndpointMetrics(
            waiting_queue_size=6,
            running_requests=40,
            kv_cache_usage=0.625,
            running_adapters=frozenset({"food-review-1"}),
            waiting_adapters=frozenset({"ski-resorts"}),
            max_active_adapters=4,
            updated_at=now,
        ),
    )
    ds.update_metrics(
        metas[1].key,
        EndpointMetrics(waiting_queue_size=1, running_requests=12, kv_cache_usage=0.85, updated_at=now),
    )
    ds.update_metrics(metas[2].key, EndpointMetrics(running_requests=0, kv_cache_usage=0.0, updated_at=now))
    ds.set_healthy(metas[2].key, False)

    # mean saturation over the two healthy endpoints is > 1: admitted requests wait in their bands
    flow = FlowController(
        ds,
        detector=SaturationDetector(staleness=600.0),
        config=FlowControlConfig(default_ttl=None, pool_name="vllm-llama3-8b-instruct"),
    )
    log = DecisionLog()
    sched = _scheduler(log)
    sched.schedule(_req("req-base-1"), ds.candidates())
    sched.schedule(_req("req-evil-2", EVIL_MODEL, target=EVIL_TARGET), ds.candidates())

    app = web.Application()
    latency = {  # what the predicted-latency scorer reports for vllm-0 (debug_state's shape)
        "predicted-latency-scorer": {
            metas[0].key: {
                "observations": 3.0,
                "last_predicted_ttft_ms": 41.6,
                "last_observed_ttft_ms": 52.2,
                "backlog_ms": 120.0,
                "ttft_observed_over_predicted": 1.25,
                "tpot_relative_to_pool": 1.2,
            }
        }
    }
    app.router.add_routes(
        liveview_routes(
            ds,
            flow=flow,
            decisions=log,
            pool_name="vllm-llama3-8b-instruct",
            model_state=lambda: latency,
            base_models=[BASE],
        )
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    pool = LivePool(ds, flow, log, sched, f"http://127.0.0.1:{port}", [m.key for m in metas])
    for rid, prio, fid in [("q1", 20, "tenant-a"), ("q2", 10, "tenant-b"), ("q3", 10, "tenant-c")]:
        pool.waiters.append(asyncio.create_task(flow.admit(_req(rid, priority=prio, fairness=fid))))
    deadline = asyncio.get_running_loop().time() + 30.0
    while flow.queued() < 3:
        assert asyncio.get_running_loop().time() < deadline, "requests did not queue"
        await asyncio.sleep(0.01)
    try:
        yield pool
    finally:
        for t in pool.waiters:
            t.cancel()
        await asyncio.gather(*pool.waiters, return_exceptions=True)
        flow.close()
        await runner.cleanup()


async def test_state_json_and_page_headers(live_pool: LivePool) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(live_pool.url + "/live/state") as r:
            assert r.status == 200 and r.content_type == "application/json"
            assert r.headers["Cache-Control"] == "no-store"
            state: dict[str, Any] = await r.json()
        async with s.get(live_pool.url + "/live/state?decisions=1") as r:
            assert len((await r.json())["decisions"]) == 1
        async with s.get(live_pool.url + "/live/state?decisions=many") as r:
            assert r.status == 400
        async with s.get(live_pool.url + "/live") as r:
            assert r.status == 200 and r.content_type == "text/html"
            csp = r.headers["Content-Security-Policy"]
            page = await r.text()
    assert state["pool"] == "vllm-llama3-8b-instruct"
    eps = {e["name"]: e for e in state["endpoints"]}
    assert set(eps) == {"vllm-0", "vllm-1", "vllm-2"}
    assert eps["vllm-0"]["kv_pct"] == 62.5 and eps["vllm-0"]["waiting"] == 6
    assert eps["vllm-0"]["running_adapters"] == ["food-review-1"]
    assert eps["vllm-0"]["waiting_adapters"] == ["ski-resorts"]
    assert eps["vllm-2"]["healthy"] is False and eps["vllm-2"]["candidate"] is False
    assert eps["vllm-1"]["fresh"] is True and eps["vllm-1"]["candidate"] is True
    bands = state["flow"]["bands"]
    assert [b["priority"] for b in bands] == [20, 10]
    assert [b["queued"] for b in bands] == [1, 2] and state["flow"]["queued"] == 3
    assert {f["fairness_id"] for f in bands[1]["flows"]} == {"tenant-b", "tenant-c"}
    assert [d["request_id"] for d in state["decisions"]] == ["req-evil-2", "req-base-1"]
    assert state["decisions"][0]["model"] == EVIL_MODEL
    # self-contained: nothing to fetch but /live/state, and only the inlined blocks may run
    assert "http://" not in page and "https://" not in page and " src=" not in page
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "unsafe-inline" not in csp
    assert render_page()[1] == csp


@dataclass
class Browser:
    """One Chromium page, with everything it reported that a test may want to assert on."""

    page: Page
    errors: list[str]  # console errors (CSP violations included) and uncaught exceptions
    dialogs: list[str]  # alert/confirm/prompt messages (dismissed)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A fresh headless Chromium page (Debian's binary, no download); skips when unavailable."""
    pytest.importorskip("playwright.async_api")
    if shutil.which(CHROMIUM) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is required on CI (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} not installed")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await chromium.new_page(viewport=VIEWPORT)
            b = Browser(page, [], [])
            page.on("console", lambda m: b.errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: b.errors.append(str(e)))

            async def on_dialog(d: Any) -> None:
                b.dialogs.append(d.message)
                await d.dismiss()

            page.on("dialog", on_dialog)
            yield b
        finally:
            await chromium.close()


async def test_live_page_renders_and_updates_in_chromium(
    live_pool: LivePool, browser: Browser, tmp_path: Path
) -> None:
    page = browser.page
    await page.goto(live_pool.url + "/live")
    await page.wait_for_function(
        "() => document.querySelectorAll('#endpoints tbody tr').length === 3"
        " && document.querySelectorAll('#decisions tbody tr').length === 2"
        " && document.querySelectorAll('#bands tbody tr').length === 2",
        timeout=10_000,
    )
    k0, k1, k2 = live_pool.keys

    def row(key: str) -> str:
        return f'#endpoints tbody tr[data-key="{key}"]'

    assert await page.locator(row(k0) + " td.endpoint .name").inner_text() == "vllm-0"
    assert await page.locator(row(k0) + " td.kv").inner_text() == "62.5%"
    assert await page.locator(row(k1) + " td.kv").inner_text() == "85.0%"
    assert await page.locator(row(k0) + " td.waiting").inner_text() == "6"
    assert await page.locator(row(k0) + " td.running").inner_text() == "40"
    assert await page.locator(row(k0) + " .chip.running").inner_text() == "food-review-1"
    assert await page.locator(row(k0) + " .chip.waiting").inner_text() == "ski-resorts"
    # every loaded adapter: idle ones too, not only a count of slots
    assert await page.locator(row(k0) + " .chip.idle").all_inner_texts() == ["cad-fabricator"]
    assert await page.locator(row(k1) + " .chip.idle").all_inner_texts() == [
        "cad-fabricator",
        "food-review-1",
    ]
    assert "max 4" in await page.locator(row(k0) + " td.adapters").inner_text()
    # predicted vs observed TTFT per endpoint, from the latency model
    assert (await page.locator(row(k0) + " td.latency").inner_text()).split("\n") == [
        "42 / 52 ms",
        "backlog 120 ms · ×1.25 · TPOT ×1.20",
    ]
    assert await page.locator(row(k1) + " td.latency").inner_text() == ""
    assert "unhealthy" in (await page.locator(row(k2) + " .health").inner_text())
    assert await page.locator(row(k2)).get_attribute("class") == "unhealthy"
    assert (await page.locator(row(k1) + " .health").inner_text()).split()[-1] == "healthy"
    # the KV bar is drawn to scale
    width = await page.locator(row(k0) + " td.kv .bar > span").evaluate("e => e.style.width")
    assert width == "62.5%"
    # flow-control bands, highest priority first
    prios = await page.locator("#bands tbody td.priority").all_inner_texts()
    assert prios == ["20", "10"]
    assert await page.locator('#bands tbody tr[data-priority="10"] td.queued').inner_text() == "2"
    assert "tenant-b: 1" in await page.locator('#bands tbody tr[data-priority="10"]').inner_text()
    # a decision row with the chosen endpoint and per-plugin scores
    drow = page.locator('#decisions tbody tr[data-request-id="req-base-1"]')
    chosen = live_pool.log.recent()[1]
    assert await drow.locator("td.endpoint").inner_text() == chosen["endpoint_name"]
    assert await drow.locator("td.total").inner_text() == f"{chosen['scores'][chosen['endpoint']]:.3f}"
    kv_score = chosen["plugin_scores"]["kv-cache-utilization-scorer"][chosen["endpoint"]]
    cell = drow.locator('td.plugin[data-plugin="kv-cache-utilization-scorer"]')
    assert await cell.inner_text() == f"{kv_score:.2f}"
    headers = await page.locator("#decisions thead th").all_inner_texts()
    assert headers[:7] == ["Age", "Request", "Model", "Target model", "Prio", "Endpoint", "Total"]
    assert "queue" in headers and "prefix-cache" in headers
    th = page.locator('#decisions thead th[data-plugin="prefix-cache-scorer"]')
    assert await th.get_attribute("title") == "prefix-cache-scorer"

    # live updates: a new scrape of vllm-1 and a new decision show up without reloading
    m = live_pool.datastore.endpoint(k1)
    assert m is not None
    live_pool.datastore.update_metrics(
        k1,
        EndpointMetrics(
            waiting_queue_size=4,
            running_requests=31,
            kv_cache_usage=0.97,
            updated_at=m.metrics.updated_at,
        ),
    )
    live_pool.scheduler.schedule(_req("req-late-3"), live_pool.datastore.candidates())
    await page.wait_for_function(
        f"() => document.querySelector('{row(k1)} td.kv')?.textContent === '97.0%'"
        " && !!document.querySelector('#decisions tbody tr[data-request-id=\"req-late-3\"]')",
        timeout=10_000,
    )
    assert await page.locator(row(k1) + " td.running").inner_text() == "31"
    assert await page.locator(row(k1) + " td.kv .bar").get_attribute("class") == "bar hot"
    assert "ok" in (await page.locator("#status").get_attribute("class") or "")

    shot = tmp_path / "live.png"
    await page.screenshot(path=str(shot))
    assert browser.errors == []  # includes CSP violations: the inlined CSS and JS hashes match

    w, h, bpp, pixels = _decode_png(shot.read_bytes())
    assert (w, h) == (VIEWPORT["width"], VIEWPORT["height"])
    distinct = {pixels[i : i + 3] for i in range(0, len(pixels), bpp * 97)}
    assert len(distinct) > 8, "screenshot looks blank"
    # the dark header band (CSS applied) at the top-left, the light page background further down
    assert pixels[0:3] == bytes((0x1D, 0x23, 0x30))
    assert bytes((0xF7, 0xF8, 0xFA)) in distinct


async def test_client_text_is_rendered_as_text(live_pool: LivePool, browser: Browser) -> None:
    page = browser.page
    await page.goto(live_pool.url + "/live")
    cell = page.locator('#decisions tbody tr[data-request-id="req-evil-2"] td.model')
    await cell.wait_for(timeout=10_000)
    assert await cell.inner_text() == EVIL_MODEL
    target = page.locator('#decisions tbody tr[data-request-id="req-evil-2"] td.target-model')
    assert await target.inner_text() == EVIL_TARGET
    assert await page.evaluate("() => document.querySelectorAll('#decisions b').length") == 0
    assert await page.evaluate("() => document.querySelectorAll('script').length") == 1
    assert await page.evaluate("() => document.querySelectorAll('img').length") == 0
    assert await page.evaluate("() => window.__pwned === undefined")
    # one more full poll after the row appeared: still nothing executed
    n = int(await page.evaluate("() => document.body.dataset.updates"))
    await page.wait_for_function(f"() => Number(document.body.dataset.updates) > {n}", timeout=10_000)
    assert browser.dialogs == [] and browser.errors == []


def test_live_state_lists_loaded_idle_adapters_beside_running_and_waiting() -> None:
    clock = _ManualClock(100.0)
    ds = Datastore(clock, staleness=2.0)
    meta = _ep("vllm-0", 8001)
    ds.upsert_endpoint(meta)
    metrics = EndpointMetrics(
        updated_at=99.5,
        running_adapters=frozenset({"food-review"}),
        waiting_adapters=frozenset({"legal"}),
        max_active_adapters=2,
    )
    ds.update_metrics(meta.key, metrics)
    ds.set_models(meta.key, frozenset({BASE, "food-review", "cad-fabricator", "legal"}))
    ep = live_state(ds, base_models=[BASE])["endpoints"][0]
    assert ep["running_adapters"] == ["food-review"] and ep["waiting_adapters"] == ["legal"]
    assert ep["idle_adapters"] == ["cad-fabricator"]
    assert live_state(ds)["endpoints"][0]["idle_adapters"] == []  # base models unknown: not guessed
