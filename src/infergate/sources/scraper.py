"""The metrics scraper: keeps every endpoint's metrics snapshot, health and model list current.

One supervised asyncio task per endpoint in the datastore polls ``GET /metrics`` every
``interval`` (50 ms, as the reference EPP), maps the text through the engine dialect and swaps the
snapshot into the datastore; it lists ``/v1/models`` every ``models_interval``. Alongside, within
the same supervised task, a second loop probes ``health_path`` every ``health_interval``, so a slow
scrape never delays the health verdict. The task set follows the datastore: an endpoint that
appears gets a task, one that disappears has its task cancelled.

Failure policy (see :mod:`infergate.sources.health`): any failed scrape or probe takes the endpoint
out of rotation at once; it rejoins after ``rise`` consecutive successes while its latest health
probe is good. After ``evict_after`` consecutive failed health probes the endpoint is declared down
to the ``down`` listeners (:meth:`MetricsScraper.add_down_listener`): the data plane withdraws the
requests in flight there only then. While failing, the scrape
interval backs off exponentially up to ``max_backoff`` so a dead replica is not hammered 20×/s.
An unexpected exception inside one endpoint's task is logged and that task restarted; it never
stops the scraper or the other endpoints. All requests share one keep-alive connection pool
(:mod:`infergate.net.http1_client`, the proxy's own client): a scrape runs 20 times a second per
endpoint, and aiohttp's client cost half as much again per fetch (``docs/benchmarks.md``, "Metrics
scrapes"). A redirect is followed once per request within the same server (a model server that
mounts its metrics app under ``/metrics/``). Where the metrics are is a :class:`MetricsSource`
(the ``metrics-data-source`` plugin's parameters): another port, HTTPS, another path, a longer
interval; health probes and the model list always go to the inference port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urljoin, urlsplit

from infergate.config.settings import Settings
from infergate.datastore.store import Datastore
from infergate.errors import ConfigError
from infergate.net.http1_client import UpstreamPool
from infergate.sources.dialects import Dialect, get_dialect, parse_metrics_report
from infergate.sources.health import HealthTracker
from infergate.telemetry import GatewayMetrics
from infergate.types import Clock, PoolSpec

__all__ = ["ENGINE_LABEL", "LEGACY_ENGINE_LABEL", "EndpointPoller", "MetricsScraper", "MetricsSource"]

log = logging.getLogger(__name__)

# connection failures, resets, malformed answers (UpstreamConnectionError) and timeouts are OSErrors
_FETCH_ERRORS = (OSError, UnicodeDecodeError)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_GET_HEADERS = (("Accept", "*/*"),)

ENGINE_LABEL = "llm-d.ai/engine-type"
"""llm-d-router's pod label for the engine whose metric names the extractor reads."""
LEGACY_ENGINE_LABEL = "inference.networking.k8s.io/engine-type"
"""The Gateway API Inference Extension's spelling, read when the llm-d label is absent."""


@dataclass(frozen=True, slots=True)
class MetricsSource:
    """Where an endpoint's metrics are fetched: ``scheme://<address>:<port or the endpoint's>
    <path>``; ``path`` None tries the engine dialect's paths; ``interval`` None: the scraper's.
    ``tls`` is the client context for ``https`` (None: plain HTTP)."""

    path: str | None = None
    port: int | None = None
    tls: ssl.SSLContext | None = None
    interval: float | None = None
    engine_label: str = ENGINE_LABEL
    """The pod label naming an endpoint's engine (``core-metrics-extractor``'s ``engineLabelKey``)."""
    default_engine: str | None = None
    """The engine of endpoints without that label (``defaultEngine``); None: the pool's."""
    engines: tuple[Dialect, ...] = ()
    """``engineConfigs``: engines read by their configured metric names (a built-in's name
    replaces the built-in), found by exact name before the built-in ones."""


class EndpointPoller(Protocol):
    """Another source polled per endpoint beside its metrics scrape (``dcgm-data-source``): run in
    the endpoint's task group, so it starts and stops with it; :meth:`run` must not raise."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def run(self, key: str) -> None: ...


class _EndpointState:
    """What one endpoint's task remembers between iterations."""

    __slots__ = ("engine", "health", "logged_missing", "models", "path_index")

    def __init__(self, rise: int) -> None:
        self.health = HealthTracker(rise=rise)
        self.path_index = 0
        self.models: frozenset[str] | None = None
        self.logged_missing = False
        self.engine: str | None = None  # the engine label value last seen (None: the default)


