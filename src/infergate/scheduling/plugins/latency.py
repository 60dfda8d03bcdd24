"""The predicted-latency scorer: send each request where its own TTFT and TPOT will be lowest.

The other scorers each look at one signal (queue length, KV use, a prefix match as a fraction, an
adapter's presence) and a weighted sum decides between them. That sum is only right for the
workloads its weights were tuned on: 8k unique tokens behind a 1k shared prefix still count as a
"good prefix match", and a hot adapter is packed where it is loaded however deep the queue gets.
This scorer instead predicts, for every candidate, what the request will experience there, in
seconds, from one small model of a vLLM server, and prefers the candidate where the request is
predicted to meet its SLO with the most room. All signals become time, so they trade against each
other at their real exchange rate: a prefix hit saves exactly its prefill time, a queue costs
exactly the prefill work ahead.

The model (all times in milliseconds; ``docs/scheduling.md`` has the derivation):

* ``backlog(e)`` — prefill work waiting on ``e``: what this gateway sent there (each request adds
  its uncached prompt tokens × ``prefillMsPerToken``), drained at one millisecond per millisecond
  of wall time (a fluid queue), but never less than the scraped waiting queue times the average
  prefill the gateway sends to ``e``. It reacts at once to the gateway's own decisions and is
  corrected by every scrape.
* ``uncached(e)`` — prompt tokens not expected in ``e``'s prefix cache: the prompt's blocks the
  gateway sent to ``e`` before (an approximate index, as ``prefix-cache-scorer``), in tokens.
* ``adapter(e)`` — 0 when the target adapter is running or waiting on ``e``; ``loraLoadMs`` with a
  free slot, plus, for an adapter already served elsewhere, how short the pool is of slots
  (``_slot_pressure``) × the swap time below; with every slot taken, the time for a running
  adapter's requests to finish (the average answer length sent to ``e`` × the predicted TPOT);
  plus, while it waits on ``e`` for a slot other adapters hold, up to that wait again, growing
  with how long it has waited there while the same adapters held the slots (``slot_wait_ms``).
* ``frontend(e)`` — the wait in ``e``'s API frontend (the one process that parses requests and
  streams every token out, tokens first): each request adds ``frontendMsPerRequest`` of work, which
  drains at the share of the process's time that streaming leaves, ``1 − busy`` with ``busy =
  frontendMsPerToken × running / (TPOT × t(e))``, ``t(e)`` the endpoint's learnt decode speed
  (observed over predicted TPOT, 1 until observed); the wait is that work ``/ (1 − busy)``. Short
  chat at high rates saturates this stage before the GPU, and a batch with long answers streams more.
  Each new scrape sets a floor under that work: the requests the gateway has in flight there
  beyond what the server reports running and waiting are still in its frontend (vLLM counts a
  request only once the frontend has handed it on), and as many as the scrape before showed too
  are a queue rather than a burst in transit: ``frontendMsPerRequest`` each. Near saturation the
  drain rate ``1 − busy`` is too sensitive to the model's error to track the queue alone: on fast
  GPUs streaming long answers it saw a tenth of the queue the frontends held.
* ``TTFT(e) = overheadMs + frontend(e) + backlog(e) + uncached(e) × prefillMsPerToken + adapter(e)``
* ``TPOT(e) = g(e) × (decodeStepMs + decodeMsPerSeq × n + decodeMsPerKvToken × kv) / (1 − ρ(e))`` with
  ``n`` the sequences ``e`` runs (scraped running + waiting, or the gateway's in-flight count if
  higher), ``kv`` the KV tokens in use, and ``ρ(e)`` the share of ``e``'s time going to prefill
  (the recent rate of prefill work sent to ``e``, capped at 0.9): chunked prefill stretches every
  decode step of the streams already running.
* ``cost(e) = TTFT(e) / ttftSlo + TPOT(e) / tpotSlo`` and ``score(e) = min_c cost(c) / cost(e)``,
  with the request's own bounds where it sends them (``x-llm-d-slo-ttft-ms``/``-tpot-ms``: a
  request that needs its first token soon weighs a queue more than one that needs fast tokens);
  for a prefix too few servers hold for its share of the traffic (:class:`PrefixDemand`), a
  candidate lacking it is not charged the blocks the best holder has, so a hot prefix spreads;
  otherwise, while the best holders have no waiting queue (or whatever their queues, for a shared
  prefix when the shared prefixes do not fit in one server's cache together), a candidate is
  also charged what the prefill it would do beyond theirs costs the streams it runs, and where
  one holds the whole prompt, that prefill again for itself and each request waiting there
  (:mod:`.latency_prefix`); and whatever the prefix, a share (``stallWeight``) of what its
  prefill there does to the streams still decoding when it runs.

Every prediction is corrected online: the data plane reports each request's observed TTFT, and a
per-endpoint factor (the exponentially weighted ratio of observed to predicted TTFT, clamped to
``[1 / ttftCorrectionLimit, ttftCorrectionLimit]``, default 1.5) scales that endpoint's TTFT
prediction, so a pool somewhat slower or faster than the defaults describe is learnt within a few
dozen requests. The limit is narrow on purpose: an additive wait the model underestimates on one
replica (its API frontend streaming a large batch) must not become a factor of 4 on every long
prompt considered there, which sorted long prompts away from that replica and piled decode-heavy
requests onto it (``docs/benchmarks.md``, prefill-decode-mix). For GPUs far from the defaults, set
the cost parameters (``prefillMsPerToken``, ``decodeStepMs``) or raise the limit.

TPOT predictions are corrected relative to the pool: each endpoint's observed over predicted TPOT,
against the fastest endpoint's, scales the TPOT the cost uses (:mod:`.latency_tpot`).

An answer that was not streamed teaches one of the two corrections from its end-to-end time and
token count (:meth:`PredictedLatencyScorer.observe_answer`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import field
from itertools import islice

from infergate.scheduling.plugins.adapter_slots import AdapterDemand
from infergate.scheduling.plugins.latency_learning import OnlineCorrections
from infergate.scheduling.plugins.latency_prefix import (
    charge_copies,
    charge_misses,
    charge_stalls,
    parts_crowded,
    spread_short_prefix,
)
from infergate.scheduling.plugins.latency_records import (
    AccountingRecord,
    LatencyRecord,
    TpotRecord,
    TtftRecord,
)
from infergate.scheduling.plugins.latency_state import (
    TPOT_BAND,
    EndpointState,
    LatencyParams,
    slot_wait_ms,
    unreported,
)
from infergate.scheduling.plugins.latency_tpot import RelativeTpot
from infergate.scheduling.plugins.prefix import AVERAGE_CHARS_PER_TOKEN, PrefixIndex, block_hashes
from infergate.scheduling.plugins.prefix_demand import PrefixDemand
from infergate.scheduling.sdk.framework import CycleState, StateKey, candidate_keys
from infergate.scheduling.sdk.scores import CandidateScores
from infergate.types import Clock, Endpoint, InferenceRequest, MonotonicClock, SchedulingResult, typed_frozen

__all__ = [
    "AccountingRecord",
    "LatencyParams",
    "LatencyPrediction",
    "LatencyRecord",
    "PredictedLatencyScorer",
    "TpotRecord",
    "TtftRecord",
]


@typed_frozen
class LatencyPrediction:
    """One candidate's prediction, as :meth:`PredictedLatencyScorer.predict` returns it (the
    scoring loop keeps the same five values as a tuple per candidate for its PostPick hook)."""

    ttft_ms: float
    tpot_ms: float
    uncached_tokens: int
    prefill_ms: float
    frontend_ms: float = 0.0  # the wait predicted in the server's API frontend (part of ttft_ms)


_Prediction = tuple[float, float, int, float, float]
"""A :class:`LatencyPrediction`'s fields in order, as the scoring loop keeps them per candidate."""


