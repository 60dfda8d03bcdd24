"""The program-aware fairness metrics llm-d-router exports when ``program-aware-fairness`` runs.

A *program* is a fairness id (``x-llm-d-inference-fairness-id``): one agentic workflow or tenant.
The reference registers these only with the policy configured; so does infergate
(:meth:`GatewayMetrics.programs`). ``program_id`` comes from clients, so it is capped like
``fairness_id`` (past the cap new ids are reported as ``other``), and a program forgotten after its
idle TTL takes its series with it.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry

from infergate.telemetry.series import Gauge, LabelCap

__all__ = ["ProgramMetrics"]


class ProgramMetrics:
    """Jain's fairness index over the programs' mean queue waits, each program's mean wait and its
    decayed attained service."""

    def __init__(self, registry: CollectorRegistry, cap: LabelCap) -> None:
        self._cap = cap
        self.fairness_index = Gauge(
            "llm_d_epp_program_aware_jains_fairness_index",
            "Jain's fairness index over the mean flow-control wait of each program; 1 is equal waits.",
            registry=registry,
        )
        self.avg_wait = Gauge(
            "llm_d_epp_program_aware_avg_wait_time_milliseconds",
            "Mean flow-control queue wait of each program's dispatched requests, in milliseconds.",
            ("program_id",),
            registry=registry,
        )
        self.attained_service = Gauge(
            "llm_d_epp_program_aware_attained_service_tokens",
            "Time-decayed attained service (input tokens + 2 x output tokens) of each program.",
            ("program_id",),
            registry=registry,
        )

    def set_wait(self, program: str, milliseconds: float) -> None:
        self.avg_wait.labels(program_id=self._cap(program)).set(milliseconds)

    def set_service(self, program: str, tokens: float) -> None:
        self.attained_service.labels(program_id=self._cap(program)).set(tokens)

    def forget(self, program: str) -> None:
        for gauge in (self.avg_wait, self.attained_service):
            with contextlib.suppress(KeyError):
                gauge.remove(program)