class _Target:
    """One endpoint as the scraper fetches from it: ``GET path`` over the shared pool."""

    __slots__ = ("_host", "_key", "_pool", "_port")

    def __init__(self, pool: UpstreamPool, key: str, host: str, port: int) -> None:
        self._pool, self._key, self._host, self._port = pool, key, host, port

    def on_port(self, pool: UpstreamPool | None, port: int | None) -> _Target:
        """The same host through ``pool`` (None: this target's) on ``port`` (None: this target's)."""
        pool = pool or self._pool
        if port is None or port == self._port:
            return self if pool is self._pool else _Target(pool, self._key, self._host, self._port)
        host = f"[{self._host}]" if ":" in self._host else self._host
        return _Target(pool, f"{host}:{port}", self._host, port)

    async def get(self, path: str, within: float) -> tuple[int, bytes]:
        """Status and body of ``GET path``, within ``within`` seconds in all (TimeoutError beyond).

        A redirect to the same server is followed once (a metrics app mounted under
        ``/metrics/`` answers ``/metrics`` with 307); one elsewhere is answered as it is.
        """
        async with asyncio.timeout(within):
            status, location, body = await self._fetch(path)
            if status in _REDIRECTS and location:
                target = urlsplit(urljoin(f"http://{self._key}{path}", location))
                if target.netloc == self._key:
                    query = f"?{target.query}" if target.query else ""
                    status, _, body = await self._fetch((target.path or "/") + query)
        return status, body

    async def _fetch(self, path: str) -> tuple[int, str, bytes]:
        resp = await self._pool.request(self._key, self._host, self._port, "GET", path, _GET_HEADERS, b"")
        try:
            body = await resp.read()
        except BaseException:
            resp.close()  # a timeout or failure mid-body: the connection is not reused
            raise
        resp.release()
        return resp.status, resp.headers.get("Location", ""), body


