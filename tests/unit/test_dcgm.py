"""``dcgm-data-source`` and ``dcgm-extractor``: reading DCGM Exporter pages, and the config
checks that keep a DCGM source or extractor from being declared and then doing nothing."""

from __future__ import annotations

import pytest

from infergate.app.core import dcgm_source
from infergate.config.picker import parse_picker_config
from infergate.config.picker_sections import check_sections
from infergate.datastore.store import Datastore
from infergate.errors import ConfigError
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.sources.dcgm import DcgmPoller, DcgmSource, gpu_utilization
from tests.integration.test_dcgm_gpu_routing import SIM_EPP_GPU_CONFIG, dcgm_page

SIDECAR_PAGE = """\
# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-0b1c",device="nvidia0",modelName="NVIDIA A100-SXM4",Hostname="n1"} 37
DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-2d3e",device="nvidia1",modelName="NVIDIA A100-SXM4",Hostname="n1"} 64
# HELP DCGM_FI_DEV_GPU_UTIL_EXTRA a longer family sharing the name's start
DCGM_FI_DEV_GPU_UTIL_EXTRA{gpu="0"} 100
"""


def test_the_busiest_gpu_of_the_pod_as_a_fraction() -> None:
    page = dcgm_page({"pod-a": [12, 55], "pod-b": [99]})
    assert gpu_utilization(page, "pod-a") == pytest.approx(0.55)
    assert gpu_utilization(page, "pod-b") == pytest.approx(0.99)
    assert gpu_utilization(page, "pod-c") is None  # a node page without this pod's GPUs
    # samples without a pod label (a sidecar exporter) are the endpoint's
    assert gpu_utilization(SIDECAR_PAGE, "pod-a") == pytest.approx(0.64)
    assert gpu_utilization("# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n", "pod-a") is None
    nan = 'DCGM_FI_DEV_GPU_UTIL{gpu="0"} NaN\nDCGM_FI_DEV_GPU_UTIL{gpu="1"} 5\n'
    assert gpu_utilization(nan, "p") == pytest.approx(0.05)


def test_the_published_config_builds_its_source() -> None:
    cfg = parse_picker_config(SIM_EPP_GPU_CONFIG)
    build_scheduler(cfg)
    source = dcgm_source(cfg)
    assert source == DcgmSource(path="/metrics", port=9400, tls=None, use_node_address=False, interval=1.0)


@pytest.mark.parametrize(
    ("interval", "polls_every"),
    [(None, 0.05), (1.0, 1.0), (0.07, 0.05), (0.08, 0.1), (0.01, 0.05)],
)
def test_interval_rounds_to_a_multiple_of_the_scrape_tick(interval: float | None, polls_every: float) -> None:
    poller = DcgmPoller(
        Datastore(staleness=2.0),
        DcgmSource(interval=interval),
        base_interval=0.05,
        timeout=0.5,
        max_backoff=1.0,
    )
    assert poller.interval == pytest.approx(polls_every)
    assert poller.expiry == pytest.approx(2.0)
    slow = DcgmPoller(
        Datastore(staleness=2.0), DcgmSource(interval=5.0), base_interval=0.05, timeout=1, max_backoff=1
    )
    assert slow.expiry == pytest.approx(10.0)  # two missed polls, not one


WIRED = (
    "dataLayer:\n  sources:\n  - pluginRef: dcgm-source\n    extractors:\n    - pluginRef: dcgm-extractor\n"
)


def _check(text: str) -> None:
    cfg = parse_picker_config(text)
    build_scheduler(cfg)
    check_sections(cfg)


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        (WIRED, "", r"plugins\[dcgm-source\]: a dcgm-data-source that dataLayer.sources does not wire"),
        (
            "    extractors:\n    - pluginRef: dcgm-extractor\n",
            "",
            r"dataLayer.sources\[0\].extractors: a dcgm-data-source without a dcgm-extractor",
        ),
        (
            "    - pluginRef: dcgm-extractor\n",
            "    - pluginRef: core\n",
            r"extractors\[0\].pluginRef: 'core' cannot read a dcgm-data-source's page",
        ),
        ("    port: 9400\n", "    port: 9400\n    scheme: ftp\n", "scheme"),
        ("    port: 9400\n", "    port: 9400\n    caCertPath: /ca.pem\n", "caCertPath"),
        ('    interval: "1s"\n', '    interval: "soon"\n', "interval"),
        ("    port: 9400\n", "    port: 9400\n    path: metrics\n", "must start with /"),
        ("  name: dcgm-extractor\n", "  name: dcgm-extractor\n  parameters: {metric: X}\n", "metric"),
        (
            "- type: dcgm-extractor\n",
            "- type: dcgm-data-source\n  name: second\n- type: dcgm-extractor\n",
            "several dcgm-data-source plugins",
        ),
    ],
)
def test_a_dcgm_plugin_that_would_do_nothing_or_differ_is_refused(old: str, new: str, named: str) -> None:
    text = SIM_EPP_GPU_CONFIG.replace(
        "- type: max-score-picker\n",
        "- type: max-score-picker\n- type: core-metrics-extractor\n  name: core\n",
    )
    assert old in text
    with pytest.raises(ConfigError, match=named):
        _check(text.replace(old, new))


def test_an_unwired_extractor_is_refused() -> None:
    text = SIM_EPP_GPU_CONFIG.replace(
        "- type: dcgm-extractor\n  name: dcgm-extractor\n",
        "- type: dcgm-extractor\n  name: dcgm-extractor\n- type: dcgm-extractor\n  name: spare\n",
    )
    with pytest.raises(
        ConfigError, match=r"plugins\[spare\]: a dcgm-extractor that dataLayer.sources does not wire"
    ):
        _check(text)
