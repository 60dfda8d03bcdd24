"""`infergate up` runs a P/D pool from manifests (deploy/examples/pd): a prefill Deployment of
simulators and a decode Deployment whose pods run `infergate pd-sidecar` in front of the simulator.
A long prompt is prefilled on the prefill pod and decoded on the decode pod; a short one is not
disaggregated."""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from pathlib import Path

from tests.support import free_port, start_infergate, wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "examples" / "pd"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def post(port: int, prompt: str) -> dict[str, object]:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 4}
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200
        out: dict[str, object] = json.loads(r.read())
        return out


def prompt_tokens(port: int, source: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("vllm:prompt_tokens_by_source_total{") and f'source="{source}"' in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def pool_ready(admin: int) -> bool:
    """Both pods are candidates (healthy, fresh metrics) with their model list known."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/debug/endpoints", timeout=60) as r:
        eps = json.loads(r.read())["endpoints"]
    return len(eps) == 2 and all(e["candidate"] and MODEL in e["models"] for e in eps)


# Under load a scrape can lag for seconds: metrics older than the default 2 s staleness (or 0.2 s
# for flow control's saturation check) take a pod out of the candidates, and a long prompt is then
# served by the decode pod alone. What this test checks does not depend on freshness, so the bounds
# are set far above any stall; losing a pod to staleness is covered by the scraper's own tests.
FRESH_ENOUGH = {"INFERGATE_SCRAPE__STALENESS": "600", "INFERGATE_FLOW_CONTROL__SATURATION_STALENESS": "600"}


def test_up_runs_a_pd_pool_from_manifests(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    args = ["up", str(EXAMPLE), "--config", str(EXAMPLE / "epp-config.yaml"), "--quiet"]
    args += ["--port", str(port), "--admin-port", str(admin), "--metrics-auth", "disabled"]
    args += ["--time-scale", "0.05"]
    child = start_infergate(
        args, tmp_path, health_url=f"http://127.0.0.1:{admin}/readyz", timeout=90, env=FRESH_ENOUGH
    )
    try:
        # the banner lists each pod's URL (printed once ready); the decode pod's is its sidecar,
        # which relays /metrics
        pattern = r"(llama-(?:prefill|decode)-\d+) http://127\.0\.0\.1:(\d+)"
        wait_for(lambda: len(set(re.findall(pattern, child.output()))) == 2, what="the banner's pod URLs")
        started = dict(re.findall(pattern, child.output()))
        assert set(started) == {"llama-prefill-0", "llama-decode-0"}, child.output()
        prefill, decode = int(started["llama-prefill-0"]), int(started["llama-decode-0"])
        wait_for(lambda: pool_ready(admin), what="both pods candidates with their model list")
        post(port, "hello there")
        assert prompt_tokens(prefill, "local_compute") == 0
        assert prompt_tokens(decode, "local_compute") > 0
        # a long new prompt is prefilled on the prefill pod, then decoded on the decode pod
        post(port, "report: " + "a long report " * 600)
        assert prompt_tokens(prefill, "local_compute") > 1024
        wait_for(
            lambda: prompt_tokens(decode, "external_kv_transfer") > 1024,
            what="the decode pod's pulled prompt tokens",
        )
    finally:
        code = child.stop(signal.SIGINT, timeout=30)
    assert code == 0, child.output()
