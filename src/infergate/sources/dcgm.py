"""GPU utilisation from NVIDIA's DCGM Exporter: llm-d-router's ``dcgm-data-source`` + ``dcgm-extractor``.

A model server's own page says how full its queue and KV cache are, not how busy its GPUs are; the
DCGM Exporter does, beside it (a sidecar on the pod's address) or once per node (a DaemonSet on the
node's address, ``useNodeAddress``; ``pod.status.hostIP``). For each endpoint, a second loop beside
its metrics scrape (:class:`~infergate.sources.scraper.MetricsScraper` runs it in the endpoint's
supervised task group, so it starts and stops with the endpoint) fetches
``scheme://host:port/path`` every ``interval`` and publishes attribute ``GPUUtilization`` of
producer ``dcgm-extractor``: the largest ``DCGM_FI_DEV_GPU_UTIL`` among the samples whose ``pod``
label names the endpoint's pod or that have no ``pod`` label, divided by 100.

It has its own connection pool, timeout and backoff, so a slow or dead exporter never delays the
model server's scrape. A failed fetch counts in ``llm_d_epp_datalayer_poll_errors_total``
(``source_type="dcgm-data-source"``), a page without this pod's samples in
``llm_d_epp_datalayer_extract_errors_total`` (``extractor_type="dcgm-extractor"``); the first of a
run of failures is logged as a warning, the recovery as info, each failure at debug. An endpoint
with no node address under ``useNodeAddress`` (manifest files and static endpoints have none) is
such a failure, logged once, never a guess at another address.

A value is not kept forever: upstream's stays until the endpoint leaves, so an exporter that dies
would pin the last reading (an idle GPU would stay "idle" under any load). Here, once no fetch has
succeeded for ``max(staleness, 2 x interval)`` (``scrape.staleness``, 2 s by default) the attribute
is removed: the filter's ``onMissing`` and the scorer's 0 then apply, as for an endpoint never read.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import ssl
from dataclasses import dataclass

from infergate.datastore.store import Datastore
from infergate.net.http1_client import UpstreamPool
from infergate.sources.exposition_parser import parse_sample_lines
from infergate.telemetry import GatewayMetrics
from infergate.types import Clock

__all__ = ["DCGM_EXTRACTOR", "GPU_UTILIZATION", "DcgmPoller", "DcgmSource", "gpu_utilization"]

log = logging.getLogger(__name__)

DCGM_SOURCE = "dcgm-data-source"
DCGM_EXTRACTOR = "dcgm-extractor"
"""The producer of :data:`GPU_UTILIZATION`."""
GPU_UTILIZATION = "GPUUtilization"
_FAMILY = "DCGM_FI_DEV_GPU_UTIL"
_LINES = re.compile(r"^" + _FAMILY + r"(?=[{ \t]).*$", re.MULTILINE)
_FETCH_ERRORS = (OSError, UnicodeDecodeError)
_GET_HEADERS = (("Accept", "text/plain"),)


@dataclass(frozen=True, slots=True)
class DcgmSource:
    """Where an endpoint's exporter answers: ``scheme://<pod or node address>:port path``, every
    ``interval`` seconds (None: every base scrape tick, as upstream). ``tls`` for ``https``."""

    path: str = "/metrics"
    port: int = 9400
    tls: ssl.SSLContext | None = None
    use_node_address: bool = False
    interval: float | None = None


def gpu_utilization(text: str, pod: str) -> float | None:
    """``DCGM_FI_DEV_GPU_UTIL`` of ``pod`` as a fraction: the busiest of its GPUs (samples whose
    ``pod`` label is ``pod``, or that have none), percent / 100; None without such a sample."""
    best: float | None = None
    for sample in parse_sample_lines([line.rstrip("\r") for line in _LINES.findall(text)]):
        if sample.name != _FAMILY or not math.isfinite(sample.value):
            continue
        owner = sample.labels.get("pod")
        if owner is not None and pod and owner != pod:
            continue
        if best is None or sample.value > best:
            best = sample.value
    return None if best is None else best / 100.0


class _State:
    __slots__ = ("failing", "last_ok", "warned_no_node")

    def __init__(self, now: float) -> None:
        self.last_ok = now  # expiry counts from the loop's start until a first success
        self.failing = False
        self.warned_no_node = False


class DcgmPoller:
    """Polls each endpoint's DCGM Exporter into its ``GPUUtilization`` attribute (module docstring).

    The metrics scraper calls :meth:`open` and :meth:`close` around its run and :meth:`run` per
    endpoint, in that endpoint's task group.
    """

    def __init__(
        self,
        datastore: Datastore,
        source: DcgmSource,
        *,
        base_interval: float,
        timeout: float,
        max_backoff: float,
        metrics: GatewayMetrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._ds = datastore
        self._source = source
        interval = base_interval
        if source.interval is not None:  # rounded to a multiple of the base tick, as upstream
            interval *= max(1, round(source.interval / base_interval))
        self.interval = interval
        self.expiry = max(datastore.staleness, 2 * interval)
        self._timeout = timeout
        self._max_backoff = max(max_backoff, interval)
        self._metrics = metrics
        self._clock: Clock = clock or datastore.clock
        self._pool: UpstreamPool | None = None
        self.polls = 0  # successful polls, for tests and the live view

    async def open(self) -> None:
        self._pool = UpstreamPool(
            connect_timeout=self._timeout, read_timeout=None, max_idle_per_host=2, ssl=self._source.tls
        )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def run(self, key: str) -> None:
        """Poll ``key``'s exporter until the endpoint leaves; never raises (a bug in one
        iteration is logged and retried after a backoff, so the endpoint's scrape goes on)."""
        loop = asyncio.get_running_loop()
        state = _State(self._clock.now())
        delay = self.interval
        while self._ds.endpoint(key) is not None:
            started = loop.time()
            try:
                ok = await self._poll(key, state)
            except Exception:
                log.exception("dcgm-data-source: polling %s failed unexpectedly", key)
                ok = False
            if ok:
                state.last_ok = self._clock.now()
            elif self._clock.now() - state.last_ok > self.expiry:
                self._ds.set_attributes(key, DCGM_EXTRACTOR, {})
            delay = self.interval if ok else min(self._max_backoff, max(delay * 2, self.interval * 2))
            await asyncio.sleep(max(0.0, delay - (loop.time() - started)))

    async def _poll(self, key: str, state: _State) -> bool:
        endpoint = self._ds.endpoint(key)
        pool = self._pool
        if endpoint is None or pool is None:
            return False
        meta = endpoint.meta
        host = meta.node_address if self._source.use_node_address else meta.address
        if not host:
            if not state.warned_no_node:
                state.warned_no_node = True
                log.warning(
                    "dcgm-data-source: endpoint %s has no node address (useNodeAddress needs the pod's "
                    "status.hostIP; manifest files and static endpoints have none): GPU utilisation "
                    "is not read there",
                    key,
                )
            self._count_poll_error()
            return False
        port = self._source.port
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            async with asyncio.timeout(self._timeout):
                resp = await pool.request(where, host, port, "GET", self._source.path, _GET_HEADERS, b"")
                try:
                    body = await resp.read()
                except BaseException:
                    resp.close()
                    raise
                resp.release()
            if resp.status != 200:
                raise OSError(f"answered {resp.status}")
            text = body.decode("utf-8")
        except _FETCH_ERRORS as exc:
            self._failed(key, state, f"GET {where}{self._source.path}: {exc!r}")
            self._count_poll_error()
            return False
        value = gpu_utilization(text, meta.pod or meta.name)
        if value is None:
            self._failed(key, state, f"{where} has no {_FAMILY} sample for pod {meta.pod or meta.name!r}")
            if self._metrics is not None:
                self._metrics.datalayer_extract_errors_total.labels(
                    source_type=DCGM_SOURCE, extractor_type=DCGM_EXTRACTOR
                ).inc()
            return False
        if state.failing:
            state.failing = False
            log.info("dcgm-data-source: endpoint %s: GPU utilisation read again", key)
        self._ds.set_attributes(key, DCGM_EXTRACTOR, {GPU_UTILIZATION: value})
        self.polls += 1
        return True

    def _failed(self, key: str, state: _State, why: str) -> None:
        if not state.failing:
            state.failing = True
            log.warning("dcgm-data-source: endpoint %s: %s", key, why)
        else:
            log.debug("dcgm-data-source: endpoint %s: %s", key, why)

    def _count_poll_error(self) -> None:
        if self._metrics is not None:
            self._metrics.datalayer_poll_errors_total.labels(source_type=DCGM_SOURCE).inc()
