"""deploy/grafana and deploy/prometheus against what the gateway really exports.

Every metric a dashboard query reads must be a series GatewayMetrics renders (with the suffix its
type gives it), and every label a query filters or groups by must be one of that metric's labels
(or one Prometheus adds). A renamed metric or label therefore fails here, not on an empty panel.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from infergate.telemetry import GatewayMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "infergate-dashboard.json"
PROMETHEUS_LABELS = {"le", "job", "instance", "quantile"}
PROMQL_WORDS = {
    "sum", "by", "rate", "histogram_quantile", "without", "avg", "max", "min", "count", "label_values",
    "irate", "increase", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "topk",
}  # fmt: skip


def _exported() -> dict[str, set[str]]:
    """Series name → label names, for every series the gateway can render."""
    out: dict[str, set[str]] = {}
    for family in GatewayMetrics(CollectorRegistry()).registry.collect():
        labels: set[str] = set()
        collector_names = [family.name]
        if family.type == "counter":
            collector_names = [family.name + "_total"]
        elif family.type == "histogram":
            collector_names = [family.name + s for s in ("_bucket", "_sum", "_count")]
        for sample in family.samples:
            labels |= set(sample.labels)
        for name in collector_names:
            out[name] = labels
    return out


def _label_names(registry_names: dict[str, set[str]]) -> dict[str, set[str]]:
    """Label names from the metric objects themselves (families with no child yet show none)."""
    m = GatewayMetrics(CollectorRegistry())
    by_name: dict[str, set[str]] = {}
    for collector in list(m.registry._collector_to_names):
        names = m.registry._collector_to_names[collector]
        labels = set(getattr(collector, "_labelnames", ()))
        for name in names:
            by_name[name] = labels
    return {name: by_name.get(name, set()) | labels for name, labels in registry_names.items()}


def _queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            out.append((var["name"], var["query"]["query"]))
    return out


def test_dashboard_queries_read_exported_metrics_and_labels() -> None:
    exported = _label_names(_exported())
    queries = _queries()
    assert len(queries) >= 20
    read: set[str] = set()
    for title, expr in queries:
        bare = re.sub(r'"[^"]*"', '""', expr)  # label values and strings are not names
        bare = re.sub(r"\[[^\]]*\]", "", bare)  # range selectors
        metrics = [
            n for n in re.findall(r"\b([a-z_][a-z0-9_]*)\b\s*(?=[{(\[),]|$|\s)", bare)
            if n not in PROMQL_WORDS and (n.startswith(("inference_", "infergate_", "llm_d_")))
        ]  # fmt: skip
        assert metrics, f"{title}: no gateway metric in {expr}"
        for name in metrics:
            assert name in exported, f"{title}: {name} is not exported by the gateway"
            read.add(name)
        allowed = set().union(*(exported[n] for n in metrics)) | PROMETHEUS_LABELS
        used = set(re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr))
        grouped = {label.strip() for group in used for label in group.split(",") if label.strip()}
        filtered = set(re.findall(r"([a-z_]+)\s*=~?\s*\"", expr))
        assert grouped | filtered <= allowed, f"{title}: unknown labels {(grouped | filtered) - allowed}"
    # the four areas operators look at: pool, objectives (TTFT, TPOT), flow control, scheduler
    for family in (
        "inference_pool_ready_pods",
        "llm_d_epp_request_ttft_seconds_bucket",
        "llm_d_epp_request_streaming_tpot_seconds_bucket",
        "inference_extension_flow_control_queue_size",
        "inference_extension_scheduler_e2e_duration_seconds_bucket",
    ):
        assert family in read, family
    # latency per objective: an objective that is not a model shows up as its priority
    for title, expr in queries:
        if "ttft" in expr or "tpot" in expr:
            assert re.search(r"by \(le, model_name, priority\)", expr), title


def test_dashboard_layout_is_well_formed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"])
    cells = {(x, y) for p in dash["panels"] for g in [p["gridPos"]]
             for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}  # fmt: skip
    assert len(cells) == sum(p["gridPos"]["w"] * p["gridPos"]["h"] for p in dash["panels"]), "panels overlap"


def test_scrape_examples_point_at_the_admin_port_with_a_token() -> None:
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    job = prom["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics" and job["authorization"]["type"] == "Bearer"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:9090"]
    monitor = yaml.safe_load((ROOT / "deploy" / "prometheus" / "servicemonitor.yaml").read_text())
    assert monitor["kind"] == "ServiceMonitor"
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == "http-metrics" and endpoint["path"] == "/metrics"
    service = (ROOT / "deploy" / "charts" / "infergate" / "templates" / "epp-service.yaml").read_text()
    assert "name: http-metrics" in service
    secret = endpoint["authorization"]["credentials"]["name"]
    assert f"name: {secret}" in (ROOT / "deploy" / "examples" / "metrics-auth.yaml").read_text()
