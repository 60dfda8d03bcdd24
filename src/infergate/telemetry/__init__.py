"""The gateway's own Prometheus metrics, under the reference endpoint picker's names.

Dashboards built for the Gateway API Inference Extension read ``inference_objective_*``,
``inference_pool_*`` and ``inference_extension_*``; keeping the names, types, labels and buckets
identical lets them work unchanged. All metrics live on one :class:`GatewayMetrics` object with its
own registry, so tests and several gateways in one process never collide on the global registry.
Components accept ``metrics: GatewayMetrics | None`` and record nothing when it is ``None``.
This package imports nothing else from infergate: ``series`` holds the metric types (cheap
children, label caps, GIE/llm-d pairs), ``gateway`` the metrics themselves, ``sampled`` the
flow-control gauges computed at scrape time.

llm-d-router v0.10 renamed the family to ``llm_d_epp_*`` and emits the old names beside the new
ones; infergate does the same: every metric with an llm-d twin is a :class:`DualMetric` that
records into both series (the twin's label names follow llm-d where they were renamed, e.g.
``model_server_pod`` → ``model_server_endpoint``). Label values that come from clients are bounded
as llm-d bounds them: ``model_name`` and ``target_model_name`` share a cap of 1000 distinct values
and ``fairness_id`` has its own cap of 1000; past a cap new values are reported as ``other``.
"""

from __future__ import annotations

from infergate.telemetry.gateway import GatewayMetrics
from infergate.telemetry.sampled import BandUtilization, FlowControlState
from infergate.telemetry.series import LABEL_CAP, OTHER, DualMetric, LabelCap

__all__ = [
    "LABEL_CAP",
    "OTHER",
    "BandUtilization",
    "DualMetric",
    "FlowControlState",
    "GatewayMetrics",
    "LabelCap",
]
