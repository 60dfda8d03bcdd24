"""llm-d-router's latency-SLO plugins, on the predictions of infergate's ``predicted-latency-scorer``.

llm-d-router's read a predictor sidecar's verdicts; these read the config's scorer (the same model
that places requests), predicting each endpoint's TTFT and time per output token for the request,
counting the prefix the endpoint is believed to hold and, for a LoRA adapter it does not hold,
the time to load it (or to wait for a slot), as the scorer prices them.

``latency-slo-admitter`` (an admitter). A request of priority >= 0 always passes. A sheddable one
(priority < 0) passes when at least one of the pool's fresh endpoints

* is predicted to meet both bounds: TTFT within the request's ``x-llm-d-slo-ttft-ms`` (else the
  scorer's ``ttftSloSeconds``) and time per output token within ``x-llm-d-slo-tpot-ms`` (else
  ``tpotSloSeconds``);
* is idle (nothing in flight from this gateway), or
* is cold (KV cache under 2 % full, where the predictions have least to go on),

as the reference's ``hasValid``/``hasIdle``/``hasCold``; otherwise it is refused with 429
(``rejected-saturated``). An endpoint with stale metrics is no evidence either way and is skipped;
with none fresh the request passes (flow control then decides). No parameters.

``slo-headroom-tier-filter`` (a filter, parameter ``epsilonExploreNeg``, 0.01). For a request that
states its own bounds (``x-llm-d-slo-*-ms``), the candidates predicted to meet every stated bound
form the positive tier, the others the negative tier; when both exist it keeps the positive tier,
except with probability ``epsilonExploreNeg`` the negative one (so a recovering endpoint is tried
again now and then); when one exists it keeps it. A request without bounds passes everything, as
upstream's filter, whose headroom is then always negative, does.
"""

from __future__ import annotations

import math
import random
from collections.abc import Container, Mapping, Sequence
from typing import ClassVar

from pydantic import Field

from infergate.scheduling.plugins.latency import PredictedLatencyScorer
from infergate.scheduling.plugins.prefix import AVERAGE_CHARS_PER_TOKEN, block_hashes
from infergate.scheduling.sdk.framework import CycleState, Params
from infergate.types import Endpoint, InferenceRequest

__all__ = ["COLD_KV_USAGE", "LatencySloAdmitter", "SloHeadroomParams", "SloHeadroomTierFilter"]

COLD_KV_USAGE = 0.02
"""Below this KV-cache use an endpoint counts as cold (the reference's 2 %)."""


class _Predicting:
    """What both plugins share: the config's scorer, and its predictions against bounds."""

    def __init__(self) -> None:
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

    def _meets(
        self, request: InferenceRequest, endpoints: Sequence[Endpoint], ttft_ms: float, tpot_ms: float
    ) -> list[bool]:
        """Whether each endpoint is predicted to serve ``request`` within both bounds."""
        scorer = self._scorer
        assert scorer is not None, "bind_plugins() first"
        p = scorer.params
        block_tokens = endpoints[0].metrics.block_size or p.block_size_tokens
        block_chars = block_tokens * AVERAGE_CHARS_PER_TOKEN
        size = len(request.prompt.encode())
        hashes = (
            block_hashes(request.prompt, request.target_model, block_chars, p.max_prefix_blocks_to_match)
            if size >= block_chars
            else []
        )
        matched = scorer.index.match(hashes) if hashes else {}
        prompt_tokens = max(1, size // AVERAGE_CHARS_PER_TOKEN)
        now = scorer.now()
        adapter, slot_pressure = scorer.adapter_for(request, endpoints)
        out = []
        for e in endpoints:
            held = matched.get(e.key, 0) * block_tokens
            pred = scorer.predict(
                e,
                prompt_tokens=prompt_tokens,
                matched_tokens=held,
                adapter=adapter,
                now=now,
                slot_pressure=slot_pressure,
            )
            out.append(pred.ttft_ms <= ttft_ms and pred.tpot_ms <= tpot_ms)
        return out


class LatencySloAdmitter(_Predicting):
    """``latency-slo-admitter``: admits a sheddable request only where some endpoint can meet its
    latency SLO, or is idle or cold (see the module docstring)."""

    plugin_type: ClassVar[str] = "latency-slo-admitter"

    def __init__(self, *, name: str = "") -> None:
        super().__init__()
        self.name = name or "latency-slo-admitter"

    def admit(
        self, request: InferenceRequest, endpoints: Sequence[Endpoint], stale: Container[str], /
    ) -> str | None:
        if request.priority >= 0 or self._scorer is None:
            return None
        fresh = [e for e in endpoints if e.key not in stale]
        if not fresh:
            return None
        if any(e.in_flight == 0 or e.metrics.kv_cache_usage < COLD_KV_USAGE for e in fresh):
            return None  # idle or cold: room the predictions may not see
        p = self._scorer.params
        ttft_bound = (request.ttft_slo or p.ttft_slo_seconds) * 1000.0
        tpot_bound = (request.tpot_slo or p.tpot_slo_seconds) * 1000.0
        if any(self._meets(request, fresh, ttft_bound, tpot_bound)):
            return None
        return (
            f"{self.name}: no endpoint is predicted to meet the request's latency SLO "
            f"(TTFT {ttft_bound:.0f} ms, TPOT {tpot_bound:.0f} ms)"
        )


class SloHeadroomParams(Params):
    epsilon_explore_neg: float = Field(default=0.01, ge=0.0, le=1.0)


class SloHeadroomTierFilter(_Predicting):
    """``slo-headroom-tier-filter``: for a request with its own bounds, the candidates predicted to
    meet them, but the others with probability ``epsilonExploreNeg`` (see the module docstring)."""

    def __init__(self, params: SloHeadroomParams | None = None, *, rng: random.Random) -> None:
        super().__init__()
        self._epsilon = (params or SloHeadroomParams()).epsilon_explore_neg
        self._rng = rng

    def filter(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Sequence[Endpoint]:
        if (request.ttft_slo is None and request.tpot_slo is None) or not candidates:
            return candidates
        ttft = request.ttft_slo * 1000.0 if request.ttft_slo is not None else math.inf
        tpot = request.tpot_slo * 1000.0 if request.tpot_slo is not None else math.inf
        meets = self._meets(request, candidates, ttft, tpot)
        positive = [e for e, ok in zip(candidates, meets, strict=True) if ok]
        if not positive or len(positive) == len(candidates):
            return candidates
        if self._rng.random() < self._epsilon:
            return [e for e, ok in zip(candidates, meets, strict=True) if not ok]
        return positive