@typed_frozen
class _Cycle:
    hashes: list[int]
    prompt_tokens: int
    predictions: dict[str, _Prediction] = field(default_factory=dict)


_CYCLE: StateKey[_Cycle] = StateKey("predicted-latency")


class PredictedLatencyScorer(OnlineCorrections):
    """``predicted-latency-scorer``: the candidate where this request's predicted TTFT and TPOT are best.

    Inputs: each candidate's scraped ``waiting_queue_size``, ``running_requests``,
    ``kv_cache_usage``, ``num_gpu_blocks``/``block_size``, adapters and ``max_active_adapters``; the
    gateway's in-flight count; the request's prompt and ``max_tokens``; the scorer's own record of
    what it sent where. Formula and parameters: module docstring and :class:`LatencyParams`.
    """

    def __init__(
        self, params: LatencyParams | None = None, *, clock: Clock | None = None, max_pending: int = 100_000
    ) -> None:
        """``max_pending``: picks awaiting their observed TTFT; beyond it the older half is forgotten
        (requests whose answer is never reported, e.g. a caller that does not report them)."""
        self._p = params if params is not None else LatencyParams()
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._base = frozenset(self._p.base_models)
        self._state: dict[str, EndpointState] = {}
        self.index = PrefixIndex()
        self._pending: dict[str, tuple[str, float]] = {}  # request id → (endpoint, predicted TTFT ms)
        self._decoding: dict[str, tuple[str, float]] = {}  # request id → (endpoint, predicted TPOT ms)
        self._tpot = RelativeTpot(self._state, self._p.tpot_correction_limit)
        self._max_pending = max_pending
        self._avg_prefill_ms = 0.0  # over every request sent, any endpoint
        self._export: Callable[[AccountingRecord], None] | None = None
        self._adapters = AdapterDemand()  # the adapters requested recently: the slot shortage
        self._prefixes = PrefixDemand()  # the prompt prefixes requested recently: their shares

    @property
    def params(self) -> LatencyParams:
        return self._p

    def now(self) -> float:
        return self._clock.now()

    # ------------------------------------------------------------------ model
    def _state_of(self, key: str) -> EndpointState:
        st = self._state.get(key)
        if st is None:
            st = self._state[key] = EndpointState()
        return st

    def _is_adapter(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> bool:
        """Whether the request's target is a LoRA adapter (as ``lora-affinity-scorer`` decides).

        Without ``baseModels`` only a name some candidate reports as an adapter counts as one.
        """
        model = request.target_model
        if model in self._base:
            return False
        for e in candidates:  # a loop, not all(<genexpr>): this runs for every request
            if e.metrics.max_active_adapters > 0:
                break
        else:
            return False
        if self._base:
            return True
        return any(
            model in e.metrics.running_adapters or model in e.metrics.waiting_adapters for e in candidates
        )

    def adapter_for(
        self, request: InferenceRequest, candidates: Sequence[Endpoint]
    ) -> tuple[str | None, float]:
        """The adapter ``request`` needs among ``candidates`` (None: a base model) and the pool's
        slot shortage for it, as :meth:`score` prices them (for plugins predicting with this one)."""
        if not self._is_adapter(request, candidates):
            return None, 0.0
        adapter = request.target_model
        return adapter, self._slot_pressure(adapter, candidates)

    def _slot_pressure(self, adapter: str, candidates: Sequence[Endpoint]) -> float:
        """The pool's shortage of adapter slots for a request for ``adapter`` (see
        :class:`AdapterDemand`)."""
        return self._adapters.pressure(adapter, candidates, self._clock.now())

    def predict(
        self,
        endpoint: Endpoint,
        *,
        prompt_tokens: int,
        matched_tokens: int,
        adapter: str | None,
        now: float,
        slot_pressure: float = 0.0,
    ) -> LatencyPrediction:
        """The request's predicted TTFT and TPOT on ``endpoint`` (milliseconds)."""
        ttft, tpot, uncached, prefill, frontend = self._predict_all(
            [endpoint], prompt_tokens, [matched_tokens], adapter, now, slot_pressure
        )[0]
        return LatencyPrediction(
            ttft_ms=ttft, tpot_ms=tpot, uncached_tokens=uncached, prefill_ms=prefill, frontend_ms=frontend
        )

    def _predict_all(
        self,
        candidates: Sequence[Endpoint],
        prompt_tokens: int,
        matched_tokens: Sequence[int],
        adapter: str | None,
        now: float,
        slot_pressure: float,
    ) -> list[_Prediction]:
        """:meth:`predict` for every candidate in one loop: the model's constants are read once
        per cycle and the per-endpoint helpers (``drained``, ``frontend_drained``, ``_rate``)
        written out, because this runs for every candidate of every request (a thousand-endpoint
        pool spent most of its scheduling cycle here). The arithmetic is the helpers', in the
        same order, so the floats are the same; ``max(a, b)`` is written ``b if b > a else a`` and
        ``min(a, b)`` ``b if b < a else a``, which is what the builtins return, without a call."""
        p = self._p
        states, state_of = self._state, self._state_of
        exp = math.exp
        prefill_ms_per_token = p.prefill_ms_per_token
        decode_step_ms = p.decode_step_ms
        decode_ms_per_seq = p.decode_ms_per_seq
        decode_ms_per_kv_token = p.decode_ms_per_kv_token
        frontend_ms_per_token = p.frontend_ms_per_token
        frontend_ms_per_request = p.frontend_ms_per_request
        overhead_ms = p.overhead_ms
        rate_window = p.rate_window_seconds
        pool_avg_prefill = self._avg_prefill_ms
        floor = self._tpot.floor()
        tpot_norm = 1.0 / floor if floor else 1.0
        tpot_hi = p.tpot_correction_limit
        tpot_lo = 1.0 / tpot_hi
        band, band_lo = TPOT_BAND, 1.0 / TPOT_BAND
        out: list[_Prediction] = []
        for endpoint, matched in zip(candidates, matched_tokens, strict=True):
            m = endpoint.metrics
            st = states.get(endpoint.meta.key) or state_of(endpoint.meta.key)
            uncached = prompt_tokens - matched
            uncached = uncached if uncached > 0 else 0
            prefill = uncached * prefill_ms_per_token
            # requests waiting on an endpoint this gateway sent little to (another gateway
            # replica's, or sent before a restart) are priced at the pool's average prefill, else
            # at this one's; each at least one decode step: a waiting request is one the engine
            # could not start yet
            per_request = st.avg_prefill_ms if st.sent >= 5 else (pool_avg_prefill or prefill)
            per_request = decode_step_ms if decode_step_ms > per_request else per_request
            drained = st.backlog_ms - (now - st.backlog_at) * 1000.0
            drained = drained if drained > 0.0 else 0.0
            waiting = m.waiting_queue_size * per_request
            backlog = waiting if waiting > drained else drained
            seqs = m.running_requests + m.waiting_queue_size
            seqs = endpoint.in_flight if endpoint.in_flight > seqs else seqs
            kv_tokens = 0.0
            if m.num_gpu_blocks and m.block_size:
                kv_tokens = m.kv_cache_usage * m.num_gpu_blocks * m.block_size
            step = decode_step_ms + decode_ms_per_seq * (seqs + 1) + decode_ms_per_kv_token * kv_tokens
            rate = 0.0 if st.rate_at <= 0.0 else st.prefill_rate * exp(-(now - st.rate_at) / rate_window)
            rho = rate if rate < 0.9 else 0.9
            tpot = step / (1.0 - rho)
            lora = 0.0
            if adapter is not None:
                loaded, listed = m.running_adapters, m.waiting_adapters
                swap = st.avg_answer_tokens * tpot
                if adapter not in loaded and adapter not in listed:
                    # a free slot loads at once, but taking one for an adapter already served
                    # elsewhere costs the pool a slot a cold adapter may need: at the pool's slot use
                    busy = len(loaded | listed)
                    lora = p.lora_load_ms + slot_pressure * swap if busy < m.max_active_adapters else swap
                full = len(loaded) >= m.max_active_adapters
                starving = full and adapter in listed and adapter not in loaded
                if starving or st.slot_waits:  # no call per candidate while no adapter waits there
                    lora += slot_wait_ms(st, adapter, starving, swap, now, loaded)
            # the API frontend streams one token per running sequence per step: that share of its
            # time (at most 0.95) is not available to admit requests; the request work waiting
            # there is brought up to now at the share measured before, and its wait priced at
            # today's
            work = st.frontend_ms - (now - st.frontend_at) * 1000.0 * (1.0 - st.frontend_busy)
            work = work if work > 0.0 else 0.0
            if m.updated_at != st.metrics_at:
                # a new scrape: the requests it does not show running or waiting are still in the
                # frontend; as many as the scrape before showed too are a queue, not a burst in
                # transit, and their work is a floor under the model's (once per scrape)
                st.metrics_at = m.updated_at
                count = unreported(endpoint)
                held = (count if count < st.unreported else st.unreported) * frontend_ms_per_request
                st.unreported = count
                work = held if held > work else work
            st.frontend_ms = work
            st.frontend_at = now
            # the share is of the replica's real step time: the model's TPOT times the endpoint's
            # learnt decode speed (its absolute TPOT factor, which the cost itself leaves out)
            step_ms = tpot * st.tpot_factor if st.tpot_observed else tpot
            busy_share = frontend_ms_per_token * m.running_requests / step_ms if step_ms > 0 else 0.0
            st.frontend_busy = busy_share if busy_share < 0.95 else 0.95
            frontend = st.frontend_ms / (1.0 - st.frontend_busy)
            ttft = (overhead_ms + frontend + backlog + prefill + lora) * st.ttft_factor
            if st.tpot_observed:
                # the TPOT correction prices this request's own decode only: the frontend's share
                # and an adapter's swap above keep the model's TPOT (a replica whose streaming is
                # delayed by its busy frontend decodes no slower, and must not look less busy)
                relative = st.tpot_factor * tpot_norm
                if relative > band:
                    relative /= band
                elif relative < band_lo:
                    relative *= band
                else:
                    relative = 1.0
                tpot *= tpot_hi if relative > tpot_hi else (tpot_lo if relative < tpot_lo else relative)
            out.append((ttft, tpot, uncached, prefill, frontend))
        return out

    def _rate(self, st: EndpointState, now: float) -> float:
        """The endpoint's recent prefill utilisation, decayed to ``now``."""
        if st.rate_at <= 0.0:
            return 0.0
        return st.prefill_rate * math.exp(-(now - st.rate_at) / self._p.rate_window_seconds)

    # ------------------------------------------------------------------ plugin
    def _hashes(self, request: InferenceRequest, block_tokens: int) -> list[int]:
        return block_hashes(
            request.prompt,
            request.target_model,
            block_tokens * AVERAGE_CHARS_PER_TOKEN,
            self._p.max_prefix_blocks_to_match,
        )

    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> CandidateScores:
        keys = candidate_keys(candidates, state)
        if not candidates:
            return CandidateScores(keys, [], bounded=True)
        p = self._p
        now = self._clock.now()
        block_tokens = candidates[0].metrics.block_size or p.block_size_tokens
        size = len(request.prompt.encode())
        # a prompt shorter than one block has no block to hash (most chat turns of a few words)
        hashes = self._hashes(request, block_tokens) if size >= block_tokens * AVERAGE_CHARS_PER_TOKEN else []
        matched = self.index.match(hashes) if hashes else {}
        prompt_tokens = max(1, size // AVERAGE_CHARS_PER_TOKEN)
        adapter = request.target_model if self._is_adapter(request, candidates) else None
        slot_pressure = self._slot_pressure(adapter, candidates) if adapter is not None else 0.0
        matched_tokens = [matched.get(k, 0) * block_tokens for k in keys] if matched else [0] * len(keys)
        predictions = self._predict_all(
            candidates, prompt_tokens, matched_tokens, adapter, now, slot_pressure
        )
        # the request's own bounds (x-llm-d-slo-*-ms) weigh its TTFT against its TPOT, else the pool's
        ttft_slo = (request.ttft_slo or p.ttft_slo_seconds) * 1000.0
        tpot_slo = (request.tpot_slo or p.tpot_slo_seconds) * 1000.0
        costs = [pred[0] / ttft_slo + pred[1] / tpot_slo for pred in predictions]
        if self._prefixes.short_of_holders(hashes, matched, keys, now):
            # a prefix too few servers hold for its share of the traffic: a candidate lacking
            # it is not charged the blocks a holder has (the prediction itself stays as is)
            per_token = p.prefill_ms_per_token / ttft_slo
            spread_short_prefix(costs, keys, matched_tokens, prompt_tokens, per_token, self._state)
        elif matched:
            # the streams a candidate runs pay for its extra prefill too (while holders have room,
            # or whatever their queues for a shared prefix that copies would crowd out of caches)
            crowded = parts_crowded(self.index, hashes, matched, candidates, p.lru_capacity_per_server)
            prefill = [pred[3] for pred in predictions]
            charge_misses(costs, candidates, prefill, self._state, tpot_slo, crowded=crowded)
            if max(matched.values()) >= len(hashes):  # a candidate holds the whole prompt
                charge_copies(costs, candidates, prefill, ttft_slo)
        if p.stall_weight:  # this request's prefill stalls the streams each candidate is decoding
            charge_stalls(costs, candidates, predictions, self._state, tpot_slo, p.stall_weight)
        by_key = dict(zip(keys, predictions, strict=True))
        state.put(_CYCLE, _Cycle(hashes=hashes, prompt_tokens=prompt_tokens, predictions=by_key))
        best = min(costs)
        return CandidateScores(keys, [best / c if c > 0 else 1.0 for c in costs], bounded=True)

    def post_pick(self, request: InferenceRequest, result: SchedulingResult, state: CycleState, /) -> None:
        """Account the request on its primary: backlog, prefill rate, averages, prefix index."""
        cycle = state.get(_CYCLE)
        primary = result.primary
        if cycle is None:
            return
        key = primary.meta.key
        pred = cycle.predictions.get(key)
        if pred is None:
            return
        ttft_ms, tpot_ms, _, prefill_ms, _ = pred
        record = LatencyRecord(
            endpoint=key,
            prefill_ms=prefill_ms,
            answer_tokens=request.max_tokens or 0,
            frontend_ms=self._p.frontend_ms_per_request,
            at=self._clock.now(),
        )
        st = self._account(record)
        if self._export is not None:
            self._export(record)
        if cycle.hashes:
            capacity = primary.metrics.num_gpu_blocks or self._p.lru_capacity_per_server
            self.index.add(key, cycle.hashes, capacity)
        if self._p.online_correction:
            pending = self._pending
            pending[request.request_id] = (key, ttft_ms / st.ttft_factor)
            if len(pending) > self._max_pending:
                # the older half goes at once: popping the oldest entry one pick at a time scans
                # every slot freed before it (a dict keeps them until it resizes), which added
                # ~7 µs to every pick (a third of a one-endpoint cycle) once nothing reported answers
                self._pending = dict(islice(pending.items(), len(pending) // 2, None))
            decoding = self._decoding
            decoding[request.request_id] = (key, tpot_ms / self._tpot.scale(st))
            if len(decoding) > self._max_pending:
                self._decoding = dict(islice(decoding.items(), len(decoding) // 2, None))

    def _account(self, r: LatencyRecord) -> EndpointState:
        """Add one pick to its endpoint's backlog, frontend work, prefill rate and averages.

        The record is applied as of ``max(r.at, the state's last update)``: a record that arrives
        late (another worker's, a channel hop behind) is not drained for the time it travelled
        before this state's last update; its backlog thus errs by at most that hop (milliseconds).
        """
        st = self._state.get(r.endpoint) or self._state_of(r.endpoint)
        # st.drained, st.frontend_drained and self._rate written out (once per pick, every
        # request): the same arithmetic in the same order; max(a, b) as ``b if b > a else a``
        t = r.at
        at = st.backlog_at if st.backlog_at > t else t
        left = st.backlog_ms - (at - st.backlog_at) * 1000.0
        st.backlog_ms = (left if left > 0.0 else 0.0) + r.prefill_ms
        st.backlog_at = at
        at = st.frontend_at if st.frontend_at > t else t
        left = st.frontend_ms - (at - st.frontend_at) * 1000.0 * (1.0 - st.frontend_busy)
        st.frontend_ms = (left if left > 0.0 else 0.0) + r.frontend_ms
        st.frontend_at = at
        window = self._p.rate_window_seconds
        at = st.rate_at if st.rate_at > t else t
        rate = 0.0 if st.rate_at <= 0.0 else st.prefill_rate * math.exp(-(at - st.rate_at) / window)
        st.prefill_rate = rate + r.prefill_ms / (window * 1000.0)
        st.rate_at = at
        st.sent += 1
        alpha = 0.1 if st.sent > 10 else 1.0 / st.sent
        st.avg_prefill_ms += alpha * (r.prefill_ms - st.avg_prefill_ms)
        if self._avg_prefill_ms == 0.0:
            self._avg_prefill_ms = r.prefill_ms
        self._avg_prefill_ms += 0.05 * (r.prefill_ms - self._avg_prefill_ms)
        if r.answer_tokens:
            st.avg_answer_tokens += alpha * (r.answer_tokens - st.avg_answer_tokens)
        return st

    def export_accounting(self, sink: Callable[[AccountingRecord], None] | None) -> None:
        """Hand the :class:`LatencyRecord` of every later pick, and the :class:`TtftRecord` and
        :class:`TpotRecord` of every later observation, to ``sink`` (None: stop).

        Gateway workers pass them to each other (``infergate.app.workers.affinity``), so each
        worker's backlog, frontend and prefill-rate estimates count every worker's picks, and its
        TTFT and TPOT corrections every worker's observed answers.
        """
        self._export = sink

    def apply_accounting(self, record: AccountingRecord) -> None:
        """Account another scheduler's pick, or learn its TTFT or TPOT observation, as if this
        scorer had made it.

        Only the endpoint model and its correction factor are touched: not the prefix index
        (shared on its own), not the pending observations (this scorer will not see that
        request's answer), and not the datastore's in-flight counts (shared on their own).
        """
        if isinstance(record, TtftRecord):
            self._learn(self._state_of(record.endpoint), record.ratio, record.at)
        elif isinstance(record, TpotRecord):
            self._tpot.learn(self._state_of(record.endpoint), record.ratio)
        else:
            self._account(record)

    def debug_state(self) -> dict[str, dict[str, float]]:
        """Per endpoint: what the model believes now and how its last prediction compared.

        ``ttft_observed_over_predicted`` is the online correction factor; the live view and
        ``/debug/endpoints`` show it with the last predicted and observed TTFT.
        """
        now = self._clock.now()
        return {
            key: {
                "backlog_ms": round(st.drained(now), 3),
                "frontend_backlog_ms": round(st.frontend_drained(now), 3),
                "frontend_unreported": st.unreported,  # in flight beyond the last scrape's running + waiting
                "prefill_utilisation": round(min(0.9, self._rate(st, now)), 4),
                "ttft_observed_over_predicted": round(st.ttft_factor, 4),
                "tpot_observed_over_predicted": round(st.tpot_factor, 4),
                "tpot_relative_to_pool": round(self._tpot.relative(st), 4),
                "tpot_scale": round(self._tpot.scale(st), 4),
                "last_predicted_ttft_ms": round(st.last_predicted_ms, 3),
                "last_observed_ttft_ms": round(st.last_observed_ms, 3),
                "observations": st.observed,
                "tpot_observations": st.tpot_observed,
                "requests": st.sent,
            }
            for key, st in self._state.items()
        }

    def remove_endpoint(self, key: str) -> None:
        """Forget an endpoint that left the pool."""
        st = self._state.pop(key, None)
        if st is not None:
            self._tpot.forget(st)
        self.index.remove_server(key)
