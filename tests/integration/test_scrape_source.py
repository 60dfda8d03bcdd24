"""The ``metrics-data-source`` plugin's parameters, from an EndpointPickerConfig to real scrapes:
metrics on another port than inference (an exporter beside the server), over HTTPS with the
server's certificate checked against ``caCertPath``, and a client certificate for a metrics port
that requires one (mTLS); health probes and the model list stay on the inference port."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from infergate.app.core import metrics_source
from infergate.config.picker import EndpointPickerConfig
from infergate.datastore.store import Datastore
from infergate.errors import ConfigError
from infergate.sources.scraper import MetricsScraper
from infergate.telemetry import GatewayMetrics
from tests.integration.test_extproc import metric_value
from tests.integration.test_metrics_tls import issue, write_server_pair
from tests.integration.test_sources_scraper import FakeModelServer, running
from tests.support import async_wait_for, free_port
from tests.unit.test_sources_dialects import vllm_text


def picker(parameters: dict[str, object]) -> EndpointPickerConfig:
    text = yaml.safe_dump(
        {
            "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
            "kind": "EndpointPickerConfig",
            "plugins": [
                {"type": "queue-scorer"},
                {"type": "metrics-data-source", "parameters": parameters},
            ],
        }
    )
    return EndpointPickerConfig.model_validate(yaml.safe_load(text))


class TlsMetricsPort:
    """``/custom/metrics`` only, over TLS, asking clients for a certificate ``client_ca`` signed."""

    def __init__(self, cert_dir: Path, client_ca: Path) -> None:
        self.port = free_port()
        self.hits = 0
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
        self.ctx.load_verify_locations(cafile=str(client_ca))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(text=vllm_text(waiting=7), content_type="text/plain")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/custom/metrics", self._metrics)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.ctx).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[FakeModelServer, TlsMetricsPort, dict[str, Path]]]:
    write_server_pair(tmp_path / "server", "exporter")  # self-signed for 127.0.0.1: its own CA
    ca = issue(tmp_path, "ca", None)
    client = issue(tmp_path, "scraper", ca)
    inference = FakeModelServer(free_port(), vllm_text(waiting=0))  # its own /metrics: not read
    exporter = TlsMetricsPort(tmp_path / "server", ca[0])
    await inference.start()
    await exporter.start()
    files = {
        "server_ca": tmp_path / "server" / "tls.crt",
        "client_cert": client[0],
        "client_key": client[1],
        "stranger_ca": issue(tmp_path, "stranger", None)[0],
    }
    try:
        yield inference, exporter, files
    finally:
        await exporter.stop()
        await inference.stop()


def mtls(exporter: TlsMetricsPort, files: dict[str, Path], *, ca: Path) -> dict[str, object]:
    """The exporter's port over HTTPS, its certificate checked against ``ca``, with the client pair."""
    return {
        "scheme": "https",
        "port": exporter.port,
        "path": "/custom/metrics",
        "insecureSkipVerify": False,
        "caCertPath": str(ca),
        "clientCertPath": str(files["client_cert"]),
        "clientKeyPath": str(files["client_key"]),
    }


async def test_metrics_from_another_port_over_mtls(
    pair: tuple[FakeModelServer, TlsMetricsPort, dict[str, Path]],
) -> None:
    inference, exporter, files = pair
    source = metrics_source(picker(mtls(exporter, files, ca=files["server_ca"])))
    ds = Datastore()
    ds.upsert_endpoint(inference.meta())
    async with running(MetricsScraper(ds, interval=0.02, source=source)):

        async def scraped_and_listed() -> bool:
            e = ds.endpoint(inference.key)
            return e is not None and e.metrics.waiting_queue_size == 7 and bool(ds.models(inference.key))

        await async_wait_for(scraped_and_listed, what="metrics from the exporter, models from the server")
    assert exporter.hits > 0 and inference.hits["/metrics"] == 0
    assert inference.hits["/health"] > 0 and inference.hits["/v1/models"] > 0


async def test_a_certificate_the_ca_does_not_vouch_for_fails_the_scrape(
    pair: tuple[FakeModelServer, TlsMetricsPort, dict[str, Path]],
) -> None:
    inference, exporter, files = pair
    source = metrics_source(picker(mtls(exporter, files, ca=files["stranger_ca"])))
    registry = CollectorRegistry()
    ds = Datastore()
    ds.upsert_endpoint(inference.meta())
    scraper = MetricsScraper(ds, interval=0.02, source=source, metrics=GatewayMetrics(registry))
    async with running(scraper):

        async def failed_twice() -> bool:
            name = "llm_d_epp_datalayer_poll_errors_total"
            return metric_value(registry, name, source_type="metrics-data-source") >= 2

        await async_wait_for(failed_twice, what="scrapes refused by the certificate check")
    assert exporter.hits == 0 and not ds.candidates()


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ({"scheme": "https", "caCertPath": "/ca.pem"}, "insecureSkipVerify: true"),
        ({"caCertPath": "/ca.pem", "insecureSkipVerify": False}, "caCertPath: only with scheme: https"),
        ({"scheme": "https", "clientCertPath": "/c.pem"}, "clientCertPath and clientKeyPath go together"),
        ({"path": "metrics"}, "must start with /"),
        ({"port": 70000}, "port"),
        ({"interval": "often"}, "interval"),
    ],
)
def test_parameters_that_cannot_work_are_refused(parameters: dict[str, object], named: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=named):
        metrics_source(picker(parameters))


def test_missing_tls_files_are_named(tmp_path: Path) -> None:
    params = {
        "scheme": "https",
        "insecureSkipVerify": False,
        "caCertPath": str(tmp_path / "nope.pem"),
    }
    with pytest.raises(ConfigError, match=r"plugins\[metrics-data-source\]\.parameters: the TLS files"):
        metrics_source(picker(params))


def test_interval_is_a_multiple_of_the_base_tick() -> None:
    for given, expected in (("1s", 1.0), ("130ms", 0.15), ("10ms", 0.05), ("", 0.05)):
        source = metrics_source(picker({"interval": given}))
        scraper = MetricsScraper(Datastore(), interval=0.05, source=source)
        assert scraper._interval == pytest.approx(expected)


def test_several_sources_are_refused() -> None:
    config = picker({})
    config = config.model_copy(
        update={"plugins": [*config.plugins, config.plugins[-1].model_copy(update={"name": "second"})]}
    )
    with pytest.raises(ConfigError, match="several metrics-data-source plugins"):
        metrics_source(config)
