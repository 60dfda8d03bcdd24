"""Flow control as the gateway's settings configure it.

One place maps the ``flow_control`` settings group to a saturation detector and a
:class:`FlowControlConfig`, so the gateway, the endpoint picker and the digital twin run the same
flow control.
"""

from __future__ import annotations

from infergate.config.settings import Settings
from infergate.flowcontrol.concurrency import ConcurrencyDetector
from infergate.flowcontrol.config import FOLLOW_DEFAULT_TTL, FlowControlConfig
from infergate.flowcontrol.decode_guard import DecodeGuard
from infergate.flowcontrol.program_aware import ProgramAwareParams
from infergate.flowcontrol.saturation import SaturationDetector

__all__ = ["decode_guard_from_settings", "flow_control_from_settings"]


def flow_control_from_settings(
    settings: Settings,
    *,
    pool_name: str,
    connection_limit: int | None = None,
) -> tuple[SaturationDetector, FlowControlConfig]:
    """The detector and queue configuration for ``settings``.

    ``connection_limit`` is the data plane's upstream connections per endpoint when requests past it
    wait inside the gateway (the built-in proxy); ``None`` when they reach the model server's queue.
    """
    s = settings.flow_control
    detector: SaturationDetector
    if s.detector == "concurrency":
        detector = ConcurrencyDetector(
            mode=s.concurrency_mode,
            max_concurrency=s.max_concurrency,
            max_token_concurrency=s.max_token_concurrency,
        )
    else:
        detector = SaturationDetector(
            queue_threshold=s.queue_threshold,
            kv_threshold=s.kv_threshold,
            staleness=s.saturation_staleness,
            connection_limit=connection_limit,
            frontend_wait=s.frontend_wait,
        )
    config = FlowControlConfig(
        enabled=s.enabled,
        default_ttl=s.request_ttl,
        no_endpoint_ttl=(
            FOLLOW_DEFAULT_TTL if s.no_endpoint_request_ttl is None else (s.no_endpoint_request_ttl or None)
        ),
        band_max_requests=s.max_queued_requests,
        band_max_bytes=s.max_queued_bytes,
        max_requests=s.max_queued_requests_total,
        max_bytes=s.max_queued_bytes_total,
        pool_name=pool_name,
        headroom=s.headroom,
        usage_limit=s.usage_limit,
        usage_limit_ceiling=s.usage_limit_ceiling,
        usage_limit_min_ceiling=s.usage_limit_min_ceiling,
        usage_limit_domain=s.usage_limit_domain,
        priority_bands=s.priority_bands,
        ordering=s.ordering,
        fairness=s.fairness,
        program_aware=ProgramAwareParams(
            service_weight=s.program_service_weight,
            wait_weight=s.program_wait_weight,
            half_life=s.program_half_life,
            idle_ttl=s.program_idle_ttl,
            sweep_interval=s.program_sweep_interval,
        ),
    )
    return detector, config


def decode_guard_from_settings(settings: Settings) -> DecodeGuard | None:
    """The decode guard ``settings`` ask for; None when ``flow_control.tpot_hold`` is 0 or flow
    control is off (``--no-flow-control`` queues nothing, so nothing can be held).

    Its window is one TTFT SLO and its hold, unless set, half of one: at the default 1 s, reports
    of the last second and holds of up to 0.5 s (what the twin measured); a pool told a ten times
    larger SLO (replicas ten times slower) gets a guard ten times slower, with as many reports to
    judge by at its ten times lower rate.
    """
    s = settings.flow_control
    hold = s.ttft_slo / 2 if s.tpot_hold is None else s.tpot_hold
    if not s.enabled or hold <= 0:
        return None
    return DecodeGuard(tpot_slo=s.tpot_slo, ttft_slo=s.ttft_slo, hold=hold, window=s.ttft_slo)
