"""What ``predicted-latency-scorer`` is configured with and what it knows about each endpoint.

The model and its online corrections are in :mod:`infergate.scheduling.plugins.latency`; this
module holds the plain data they work on (and :func:`unreported`, one count read off an endpoint),
so the scorer's module is the model's logic alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import Field

from infergate.scheduling.sdk.framework import Params
from infergate.types import DECODE_ROLES, ROLE_LABEL, Endpoint

__all__ = [
    "CORRECTION_MEMORY_SECONDS",
    "SLOT_WAIT_SECONDS",
    "TPOT_ALPHA",
    "TPOT_BAND",
    "TPOT_RATIO_CAP",
    "TTFT_ALPHA",
    "EndpointState",
    "LatencyParams",
    "learning_weight",
    "slot_wait_ms",
    "unreported",
]


class LatencyParams(Params):
    """Parameters of ``predicted-latency-scorer``; defaults describe Llama-3.1-8B on one H100 (vLLM V1).

    The cost constants come from vLLM's step-time model (``prefillMsPerToken`` is the compute-bound
    cost of one prompt token in a chunked-prefill step, decode constants the weight-bandwidth-bound
    step); the online correction adapts them to the pool's real speed.
    """

    ttft_slo_seconds: float = Field(default=1.0, gt=0)
    tpot_slo_seconds: float = Field(default=0.05, gt=0)
    prefill_ms_per_token: float = Field(default=0.025, gt=0)
    decode_step_ms: float = Field(default=7.0, ge=0)
    decode_ms_per_seq: float = Field(default=0.026, ge=0)
    decode_ms_per_kv_token: float = Field(default=5.46e-5, ge=0)
    overhead_ms: float = Field(default=10.0, ge=0)
    frontend_ms_per_request: float = Field(default=10.0, ge=0)
    frontend_ms_per_token: float = Field(default=0.064, ge=0)
    lora_load_ms: float = Field(default=25.0, ge=0)
    base_models: list[str] = Field(default_factory=list)
    block_size_tokens: int = Field(default=16, gt=0)
    max_prefix_blocks_to_match: int = Field(default=2048, gt=0)
    lru_capacity_per_server: int = Field(default=31250, gt=0)
    rate_window_seconds: float = Field(default=5.0, gt=0)
    online_correction: bool = True
    ttft_correction_limit: float = Field(default=1.5, ge=1.0)
    tpot_correction_limit: float = Field(default=2.0, ge=1.0)
    stall_weight: float = Field(default=0.25, ge=0)


@dataclass(slots=True)
class EndpointState:
    """What the scorer learnt about one endpoint from its own decisions and the observed latencies."""

    backlog_ms: float = 0.0
    backlog_at: float = 0.0
    frontend_ms: float = 0.0  # per-request API-frontend work sent and not yet worked off
    frontend_at: float = 0.0
    frontend_busy: float = 0.0  # share of the frontend's time spent streaming tokens
    metrics_at: float = -1.0  # the last scrape (``updated_at``) seen, which sets a floor under frontend_ms
    unreported: int = 0  # requests in flight there beyond what that scrape showed running or waiting
    prefill_rate: float = 0.0  # ms of prefill work sent per ms of wall time (EWMA)
    rate_at: float = 0.0
    avg_prefill_ms: float = 0.0
    avg_answer_tokens: float = 128.0
    sent: int = 0
    ttft_factor: float = 1.0
    observed: int = 0
    ttft_at: float = 0.0  # when the last TTFT learnt was observed (the observer's clock)
    tpot_factor: float = 1.0  # observed over predicted TPOT (EWMA): the endpoint's decode speed
    tpot_observed: int = 0
    last_predicted_ms: float = 0.0  # the TTFT predicted (uncorrected) for the last observed request
    last_observed_ms: float = 0.0
    slot_waits: dict[str, float] = field(default_factory=dict)  # adapter -> waiting for a slot since
    slots_running: frozenset[str] = frozenset()  # the adapters running there when one was last seen waiting
    slots_changed_at: float = 0.0  # when that set was first seen (a slot changed hands)

    def drained(self, now: float) -> float:
        return max(0.0, self.backlog_ms - (now - self.backlog_at) * 1000.0)

    def frontend_drained(self, now: float) -> float:
        """Request work left in the API frontend: it drains at the share of the frontend's time
        that streaming the running requests' tokens leaves it (``1 - frontend_busy``)."""
        return max(0.0, self.frontend_ms - (now - self.frontend_at) * 1000.0 * (1.0 - self.frontend_busy))


SLOT_WAIT_SECONDS = 3.0
"""How long an adapter waits on an endpoint for a slot before a request for it is priced there
as the whole wait for a slot (see :func:`slot_wait_ms`)."""


