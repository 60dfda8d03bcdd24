"""What a prefix hit or miss is worth beyond the request's own TTFT, for ``predicted-latency-scorer``.

The scorer's cost charges a miss once, as the prefill it adds to the request's own TTFT.
Corrections then apply to the candidates' costs, each for one situation where that charge is
wrong: a prefix too few servers hold for its share of the traffic must spread, so a candidate
lacking it is not charged (:func:`spread_short_prefix`); otherwise the streams a candidate
already runs pay for its extra prefill too, so a miss costs more than the request's own wait
(:func:`charge_misses`), and a copy of a prompt some candidate holds whole costs the requests
queued behind it (:func:`charge_copies`). Whatever the prefix, a candidate's prefill of this
request stalls the streams it is decoding (:func:`charge_stalls`). They are plain functions over
the scorer's per-candidate values, apart from the model itself in
:mod:`infergate.scheduling.plugins.latency`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from infergate.scheduling.plugins.latency_state import EndpointState
from infergate.scheduling.plugins.prefix import PrefixIndex
from infergate.types import Endpoint

__all__ = [
    "SHARED_PREFIX_FILL",
    "charge_copies",
    "charge_misses",
    "charge_stalls",
    "parts_crowded",
    "spread_short_prefix",
]

SHARED_PREFIX_FILL = 0.5
"""The shared prefixes crowd each other out once they take more than this share of one server's
KV cache: the rest holds the running requests' own blocks and the sessions' histories."""


def spread_short_prefix(
    costs: list[float],
    keys: Sequence[str],
    matched_tokens: Sequence[int],
    prompt_tokens: int,
    ms_per_token_over_slo: float,
    states: Mapping[str, EndpointState],
) -> None:
    """Take from each candidate's cost the prefill of the prefix blocks the best holder has and
    it lacks (see :class:`~infergate.scheduling.plugins.prefix_demand.PrefixDemand`).

    ``ms_per_token_over_slo`` is ``prefillMsPerToken`` over the request's TTFT bound in ms: the
    cost of one uncached token as the TTFT term counts it, before the endpoint's correction.
    """
    top = max(matched_tokens)
    top = prompt_tokens if prompt_tokens < top else top
    for i, (key, held) in enumerate(zip(keys, matched_tokens, strict=True)):
        if held < top:
            costs[i] -= (top - held) * ms_per_token_over_slo * states[key].ttft_factor


def parts_crowded(
    index: PrefixIndex,
    hashes: Sequence[int],
    matched: Mapping[str, int],
    candidates: Sequence[Endpoint],
    default_capacity: int,
) -> bool:
    """Whether a prompt of block ``hashes``, ``matched`` blocks of which ``index`` credits to
    each server, parts from a shared prefix while the shared prefixes crowd each other out.

    Copying a shared prefix onto a second server costs that server nothing but the prefill
    while all of them fit in one server's cache (twenty tenants' 4,000-token prompts on a
    replica of 26,000 blocks): the copy spreads a burst. Once they take more than
    :data:`SHARED_PREFIX_FILL` of the smallest candidate's cache (``num_gpu_blocks``, else
    ``default_capacity``), a copy evicts another tenant's prefix, whose next request misses in
    turn (two hundred such tenants). The index counts them from every credit, so gateway
    workers sharing credits agree.
    """
    m = max(matched.values())
    if not index.parted_at(hashes, m):
        return False
    cache = min(e.metrics.num_gpu_blocks or default_capacity for e in candidates)
    return index.shared_blocks > cache * SHARED_PREFIX_FILL


def charge_misses(
    costs: list[float],
    candidates: Sequence[Endpoint],
    prefill_ms: Sequence[float],
    states: Mapping[str, EndpointState],
    tpot_slo_ms: float,
    *,
    crowded: bool = False,
) -> None:
    """Add to each candidate's cost what its extra prefill does to the streams it runs.

    Chunked prefill runs in the same steps as the running streams' decodes, so the prefill a
    candidate would do beyond the best holder's (``prefill_ms`` is each candidate's predicted
    prefill for this request) delays each of its ``running`` streams by that long, which raises
    the mean TPOT of a stream of ``avg_answer`` tokens by ``extra / avg_answer``: ``running ×
    extra / avg_answer / tpotSlo`` in the cost's units. Without it a third of the turns of long
    conversations left the replica holding their history whenever another looked a few streams
    lighter, and every replica then prefilled more.

    Only while every best holder has no waiting queue: a request sent to a holder that already
    queues waits for room there, and the choice between that wait and prefilling elsewhere is
    the request's own TTFT, already priced. Charged regardless, bursts of one prefix and a few
    heavy agent sessions piled onto their holders (docs/benchmarks.md, "The prefill a miss
    costs the streams already running").

    Unless ``crowded``: the holders' blocks end where earlier prompts went on differently
    (:meth:`~infergate.scheduling.plugins.prefix.PrefixIndex.parted_at`), so they are a part
    many prompts start with (a tenant's system prompt), not one session's history, and such
    parts no longer fit in one server's cache together (:func:`parts_crowded`). A copy made
    to dodge the holder's queue then stays and evicts another: 200 tenants of 4,000 tokens on
    three replicas (tenants-overflow) had every replica holding a little of each, and the
    engines' hit rate fell from 74 % (``gie-default``) to 57 %. While they fit, the copy only
    spreads a burst, and charging it lost bursts of 20 tenants' prompts to round-robin.
    """
    least = min(prefill_ms)
    if not crowded:
        for endpoint, prefill in zip(candidates, prefill_ms, strict=True):
            if prefill == least and endpoint.metrics.waiting_queue_size > 0:
                return
    for i, (endpoint, prefill) in enumerate(zip(candidates, prefill_ms, strict=True)):
        extra = prefill - least
        if extra > 0.0:
            answer = states[endpoint.meta.key].avg_answer_tokens
            answer = answer if answer > 1.0 else 1.0
            costs[i] += endpoint.metrics.running_requests * extra / answer / tpot_slo_ms


def charge_copies(
    costs: list[float], candidates: Sequence[Endpoint], prefill_ms: Sequence[float], ttft_slo_ms: float
) -> None:
    """Charge each candidate the prefill it would do beyond the best holder's once more for
    itself and once for each request waiting there, at the TTFT price, when a candidate holds
    the whole prompt.

    Samples of one prompt sent together (several answers to one question; a reinforcement-learning
    rollout's group of 8 or 16) find the first sample's prompt on its server. A sample's own TTFT
    is then about the same everywhere: on the holder it waits for the backlog the first sample's
    prefill joined, elsewhere it prefills the prompt itself. So the in-flight term spread the
    group one per server and every server prefilled the prompt. The copy is the pool's loss:
    prefill time the requests behind it wait for too, about as many as wait there now (a queue
    that holds steady keeps its length). Only whole prompts: a copy of a shared prefix (a
    tenant's system prompt, with its own question) spreads a burst (:func:`charge_misses`).
    """
    least = min(prefill_ms)
    for i, (endpoint, prefill) in enumerate(zip(candidates, prefill_ms, strict=True)):
        extra = prefill - least
        if extra > 0.0:
            costs[i] += (1 + endpoint.metrics.waiting_queue_size) * extra / ttft_slo_ms


def charge_stalls(
    costs: list[float],
    candidates: Sequence[Endpoint],
    predictions: Sequence[tuple[float, float, int, float, float]],
    states: Mapping[str, EndpointState],
    tpot_slo_ms: float,
    weight: float,
) -> None:
    """Add to each candidate's cost a share (``weight``, ``stallWeight``) of what this request's
    prefill there does to the streams it is decoding (``predictions`` are the scorer's per
    candidate: TTFT, TPOT, uncached tokens, prefill and frontend wait).

    Chunked prefill shares each step with the running decodes, so ``prefill`` ms of this
    request's prompt delay each stream still decoding when it runs by about that long, over the
    ``avg_answer − 1`` gaps its TPOT averages: ``streams × left × prefill / gaps / tpotSlo`` in
    the cost's units, scaled by the candidate's predicted TPOT over its bound (a stream far
    below the bound has room to lose). The request's own cost rises by its prefill over the
    TTFT bound, a few hundredths per pick, while the candidates differ by tenths: bursts of
    arrivals went down one replica until its cost caught up, and that replica's streams stalled
    on their prefills (random-1-09 in docs/benchmarks.md, one of six paired points met; with
    the charge, six).

    The streams are the requests seen to start there (``in_flight_started``): one still queued
    waits before this prefill rather than behind it. ``left`` is the share of them still
    decoding when the prefill starts, after the predicted wait before it (the TTFT less the
    prefill): a stream's remaining time is spread evenly over its whole ``gaps × TPOT``. Short
    answers are over before a queued prefill reaches them; counting every started stream made
    prefill-only traffic (two-token answers) pay for stalls it does not suffer (classify: 7 of
    9 paired points met against 8), and every request in flight, 6. Answers that are not
    streamed are never seen to start and are not counted. The full charge moved tenants'
    sessions off the replicas holding their prompts (many-tenants, 4 of 9 against 8); a quarter
    keeps both.
    """
    for i, (endpoint, pred) in enumerate(zip(candidates, predictions, strict=True)):
        streams = endpoint.in_flight_started
        prefill = pred[3]
        if streams and prefill > 0.0:
            tpot = pred[1]
            gaps = states[endpoint.meta.key].avg_answer_tokens - 1.0
            span = gaps * tpot
            if span > 0.0:
                left = 1.0 - (pred[0] - prefill) / span
                if left > 0.0:
                    stall = streams * left * prefill / gaps / tpot_slo_ms
                    costs[i] += weight * stall * (tpot / tpot_slo_ms)
