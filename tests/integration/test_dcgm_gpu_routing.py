"""llm-d-router's ``deploy/config/sim-epp-gpu-config.yaml`` (GPU-utilisation-aware routing) loaded
as published and shown to take effect, against real HTTP servers on loopback.

Each endpoint is a model server on its own loopback address with a DCGM Exporter stand-in beside
it on port 9400 (the config's ``port``; the sidecar layout), serving the exporter's own exposition
(``# HELP``/``# TYPE`` lines, one sample per GPU with ``gpu``, ``UUID``, ``device``, ``modelName``,
``Hostname`` and the ``pod``/``namespace``/``container`` labels ``DCGM_EXPORTER_KUBERNETES``
adds). The core is built by ``app.core.build_core``, the one wiring every mode uses.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from infergate.app.core import PickerCore, build_core
from infergate.config.picker import parse_picker_config
from infergate.config.settings import Settings
from infergate.datastore.store import Datastore
from infergate.sources.dcgm import DcgmPoller, DcgmSource
from infergate.telemetry import GatewayMetrics
from infergate.types import EndpointMeta, InferenceRequest, MonotonicClock, PoolSpec
from tests.integration.test_sources_scraper import running
from tests.support import async_wait_for, free_port
from tests.unit.test_sources_dialects import vllm_text

# llm-d-router v0.10 deploy/config/sim-epp-gpu-config.yaml, verbatim
SIM_EPP_GPU_CONFIG = """\
# Sample EPP configuration: GPU utilization-aware routing
# Routes requests to pods with lower GPU utilization, filtering out overloaded endpoints.
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: dcgm-data-source
  name: dcgm-source
  parameters:
    port: 9400
    interval: "1s"
- type: dcgm-extractor
  name: dcgm-extractor
- type: endpoint-attribute-filter
  name: gpu-utilization-filter
  parameters:
    attribute: "GPUUtilization"
    producer: "dcgm-extractor"
    onMissing: "Pass"
    fallbackOnEmpty: true
    algorithm:
      type: "threshold"
      threshold:
        operator: "LessThanOrEqual"
        value: 0.90
- type: endpoint-attribute-scorer
  name: gpu-utilization-scorer
  parameters:
    attributeKey: "GPUUtilization"
    producer: "dcgm-extractor"
    algorithm:
      type: "linear_lower_is_better"
      normalization:
        fixedRange:
          min: 0.0
          max: 1.0
- type: kv-cache-utilization-scorer
- type: max-score-picker
- type: single-profile-handler
- type: decode-filter
dataLayer:
  sources:
  - pluginRef: dcgm-source
    extractors:
    - pluginRef: dcgm-extractor
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: decode-filter
  - pluginRef: gpu-utilization-filter
  - pluginRef: gpu-utilization-scorer
    weight: 2.0
  - pluginRef: kv-cache-utilization-scorer
    weight: 1.0
  - pluginRef: max-score-picker
"""

GPU = ("GPUUtilization", "dcgm-extractor")
DCGM_PORT = 9400


def dcgm_page(utilisation: Mapping[str, list[float]]) -> str:
    """A dcgm-exporter (3.x, ``DCGM_EXPORTER_KUBERNETES=true``) page: per pod, one sample per GPU;
    other families as the exporter's default counters list them."""
    lines = [
        "# HELP DCGM_FI_DEV_SM_CLOCK SM clock frequency (in MHz).",
        "# TYPE DCGM_FI_DEV_SM_CLOCK gauge",
        'DCGM_FI_DEV_SM_CLOCK{gpu="0",UUID="GPU-5f3c9d2e-1a7b-4c8e-9f01-2b3c4d5e6f70",device="nvidia0",'
        'modelName="NVIDIA H100 80GB HBM3",Hostname="gpu-node-1",DCGM_FI_DRIVER_VERSION="550.54.15"} 1980',
        "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).",
        "# TYPE DCGM_FI_DEV_GPU_UTIL gauge",
    ]
    gpu = 0
    for pod, values in utilisation.items():
        for value in values:
            lines.append(
                f'DCGM_FI_DEV_GPU_UTIL{{gpu="{gpu}",UUID="GPU-5f3c9d2e-1a7b-4c8e-9f01-2b3c4d5e6f7{gpu}",'
                f'device="nvidia{gpu}",modelName="NVIDIA H100 80GB HBM3",Hostname="gpu-node-1",'
                f'DCGM_FI_DRIVER_VERSION="550.54.15",container="vllm",namespace="default",'
                f'pod="{pod}"}} {value:g}'
            )
            gpu += 1
    lines += [
        "# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).",
        "# TYPE DCGM_FI_DEV_FB_USED gauge",
        'DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-5f3c9d2e-1a7b-4c8e-9f01-2b3c4d5e6f70",device="nvidia0",'
        'modelName="NVIDIA H100 80GB HBM3",Hostname="gpu-node-1",container="vllm",namespace="default",'
        'pod="x"} 71234',
    ]
    return "\n".join(lines) + "\n"


