"""Prefill/decode disaggregation (llm-d-router's P/D): role filters, deciders and the
``disagg-profile-handler`` that runs the decode profile, then, when its decider says so, the prefill
profile, and names the prefill endpoint to the decode side.

Per request:

1. the ``decode`` profile picks the decode endpoint ``d`` (its filters usually include
   ``decode-filter``: pods labelled ``llm-d.ai/role`` ``decode``, ``prefill-decode`` or ``both``,
   or not labelled);
2. the prefill decider looks at the prompt and at what ``d`` already holds of it:
   ``prefix-based-pd-decider`` disaggregates when the prompt has at least ``promptTokens`` tokens
   and the part of it ``d`` has not cached, ``promptTokens_total − cached_d``, is at least
   ``nonCachedTokens`` (0 turns it off); ``always-disagg-pd-decider`` always does;
3. if so the ``prefill`` profile picks the prefill endpoint ``p`` (``prefill-filter``: role
   ``prefill``, ``prefill-decode`` or ``both``; unlabelled pods excluded) and the request goes to
   ``d`` with header ``x-prefiller-host-port: <p address:port>``; ``d``'s sidecar
   (``infergate pd-sidecar``) runs the prefill on ``p`` and the decode locally. If no prefill
   endpoint is left, the request is served by ``d`` alone.

Prompt length and cached part come from the prefix scorer that ran in the decode profile: exact
tokens and held blocks from ``precise-prefix-cache-scorer``, or the approximate scorer's estimate
(UTF-8 bytes / 4, matched blocks × block size).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

from pydantic import Field

from infergate.errors import NoCapacityError
from infergate.scheduling.plugins.precise_prefix import PRECISE_MATCH
from infergate.scheduling.plugins.prefix import AVERAGE_CHARS_PER_TOKEN, PREFIX_MATCH
from infergate.scheduling.plugins.topology import PEER_ENDPOINT
from infergate.scheduling.sdk.framework import CycleState, Params
from infergate.types import DECODE_ROLES, ROLE_LABEL, Endpoint, InferenceRequest, SchedulingResult

__all__ = [
    "DECODE_ROLES",
    "PREFILLER_HEADER",
    "PREFILL_ROLES",
    "ROLE_LABEL",
    "AlwaysDisaggDecider",
    "DisaggParams",
    "DisaggProfileHandler",
    "PrefixBasedDecider",
    "PrefixDeciderParams",
    "RoleFilter",
    "cached_and_total_tokens",
]

S = TypeVar("S")

PREFILLER_HEADER = "x-prefiller-host-port"
PREFILL_ROLES = frozenset({"prefill", "encode-prefill", "prefill-decode", "both", "encode-prefill-decode"})


class RoleFilter:
    """``decode-filter`` / ``prefill-filter``: endpoints by their ``llm-d.ai/role`` label."""

    def __init__(self, roles: frozenset[str], *, unlabelled: bool) -> None:
        self._roles = roles
        self._unlabelled = unlabelled

    def filter(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Sequence[Endpoint]:
        out = []
        for e in candidates:
            role = e.meta.labels.get(ROLE_LABEL)
            if (role is None and self._unlabelled) or (role is not None and role in self._roles):
                out.append(e)
        return out


def cached_and_total_tokens(
    state: CycleState, endpoint: Endpoint, request: InferenceRequest
) -> tuple[int, int] | None:
    """``(cached tokens on endpoint, prompt tokens)`` from the prefix scorer that ran, else None."""
    precise = state.get(PRECISE_MATCH)
    if precise is not None:
        run = precise.runs.get(endpoint.key)
        if run is not None:
            return run * precise.block_size, precise.tokens
    approx = state.get(PREFIX_MATCH)
    if approx is not None:
        total = len(request.prompt.encode()) // AVERAGE_CHARS_PER_TOKEN
        cached = approx.matched.get(endpoint.key, 0) * approx.block_tokens
        return min(cached, total), total
    return None


class Decider(Protocol):
    def disaggregate(self, request: InferenceRequest, decode: Endpoint, state: CycleState, /) -> bool: ...


class PrefixDeciderParams(Params):
    non_cached_tokens: int = Field(default=0, ge=0)
    prompt_tokens: int = Field(default=0, ge=0)


class PrefixBasedDecider:
    """``prefix-based-pd-decider``: disaggregate long prompts the decode endpoint has not cached."""

    needs_prefix_info = True

    def __init__(self, params: PrefixDeciderParams | None = None) -> None:
        p = params or PrefixDeciderParams()
        self.non_cached_tokens = p.non_cached_tokens
        self.prompt_tokens = p.prompt_tokens
        self.missing_info = 0

    def disaggregate(self, request: InferenceRequest, decode: Endpoint, state: CycleState, /) -> bool:
        if self.non_cached_tokens == 0:
            return False
        found = cached_and_total_tokens(state, decode, request)
        if found is None:
            self.missing_info += 1
            return False
        cached, total = found
        if total < self.prompt_tokens:
            return False
        return total - cached >= self.non_cached_tokens


class AlwaysDisaggDecider:
    """``always-disagg-pd-decider``: every request is disaggregated (when a prefill pod exists)."""

    needs_prefix_info = False

    def disaggregate(self, request: InferenceRequest, decode: Endpoint, state: CycleState, /) -> bool:
        return True


class _ProfileNames(Params):
    decode: str = "decode"
    prefill: str = "prefill"


class _DeciderNames(Params):
    prefill: str | None = None


class DisaggParams(Params):
    profiles: _ProfileNames = _ProfileNames()
    deciders: _DeciderNames = _DeciderNames()


class ProfileLike(Protocol):
    name: str

    def run(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState
    ) -> SchedulingResult: ...


class DisaggProfileHandler:
    """``disagg-profile-handler``: decode profile always, prefill profile when the decider agrees.

    The decider plugin is bound by name after every plugin is built (``bind``); counters of the
    decisions are kept for the debug endpoint and benchmarks.
    """

    def __init__(self, params: DisaggParams | None = None, *, metrics: Any = None, name: str = "") -> None:
        p = params or DisaggParams()
        self.decode_profile = p.profiles.decode
        self.prefill_profile = p.profiles.prefill
        self.decider_name = p.deciders.prefill
        self.decider: Decider | None = None
        self.decisions = {"decode-only": 0, "prefill-decode": 0}
        self._metrics = metrics
        self._plugin = {
            "plugin_name": name or "disagg-profile-handler",
            "plugin_type": "disagg-profile-handler",
        }
        self._counted: dict[tuple[str, str], tuple[Any, Any]] = {}  # (model, decision) -> children

    def _decided(self, request: InferenceRequest, decision: str) -> None:
        """Count the decision, here and in llm-d's ``pd_decision`` / ``disagg_decision`` series."""
        self.decisions[decision] += 1
        if self._metrics is None:
            return
        key = (request.target_model or "unknown", decision)
        children = self._counted.get(key)
        if children is None:
            labels = {**self._plugin, "model_name": key[0], "decision_type": decision}
            children = self._counted[key] = (
                self._metrics.pd_decisions.labels(**labels),
                self._metrics.disagg_decisions.labels(**labels),
            )
        for child in children:
            child.inc()

    @property
    def default_profile(self) -> str:
        return self.decode_profile

    def choose(self, request: InferenceRequest, profiles: Mapping[str, S]) -> S:
        """The profile a single-profile cycle would run: decode (the scheduler calls :meth:`run`)."""
        return profiles[self.decode_profile]

    def bind(self, plugins: Mapping[str, object]) -> None:
        if self.decider_name is None:
            return
        found = plugins.get(self.decider_name)
        if found is None or not hasattr(found, "disaggregate"):
            raise ValueError(f"deciders.prefill: no decider plugin named {self.decider_name!r}")
        self.decider = found

    def profile_names(self) -> list[str]:
        return (
            [self.decode_profile, self.prefill_profile] if self.decider is not None else [self.decode_profile]
        )

    def run(
        self,
        request: InferenceRequest,
        candidates: Sequence[Endpoint],
        profiles: Mapping[str, ProfileLike],
        state: CycleState,
    ) -> SchedulingResult:
        decode = profiles[self.decode_profile].run(request, candidates, state)
        if self.decider is None or not self.decider.disaggregate(request, decode.primary, state):
            self._decided(request, "decode-only")
            return decode
        try:
            prefill_state = CycleState()  # the decode pick, for topology-aware prefill plugins
            prefill_state.put(PEER_ENDPOINT, decode.primary)
            prefill = profiles[self.prefill_profile].run(request, candidates, prefill_state)
        except NoCapacityError:
            self._decided(request, "decode-only")
            return decode
        self._decided(request, "prefill-decode")
        headers = {**decode.request_headers, PREFILLER_HEADER: prefill.primary.key}
        return SchedulingResult(
            profile=decode.profile,
            targets=decode.targets,
            scores=decode.scores,
            plugin_scores=decode.plugin_scores,
            request_headers=headers,
        )

    def debug_state(self) -> dict[str, dict[str, float]]:
        return {"decisions": {k: float(v) for k, v in self.decisions.items()}}
