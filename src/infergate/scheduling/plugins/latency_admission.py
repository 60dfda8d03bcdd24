"""``latency-slo-admitter``: refuse a sheddable request no endpoint can serve within its latency SLO.

llm-d-router's admitter reads its latency predictor's verdicts; infergate's comes from the config's
``predicted-latency-scorer`` (the same model that places requests). A request of priority >= 0
always passes. A sheddable one (priority < 0) passes when at least one of the pool's fresh
endpoints

* is predicted to meet both bounds: TTFT within the request's ``x-llm-d-slo-ttft-ms`` (else the
  scorer's ``ttftSloSeconds``) and time per output token within ``x-llm-d-slo-tpot-ms`` (else
  ``tpotSloSeconds``); the prediction counts the prefix the endpoint is believed to hold;
* is idle (nothing in flight from this gateway), or
* is cold (KV cache under 2 % full, where the predictions have least to go on),

as the reference's ``hasValid``/``hasIdle``/``hasCold``; otherwise it is refused with 429
(``rejected-saturated``). A LoRA adapter's load time is not counted, so the verdict errs towards
admitting. An endpoint with stale metrics is no evidence either way and is skipped; with none
fresh the request passes (flow control then decides). The plugin takes no parameters.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from typing import ClassVar

from infergate.scheduling.plugins.latency import PredictedLatencyScorer
from infergate.scheduling.plugins.prefix import AVERAGE_CHARS_PER_TOKEN, block_hashes
from infergate.types import Endpoint, InferenceRequest

__all__ = ["COLD_KV_USAGE", "LatencySloAdmitter"]

COLD_KV_USAGE = 0.02
"""Below this KV-cache use an endpoint counts as cold (the reference's 2 %)."""


class LatencySloAdmitter:
    """Admits a sheddable request only where some endpoint can meet its latency SLO."""

    plugin_type: ClassVar[str] = "latency-slo-admitter"

    def __init__(self, *, name: str = "") -> None:
        self.name = name or "latency-slo-admitter"
        self._scorer: PredictedLatencyScorer | None = None

    def bind_plugins(self, plugins: Mapping[str, tuple[object, str]]) -> None:
        """Find the config's ``predicted-latency-scorer`` (exactly one)."""
        found = [inst for inst, _ in plugins.values() if isinstance(inst, PredictedLatencyScorer)]
        if len(found) != 1:
            raise ValueError(
                "needs the config's predicted-latency-scorer for its latency predictions "
                f"(found {len(found)}); declare one"
            )
        self._scorer = found[0]

    def admit(
        self, request: InferenceRequest, endpoints: Sequence[Endpoint], stale: Container[str], /
    ) -> str | None:
        scorer = self._scorer
        if request.priority >= 0 or scorer is None:
            return None
        fresh = [e for e in endpoints if e.key not in stale]
        if not fresh:
            return None
        if any(e.in_flight == 0 or e.metrics.kv_cache_usage < COLD_KV_USAGE for e in fresh):
            return None  # idle or cold: room the predictions may not see
        p = scorer.params
        ttft_bound = (request.ttft_slo or p.ttft_slo_seconds) * 1000.0
        tpot_bound = (request.tpot_slo or p.tpot_slo_seconds) * 1000.0
        block_tokens = fresh[0].metrics.block_size or p.block_size_tokens
        size = len(request.prompt.encode())
        hashes = (
            block_hashes(
                request.prompt,
                request.target_model,
                block_tokens * AVERAGE_CHARS_PER_TOKEN,
                p.max_prefix_blocks_to_match,
            )
            if size >= block_tokens * AVERAGE_CHARS_PER_TOKEN
            else []
        )
        matched = scorer.index.match(hashes) if hashes else {}
        prompt_tokens = max(1, size // AVERAGE_CHARS_PER_TOKEN)
        now = scorer.now()
        for e in fresh:
            pred = scorer.predict(
                e,
                prompt_tokens=prompt_tokens,
                matched_tokens=matched.get(e.key, 0) * block_tokens,
                adapter=None,
                now=now,
            )
            if pred.ttft_ms <= ttft_bound and pred.tpot_ms <= tpot_bound:
                return None
        return (
            f"{self.name}: no endpoint is predicted to meet the request's latency SLO "
            f"(TTFT {ttft_bound:.0f} ms, TPOT {tpot_bound:.0f} ms)"
        )