class TextServer:
    """Answers GET on ``routes`` with the current text (and /health, /v1/models for a model server)."""

    def __init__(self, host: str, port: int, text: str) -> None:
        self.host, self.port, self.text = host, port, text
        self.hits = 0
        self._runner: web.AppRunner | None = None

    async def _page(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(text=self.text, content_type="text/plain")

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "m"}]})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._page)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@asynccontextmanager
async def serving(*servers: TextServer) -> AsyncIterator[None]:
    started: list[TextServer] = []
    try:
        for s in servers:
            try:
                await s.start()
            except OSError as exc:  # another process holds this loopback address's 9400
                pytest.skip(f"cannot listen on {s.host}:{s.port}: {exc}")
            started.append(s)
        yield
    finally:
        for s in started:
            await s.stop()


def _gpu(ds: Datastore, name: str) -> float | None:
    ep = next(e for e in ds.endpoints() if e.meta.name == name)
    value: float | None = ep.metrics.attributes.get(GPU)
    return value


def _core(ds: Datastore, metrics: GatewayMetrics) -> PickerCore:
    return build_core(
        ds,
        PoolSpec(name="pool"),
        picker=parse_picker_config(SIM_EPP_GPU_CONFIG),
        settings=Settings(),
        metrics=metrics,
        clock=MonotonicClock(),
        rng=random.Random(7),
    )


REQUEST = InferenceRequest(request_id="r", model="m", target_model="m", prompt="hello")
# a loopback address per endpoint (127.0.0.0/8 is all loopback on Linux), so each has its own :9400
HOSTS = {"pod-hot": "127.0.94.1", "pod-warm": "127.0.94.2", "pod-cool": "127.0.94.3"}