def slot_wait_ms(
    st: EndpointState, adapter: str, starving: bool, swap_ms: float, now: float, running: frozenset[str]
) -> float:
    """The price of joining ``adapter``'s queue on an endpoint whose slots all run other adapters
    (``starving``): vLLM starts none of its requests there until one of those adapters has no
    request left, which their steady traffic may never allow. Priced free, every request for it
    followed the first into that queue and one adapter starved for seconds (lora-zipf); priced
    as a slot's wait (``swap_ms``) from the start, adapters that take turns on too few slots
    were spread over queues everywhere and swapped more (lora-uniform). So the price grows with
    how long this scorer has seen it waiting there while the same adapters held the slots
    (``running``), reaching ``swap_ms`` after :data:`SLOT_WAIT_SECONDS`; it starts again once the
    adapter runs or leaves the queue, and once a slot changes hands: a queue whose slots turn over
    is moving (adapters taking turns), and spreading its adapters only made more queues (timed
    from the adapter's first wait alone, lora-uniform under a 2 s TTFT bound met it at 12 of 24
    paired points against 16 unpriced; timed this way, 16)."""
    if not starving:
        if st.slot_waits:
            st.slot_waits.pop(adapter, None)
        return 0.0
    if running != st.slots_running:
        st.slots_running = running
        st.slots_changed_at = now
    since = st.slot_waits.setdefault(adapter, now)
    since = since if since > st.slots_changed_at else st.slots_changed_at
    share = (now - since) / SLOT_WAIT_SECONDS
    return swap_ms * (share if share < 1.0 else 1.0)


TTFT_ALPHA = 0.05
"""Weight of one observed TTFT ratio in an endpoint's factor once it has seen 20 (before: their
running mean), until :func:`learning_weight` bounds it by time."""

CORRECTION_MEMORY_SECONDS = 10.0
"""How far back, roughly, an online correction remembers once it has learnt from enough answers.

A weight per answer remembers a number of answers, and at high rates that is a moment: at ~40
answers a second a TTFT factor moving 5 % per answer forgot everything older than half a second,
so it followed each replica's passing queue, which the model already prices from the live state,
and priced it again. In a pool of twelve equal replicas at ~500 QPS that turned the picks into a
chase of the factors: p90 TTFT about 1 s against round-robin's 0.4 s at 530 QPS, in the twin
(``docs/benchmarks.md``, "Corrections that remember seconds, not answers"). Bounded by time, a
factor keeps what a replica is (a slower GPU, a pool unlike the defaults) and lets what happens
to it pass."""

TPOT_ALPHA = 0.02
"""Weight of one observed TPOT ratio in an endpoint's factor (:meth:`.latency_tpot.RelativeTpot.learn`)."""

TPOT_BAND = 1.25
"""Relative TPOT factors within ``[1 / band, band]`` scale nothing, and beyond it only the excess
counts: between equal replicas the model's own error spreads them by up to about a seventh (the
twin's sharegpt-like), and acting on that spread fed back into their loads."""

TPOT_RATIO_CAP = 10.0
"""One observed TPOT counts at most this many times above or below its prediction (a stream that
stalled for reasons of its own must not swing an endpoint's factor alone)."""


def learning_weight(alpha: float, learnt: int, gap_seconds: float) -> float:
    """The weight of one more observation in a correction factor that moves ``alpha`` per answer,
    ``learnt`` answers in (this one included), ``gap_seconds`` after the last one it learnt.

    ``alpha`` itself until the factor has learnt ``5 / alpha`` answers (by then its starting value
    weighs under 1 %: a new endpoint is learnt as fast as before), then at most the share of
    :data:`CORRECTION_MEMORY_SECONDS` that passed since the last answer, so the factor averages
    the last seconds at any rate rather than the last answers. At ``1 / (alpha × memory)`` answers
    a second or fewer (2 for the TTFT factor) nothing changes."""
    if learnt * alpha <= 5.0:
        return alpha
    share = gap_seconds / CORRECTION_MEMORY_SECONDS
    if share >= alpha:
        return alpha
    return share if share > 0.0 else 0.0


def unreported(endpoint: Endpoint) -> int:
    """The requests this gateway has in flight on ``endpoint`` beyond those its last scrape shows
    running or waiting: they are still in its API frontend, which vLLM's metrics do not count.
    0 for a P/D decoder, whose requests prefill on another server before it sees them."""
    if endpoint.meta.labels.get(ROLE_LABEL) in DECODE_ROLES:
        return 0
    m = endpoint.metrics
    held = endpoint.in_flight - m.running_requests - m.waiting_queue_size
    return held if held > 0 else 0