class MetricsScraper:
    """Polls every endpoint of a datastore; see the module docstring for the policy.

    :meth:`run` opens the shared connection pool and closes it when it ends. ``metrics_path``
    defaults to the dialect's paths, tried in turn while they answer 404. ``timeout`` bounds a
    scrape or model listing from start to last byte, ``health_timeout`` a health probe.
    """

    def __init__(
        self,
        datastore: Datastore,
        *,
        interval: float = 0.05,
        dialect: str = "vllm",
        health_path: str = "/health",
        health_interval: float = 1.0,
        clock: Clock | None = None,
        metrics: GatewayMetrics | None = None,
        metrics_path: str | None = None,
        timeout: float = 0.8,
        health_timeout: float = 1.0,
        rise: int = 2,
        evict_after: int = 3,
        max_backoff: float = 1.0,
        models_interval: float = 2.0,
        pool_metrics_interval: float = 1.0,
        source: MetricsSource | None = None,
        pollers: Sequence[EndpointPoller] = (),
    ) -> None:
        self._ds = datastore
        self._pollers = tuple(pollers)
        self._source = source or MetricsSource()
        self._metrics_pool: UpstreamPool | None = None  # the HTTPS pool while running, if any
        if self._source.interval is not None:  # rounded to a multiple of the base tick, as upstream
            interval *= max(1, round(self._source.interval / interval))
        metrics_path = metrics_path or self._source.path
        self._engines = {d.name: d for d in self._source.engines}
        default = self._source.default_engine
        if default is not None and dialect != "vllm" and self._engine(default) is not self._engine(dialect):
            raise ConfigError(
                f"core-metrics-extractor defaultEngine {default!r} and the pool's model server type "
                f"{dialect!r} disagree; keep one"
            )
        self._dialect: Dialect = self._engine(
            default if default is not None and dialect == "vllm" else dialect
        )
        self._explicit_path = metrics_path
        self._interval = interval
        self._health_path = health_path if health_path.startswith("/") else "/" + health_path
        self._health_interval = health_interval
        # Same clock as the datastore by default, so freshness is judged on the time scrapes are stamped with.
        self._clock: Clock = clock or datastore.clock
        self._metrics = metrics
        self._timeout = timeout
        self._health_timeout = health_timeout
        self._rise = max(1, rise)
        self._evict_after = max(1, evict_after)
        self._down_listeners: list[Callable[[str], None]] = []
        self._max_backoff = max(max_backoff, interval)
        self._models_interval = models_interval
        self._pool_metrics_interval = pool_metrics_interval
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._states: dict[str, _EndpointState] = {}
        self._changed = asyncio.Event()
        self._per_pod_labels: set[tuple[str, str]] = set()
        self.scrapes = 0  # successful scrapes, for tests and the live view

    @classmethod
    def from_settings(
        cls,
        datastore: Datastore,
        settings: Settings,
        *,
        pool: PoolSpec | None = None,
        metrics: GatewayMetrics | None = None,
        clock: Clock | None = None,
        source: MetricsSource | None = None,
        pollers: Sequence[EndpointPoller] = (),
    ) -> MetricsScraper:
        """A scraper configured from the gateway settings and the pool (dialect, health path),
        fetching the metrics from ``source`` (the config's ``metrics-data-source``).

        ``pool`` defaults to the datastore's; without one, vLLM and ``/health`` are assumed.
        """
        pool = pool or datastore.pool
        s = settings.scrape
        return cls(
            datastore,
            interval=s.interval,
            dialect=pool.model_server_type if pool else "vllm",
            health_path=pool.health_path if pool else "/health",
            health_interval=s.health_interval,
            clock=clock,
            metrics=metrics,
            timeout=s.timeout,
            health_timeout=s.health_timeout,
            evict_after=s.evict_after_failed_probes,
            max_backoff=s.backoff_max,
            pool_metrics_interval=s.pool_metrics_interval,
            source=source,
            pollers=pollers,
        )

    @property
    def scraping(self) -> frozenset[str]:
        """Keys of the endpoints that currently have a live task."""
        return frozenset(k for k, t in self._tasks.items() if not t.done())

    async def run(self) -> None:
        """Scrape until cancelled; on exit every child task is cancelled and the pool closed."""
        # each request's whole time is bounded by its own timeout (_Target.get); the pool's limits
        # only back that up
        pool = UpstreamPool(connect_timeout=self._timeout, read_timeout=None, max_idle_per_host=4)
        tls_pool = None
        if self._source.tls is not None:
            tls_pool = UpstreamPool(
                connect_timeout=self._timeout, read_timeout=None, max_idle_per_host=4, ssl=self._source.tls
            )
        self._metrics_pool = tls_pool
        opened: list[EndpointPoller] = []
        self._changed = asyncio.Event()
        unsubscribe = self._ds.add_listener(self._changed.set, in_flight=False)
        gauges = asyncio.create_task(self._pool_gauge_loop()) if self._metrics is not None else None
        try:
            for poller in self._pollers:
                await poller.open()
                opened.append(poller)
            while True:
                self._reconcile(pool)
                await self._changed.wait()
                self._changed.clear()
        finally:
            unsubscribe()
            children = [*self._tasks.values(), *([gauges] if gauges else [])]
            for task in children:
                task.cancel()
            await asyncio.gather(*children, return_exceptions=True)
            self._tasks.clear()
            self._states.clear()
            await pool.close()
            if tls_pool is not None:
                await tls_pool.close()
            for poller in opened:
                await poller.close()

    def _reconcile(self, pool: UpstreamPool) -> None:
        """Start a task for each new endpoint, cancel the tasks of endpoints that are gone."""
        keys = {e.key for e in self._ds.endpoints()}
        for key in keys:
            task = self._tasks.get(key)
            if task is None or task.done():
                self._states.setdefault(key, _EndpointState(self._rise))
                self._tasks[key] = asyncio.create_task(self._supervise(key, pool), name=f"scrape {key}")
        for key in [k for k in self._tasks if k not in keys]:
            self._tasks.pop(key).cancel()
            self._states.pop(key, None)

    async def _supervise(self, key: str, pool: UpstreamPool) -> None:
        """Run one endpoint's loop; restart it after an unexpected exception."""
        restarts = 0
        while True:
            try:
                await self._endpoint_loop(key, pool)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                restarts += 1
                log.exception("scraper task for %s crashed (restart %d)", key, restarts)
                await asyncio.sleep(min(self._max_backoff, self._interval * 2 ** min(restarts, 16)))

    async def _endpoint_loop(self, key: str, pool: UpstreamPool) -> None:
        """Scrape and health-probe concurrently, so a slow scrape never delays the health verdict."""
        state = self._states.setdefault(key, _EndpointState(self._rise))
        endpoint = self._ds.endpoint(key)
        if endpoint is None:
            return
        target = _Target(pool, key, endpoint.meta.address, endpoint.meta.port)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._scrape_loop(key, target, state))
            tg.create_task(self._health_loop(key, target, state))
            for poller in self._pollers:  # e.g. the DCGM exporter beside the model server
                tg.create_task(poller.run(key))

    async def _scrape_loop(self, key: str, target: _Target, state: _EndpointState) -> None:
        """Metrics from the source's port and scheme every interval; the model list, from the
        inference port, after a good scrape every ``models_interval``."""
        source = target.on_port(self._metrics_pool, self._source.port)
        loop = asyncio.get_running_loop()
        next_models = loop.time()
        delay = self._interval
        while self._ds.endpoint(key) is not None:
            started = loop.time()
            ok = await self._scrape(key, source, state)
            if ok and started >= next_models:
                next_models = started + self._models_interval
                await self._refresh_models(key, target, state)
            delay = self._interval if ok else min(self._max_backoff, max(delay * 2, self._interval * 2))
            await asyncio.sleep(max(0.0, delay - (loop.time() - started)))

    async def _health_loop(self, key: str, target: _Target, state: _EndpointState) -> None:
        loop = asyncio.get_running_loop()
        while self._ds.endpoint(key) is not None:
            started = loop.time()
            await self._probe_health(key, target, state)
            await asyncio.sleep(max(0.0, self._health_interval - (loop.time() - started)))

    def add_down_listener(self, fn: Callable[[str], None]) -> Callable[[], None]:
        """Call ``fn(key)`` when an endpoint failed ``evict_after`` health probes in a row; returns
        the function that unsubscribes it."""
        self._down_listeners.append(fn)
        return lambda: self._down_listeners.remove(fn)

    def _outcome(self, key: str, state: _EndpointState, ok: bool, *, probe: bool = False) -> None:
        change = state.health.record(ok, probe=probe)
        if change is not None and self._ds.endpoint(key) is not None:
            log.info("endpoint %s is now %s", key, "healthy" if change else "unhealthy")
            self._ds.set_healthy(key, change)
        if probe and not ok and state.health.failed_probes == self._evict_after:
            log.warning("endpoint %s failed %d health probes in a row: down", key, self._evict_after)
            for fn in list(self._down_listeners):
                fn(key)

    def _engine(self, name: str) -> Dialect:
        """The engine called ``name``: a configured one (``engineConfigs``), else a built-in;
        ConfigError when neither."""
        configured = self._engines.get(name)
        return configured if configured is not None else get_dialect(name)

    def _dialect_for(self, key: str, state: _EndpointState) -> Dialect | None:
        """The endpoint's engine: its pod's engine label (llm-d's, else the GIE spelling), else the
        pool's default; None (and a warning, once) for a label naming no engine infergate reads."""
        endpoint = self._ds.endpoint(key)
        labels = endpoint.meta.labels if endpoint is not None else {}
        engine = labels.get(self._source.engine_label) or labels.get(LEGACY_ENGINE_LABEL)
        if engine is None:
            return self._dialect
        try:
            dialect = self._engine(engine)
        except ConfigError:
            if state.engine != engine:
                log.warning(
                    "endpoint %s: engine label %s=%r names no engine whose metrics infergate reads "
                    "(%s); it is not scraped",
                    key,
                    self._source.engine_label,
                    engine,
                    ", ".join(["vllm", "sglang", "trtllm-serve", "triton-tensorrt-llm", *self._engines]),
                )
            state.engine = engine
            return None
        state.engine = engine
        return dialect

    async def _scrape(self, key: str, target: _Target, state: _EndpointState) -> bool:
        dialect = self._dialect_for(key, state)
        if dialect is None:
            if self._metrics is not None:
                self._metrics.datalayer_extract_errors_total.labels(
                    source_type="metrics-data-source", extractor_type="core-metrics-extractor"
                ).inc()
            return False
        paths = (self._explicit_path,) if self._explicit_path else dialect.metrics_paths
        try:
            path = paths[state.path_index % len(paths)]
            status, body = await target.get(path, self._timeout)
        except _FETCH_ERRORS as exc:
            log.debug("scrape of %s failed: %r", key, exc)
            self._poll_failed()
            self._outcome(key, state, False)
            return False
        if status != 200:
            log.debug("scrape of %s%s answered %d", key, path, status)
            if status == 404:
                state.path_index += 1  # try the dialect's next metrics path next time
            self._poll_failed()
            self._outcome(key, state, False)
            return False
        report = parse_metrics_report(body.decode("utf-8", "replace"), dialect, self._clock.now())
        if report.missing:
            if self._metrics is not None:
                self._metrics.datalayer_extract_errors_total.labels(
                    source_type="metrics-data-source", extractor_type="core-metrics-extractor"
                ).inc()
            if not state.logged_missing:
                state.logged_missing = True
                log.warning("endpoint %s exposes no %s", key, ", ".join(report.missing))
        if self._ds.endpoint(key) is None:
            return False
        self._ds.update_metrics(key, report.metrics)
        self.scrapes += 1
        self._outcome(key, state, True)
        return True

    async def _probe_health(self, key: str, target: _Target, state: _EndpointState) -> bool:
        try:
            status, _ = await target.get(self._health_path, self._health_timeout)
            ok = 200 <= status < 300
        except _FETCH_ERRORS as exc:
            log.debug("health probe of %s failed: %r", key, exc)
            ok = False
        self._outcome(key, state, ok, probe=True)
        return ok

    async def _refresh_models(self, key: str, target: _Target, state: _EndpointState) -> None:
        """``/v1/models`` ids (base model and loaded adapters) and the context length; a failure
        keeps the last list."""
        try:
            status, body = await target.get("/v1/models", self._timeout)
            if status != 200:
                return
            payload = json.loads(body)
        except (*_FETCH_ERRORS, ValueError) as exc:
            log.debug("model list of %s failed: %r", key, exc)
            return
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            return
        models = frozenset(
            str(card["id"]) for card in data if isinstance(card, dict) and isinstance(card.get("id"), str)
        )
        if models != state.models and self._ds.endpoint(key) is not None:
            state.models = models
            self._ds.set_models(key, models)
        # vLLM reports the context length on the base model's card (adapters say null)
        lengths = [
            card["max_model_len"]
            for card in data
            if isinstance(card, dict)
            and isinstance(card.get("max_model_len"), int)
            and not isinstance(card["max_model_len"], bool)
            and card["max_model_len"] > 0
        ]
        self._ds.set_max_model_len(key, max(lengths, default=None))

    async def _pool_gauge_loop(self) -> None:
        while True:
            try:
                self.update_pool_gauges()
            except Exception:
                log.exception("updating the pool gauges failed")
            await asyncio.sleep(self._pool_metrics_interval)

    def _poll_failed(self) -> None:
        if self._metrics is not None:  # llm-d's name for the source that scrapes /metrics
            self._metrics.datalayer_poll_errors_total.labels(source_type="metrics-data-source").inc()

    def update_pool_gauges(self) -> None:
        """Set the ``inference_pool_*`` gauges from endpoints that are healthy with fresh metrics."""
        m = self._metrics
        if m is None:
            return
        pool = self._ds.pool
        name = pool.name if pool is not None else ""
        ready = self._ds.candidates()
        n = len(ready)
        m.pool_ready_pods.labels(name=name).set(n)
        for values, average, spread in (
            (
                [e.metrics.kv_cache_usage for e in ready],
                m.pool_average_kv_cache_utilization,
                m.pool_std_dev_kv_cache_utilization,
            ),
            (
                [float(e.metrics.waiting_queue_size) for e in ready],
                m.pool_average_queue_size,
                m.pool_std_dev_queue_size,
            ),
            (
                [float(e.metrics.running_requests) for e in ready],
                m.pool_average_running_requests,
                m.pool_std_dev_running_requests,
            ),
        ):
            mean = sum(values) / n if n else 0.0
            average.labels(name=name).set(mean)
            # the population deviation, as llm-d-router's
            spread.labels(name=name).set(math.sqrt(sum((v - mean) ** 2 for v in values) / n) if n else 0.0)
        seen: set[tuple[str, str]] = set()
        for e in ready:
            labels = (name, e.meta.name)
            seen.add(labels)
            m.pool_per_pod_queue_size.labels(*labels).set(e.metrics.waiting_queue_size)
        for labels in self._per_pod_labels - seen:
            with contextlib.suppress(KeyError):
                m.pool_per_pod_queue_size.remove(*labels)
        self._per_pod_labels = seen