async def test_the_published_gpu_config_filters_busy_gpus_and_prefers_idle_ones() -> None:
    ds = Datastore()
    ds.set_pool(PoolSpec(name="pool"))
    models = {name: TextServer(host, free_port(), vllm_text(kv=0.5)) for name, host in HOSTS.items()}
    dcgm = {
        "pod-hot": TextServer(HOSTS["pod-hot"], DCGM_PORT, dcgm_page({"pod-hot": [95, 40]})),
        "pod-warm": TextServer(HOSTS["pod-warm"], DCGM_PORT, dcgm_page({"pod-warm": [60]})),
        # a DaemonSet-style page: another pod's busier GPU there is not pod-cool's
        "pod-cool": TextServer(
            HOSTS["pod-cool"], DCGM_PORT, dcgm_page({"pod-cool": [20, 10], "other": [99]})
        ),
    }
    metrics = GatewayMetrics(CollectorRegistry())
    core = _core(ds, metrics)
    async with serving(*models.values(), *dcgm.values()):
        for name, srv in models.items():
            ds.upsert_endpoint(EndpointMeta(name=name, address=srv.host, port=srv.port))

        async def read(expected: Mapping[str, float | None]) -> bool:
            return len(ds.candidates()) == 3 and all(_gpu(ds, n) == v for n, v in expected.items())

        async with running(core.scraper):
            await async_wait_for(
                lambda: read({"pod-hot": 0.95, "pod-warm": 0.6, "pod-cool": 0.2}), timeout=10, what="GPU read"
            )
            result = core.scheduler.schedule(REQUEST, ds.candidates())
            # 95 % > 90 %: filtered out; the idler of the two left wins (KV-cache use is equal)
            assert {t.meta.name for t in result.targets} == {"pod-warm", "pod-cool"}
            assert result.primary.meta.name == "pod-cool"
            scores = result.plugin_scores["gpu-utilization-scorer"]
            assert scores[f"{HOSTS['pod-cool']}:{models['pod-cool'].port}"] == pytest.approx(0.8)
            assert scores[f"{HOSTS['pod-warm']}:{models['pod-warm'].port}"] == pytest.approx(0.4)

            # pod-cool's GPU fills up: the next poll (interval 1s) moves the traffic
            dcgm["pod-cool"].text = dcgm_page({"pod-cool": [92]})
            await async_wait_for(lambda: read({"pod-cool": 0.92}), timeout=10, what="pod-cool busy")
            assert core.scheduler.schedule(REQUEST, ds.candidates()).primary.meta.name == "pod-warm"

            # every GPU over 90 %: fallbackOnEmpty keeps the request routable
            dcgm["pod-warm"].text = dcgm_page({"pod-warm": [97]})
            await async_wait_for(lambda: read({"pod-warm": 0.97}), timeout=10, what="pod-warm busy")
            last = core.scheduler.schedule(REQUEST, ds.candidates())
            assert len(last.targets) == 3 and last.primary.meta.name == "pod-cool"  # the least busy

            # pod-warm's exporter goes away: its reading expires instead of standing forever,
            # and it is counted as a failed poll of the dcgm source
            await dcgm["pod-warm"].stop()
            await async_wait_for(lambda: read({"pod-warm": None}), timeout=15, what="pod-warm expired")
            errors = metrics.registry.get_sample_value(
                "llm_d_epp_datalayer_poll_errors_total", {"source_type": "dcgm-data-source"}
            )
            assert errors is not None and errors >= 1
            # onMissing: Pass keeps it; the scorer gives it 0, so it does not win by its absence
            after = core.scheduler.schedule(REQUEST, ds.candidates())
            assert "pod-warm" in {t.meta.name for t in after.targets}
            assert (
                after.plugin_scores["gpu-utilization-scorer"][
                    f"{HOSTS['pod-warm']}:{models['pod-warm'].port}"
                ]
                == 0.0
            )
            # the model servers' own scrape went on all along
            assert all(srv.hits > 0 for srv in models.values())


async def test_use_node_address_scrapes_the_node_and_refuses_to_guess_without_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = TextServer("127.0.94.9", free_port(), dcgm_page({"pod-a": [30], "pod-b": [70]}))
    ds = Datastore()
    # the pods' own addresses answer nothing: only the node's exporter does
    ds.upsert_endpoint(EndpointMeta(name="pod-a", address="127.0.94.10", port=8000, node_address=node.host))
    ds.upsert_endpoint(EndpointMeta(name="pod-b", address="127.0.94.11", port=8000, node_address=node.host))
    ds.upsert_endpoint(EndpointMeta(name="static", address="127.0.94.12", port=8000))  # no node address
    metrics = GatewayMetrics(CollectorRegistry())
    poller = DcgmPoller(
        ds,
        DcgmSource(port=node.port, use_node_address=True),
        base_interval=0.05,
        timeout=0.5,
        max_backoff=0.2,
        metrics=metrics,
    )

    async def read() -> bool:
        failed = metrics.registry.get_sample_value(
            "llm_d_epp_datalayer_poll_errors_total", {"source_type": "dcgm-data-source"}
        )
        return _gpu(ds, "pod-a") == 0.3 and _gpu(ds, "pod-b") == 0.7 and (failed or 0) >= 2

    async with serving(node):
        await poller.open()
        try:
            tasks = [asyncio.create_task(poller.run(e.key)) for e in ds.endpoints()]
            await async_wait_for(read, timeout=10, what="node exporter read, static endpoint counted")
            assert _gpu(ds, "static") is None
            assert sum("has no node address" in r.getMessage() for r in caplog.records) == 1  # once
            # the endpoint leaving stops its loop
            ds.remove_endpoint(ds.endpoints()[0].key)
            done, _ = await asyncio.wait(tasks, timeout=5, return_when=asyncio.FIRST_COMPLETED)
            assert len(done) == 1
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await poller.close()
