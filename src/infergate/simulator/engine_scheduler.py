"""The batch scheduler of the simulated vLLM V1 engine: what runs in the next step, and for how long.

vLLM keeps its scheduler apart from the engine core, and so does this model: this module owns the
queues, the KV block pool and the admission rules (running requests first, then waiting ones FCFS,
chunked prefill under ``max_num_batched_tokens``, ``max_num_seqs``, free KV blocks and the
LoRA-slot limit, recompute preemption, P/D transfers) and turns a batch into a step time through
the profile; ``engine`` adds everything else a request goes through (intake, sampling, finishing,
outputs, counters, the LoRA registry). ``Engine`` extends :class:`BatchScheduler` rather than
holding one, so the step loop calls these methods directly, with no delegation layer on a path the
digital twin runs millions of times.
"""

from __future__ import annotations

from collections import deque

from infergate.simulator.adapters import AdapterCache
from infergate.simulator.engine_state import RECEIVING, RUNNING, WAITING
from infergate.simulator.engine_state import ReqState as _Req
from infergate.simulator.engine_state import Step as _Step
from infergate.simulator.engine_types import EngineConfig
from infergate.simulator.kvcache import BlockPool
from infergate.simulator.profile import Profile, StepShape, get_profile

__all__ = ["BatchScheduler"]


class BatchScheduler:
    """Queues, KV blocks and the V1 admission step; the base of ``engine.Engine``, not used alone."""

    time_scale = 1.0  # ScaledEngine: simulated durations computed here are multiplied by it

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.profile: Profile = get_profile(config.profile)
        if config.block_size < 1 or config.max_num_seqs < 1 or config.max_num_batched_tokens < 1:
            raise ValueError("block_size, max_num_seqs and max_num_batched_tokens must be positive")
        blocks = config.num_gpu_blocks
        if blocks is None:
            blocks = self.profile.num_gpu_blocks(
                block_size=config.block_size,
                gpu_memory_utilization=config.gpu_memory_utilization,
                tensor_parallel_size=config.tensor_parallel_size,
            )
        self.pool = BlockPool(
            blocks,
            config.block_size,
            enable_caching=config.enable_prefix_caching,
            int_hashes=config.kv_events_int_hashes,
        )
        self.adapters = AdapterCache(config.max_loras, config.max_cpu_loras, self.profile)
        self._waiting: deque[_Req] = deque()
        self._running: list[_Req] = []
        self._receiving: list[_Req] = []  # P/D: waiting for their prompt's KV (RECEIVING)
        self._step: _Step | None = None  # begun, not yet ended (``Engine.end_step`` applies it)
        self._deferred = 0
        self._now = 0.0  # start of the step being scheduled: admission's timestamps
        # counters (``Engine.stats`` reports them)
        self._queries = 0
        self._hits = 0
        self._preemptions = 0

    # -- scheduling --------------------------------------------------------------------------
    def begin_step(self, now: float) -> float | None:
        """Schedule the next iteration and return its duration in seconds (None when idle)."""
        if self._step is not None:
            raise RuntimeError("begin_step called twice without end_step")
        if self._receiving:
            self._land_transfers(now)
        if not self._waiting and not self._running:
            if not self._receiving:
                return None
            # only transfers in flight: an idle step until the first one lands
            wait = min(r.ready_at for r in self._receiving) - now
            self._step = _Step([], now, max(wait / self.time_scale, self.profile.cpu_overhead_ms / 1000.0))
            return self._step.duration
        cfg = self.config
        budget = cfg.max_num_batched_tokens
        bs = cfg.block_size
        scheduled: list[tuple[_Req, int]] = []
        preempted = False
        running = self._running
        append = scheduled.append
        i = 0
        while i < len(running) and budget > 0:
            r = running[i]
            computed = r.num_computed
            n = len(r.tokens) - computed
            if n > budget:
                n = budget
            if n <= 0:
                i += 1
                continue
            total = computed + n
            if total <= len(r.blocks) * bs and (not r.hashes or total // bs <= r.num_cached_blocks):
                append((r, n))  # fast path: a decode step inside an allocated block
                budget -= n
                i += 1
                continue
            can = True
            while not self._allocate(r, n, r.num_computed, []):
                victim = running.pop()
                self._preempt(victim)
                preempted = True
                if victim is r:
                    can = False
                    break
            if not can:
                break
            scheduled.append((r, n))
            budget -= n
            i += 1
        self._deferred = 0
        if not preempted and self._waiting:
            self._now = now
            budget = self._admit_waiting(budget, scheduled)
        shape, loras = self._shape(scheduled)
        if scheduled:
            ms = self.profile.step_time_ms(shape, cfg.tensor_parallel_size)
            if loras:
                ms += self.adapters.activate(loras)
        else:
            ms = self.profile.cpu_overhead_ms
        duration = ms / 1000.0
        self._step = _Step(scheduled, now, duration)
        return duration

    def _admit_waiting(self, budget: int, scheduled: list[tuple[_Req, int]]) -> int:
        """Move waiting requests into the batch in FCFS order while every limit allows it."""
        cfg = self.config
        bs = cfg.block_size
        waiting = self._waiting
        running = self._running
        active = {r.lora for r in running if r.lora}
        skipped: list[_Req] = []
        while waiting and budget > 0 and len(running) < cfg.max_num_seqs:
            r = waiting[0]
            if r.lora and r.lora not in active and len(active) >= cfg.max_loras:
                waiting.popleft()
                skipped.append(r)
                continue
            hit_blocks = self.pool.lookup(r.hashes, (len(r.tokens) - 1) // bs) if r.hashes else []
            num_hit = len(hit_blocks) * bs
            if not self._full_sequence_fits(r, hit_blocks):
                break
            if r.remote > num_hit and r.preemptions == 0:
                if not self._start_transfer(r, hit_blocks, num_hit):
                    break
                waiting.popleft()
                continue
            n = min(len(r.tokens) - num_hit, budget)
            if not self._allocate(r, n, num_hit, hit_blocks):
                break
            waiting.popleft()
            if r.preemptions == 0 and cfg.enable_prefix_caching:
                self._queries += len(r.tokens)
                self._hits += num_hit
                r.num_cached = num_hit
            r.num_computed = num_hit
            if r.scheduled is None:
                r.scheduled = self._now
            r.status = RUNNING
            running.append(r)
            if r.lora:
                active.add(r.lora)
            scheduled.append((r, n))
            budget -= n
        if skipped:
            self._deferred = len(skipped)
            waiting.extendleft(reversed(skipped))
        return budget

    def _start_transfer(self, r: _Req, hit_blocks: list[int], num_hit: int) -> bool:
        """P/D decode side, as vLLM's NIXL connector: blocks for the remote part of the prompt are
        allocated (not cached until the KV has arrived) and the request waits, RECEIVING and
        counted as waiting, for the transfer of what its prefix-cache hits do not cover."""
        if not self._allocate(r, r.remote - num_hit, num_hit, hit_blocks, cache=False):
            return False
        cfg = self.config
        if cfg.enable_prefix_caching:
            self._queries += len(r.tokens)
            self._hits += num_hit
        r.num_cached, r.num_external, r.num_computed = num_hit, r.remote - num_hit, num_hit
        size = r.num_external * self.profile.kv_bytes_per_token / cfg.tensor_parallel_size
        transfer = cfg.kv_transfer_latency + size / cfg.kv_transfer_bandwidth
        r.ready_at = self._now + transfer * self.time_scale
        r.scheduled = self._now if r.scheduled is None else r.scheduled
        r.status = RECEIVING
        self._receiving.append(r)
        return True

    def _land_transfers(self, now: float) -> None:
        """Transfers complete by ``now`` make their requests running with the received KV cached
        (the rest of the prompt, at least its last token, is then computed here, as in vLLM)."""
        for r in [r for r in self._receiving if r.ready_at <= now]:
            self._receiving.remove(r)
            self._allocate(r, 0, r.remote, [])  # nothing to allocate: caches the received blocks
            r.num_computed = r.remote
            r.status = RUNNING
            self._running.append(r)

    def _full_sequence_fits(self, r: _Req, hit_blocks: list[int]) -> bool:
        """vLLM 0.33's admission gate (``scheduler_reserve_full_isl``, on by default): a waiting
        request is admitted only if blocks for its whole sequence (prompt, plus tokens generated
        before a preemption) are free now, counting its prefix-cache hits, not just its first chunk."""
        pool = self.pool
        tokens = min(len(r.tokens), self.config.max_model_len)
        need = -(-tokens // self.config.block_size) - len(hit_blocks)
        return need <= pool.num_free - (pool.num_evictable(hit_blocks) if hit_blocks else 0)

    def _allocate(self, r: _Req, n: int, computed: int, hit_blocks: list[int], cache: bool = True) -> bool:
        """Give ``r`` blocks for ``computed + n`` tokens (reviving ``hit_blocks``) and cache the full
        ones unless ``cache`` is False; False if short."""
        bs = self.config.block_size
        pool = self.pool
        total = computed + n
        need = -(-total // bs) - len(r.blocks) - len(hit_blocks)
        if need > pool.num_free - (pool.num_evictable(hit_blocks) if hit_blocks else 0):
            return False
        if hit_blocks:
            pool.touch(hit_blocks)
            r.blocks.extend(hit_blocks)
            r.num_cached_blocks = len(hit_blocks)
        if need > 0:
            r.blocks.extend(pool.allocate(need))
        if r.hashes and cache:
            n_full = min(total // bs, len(r.hashes))
            if n_full > r.num_cached_blocks:
                pool.cache_blocks(
                    r.blocks, r.hashes, r.num_cached_blocks, n_full, r.tokens, r.lora_id, r.lora
                )
                r.num_cached_blocks = n_full
        return True

    def _preempt(self, r: _Req) -> None:
        """Recompute-mode preemption: free the blocks (they stay cached), requeue at the front."""
        self.pool.free(r.blocks[::-1])
        r.blocks = []
        r.num_computed = 0
        r.num_cached_blocks = 0
        r.status = WAITING
        r.preemptions += 1
        self._preemptions += 1
        self._waiting.appendleft(r)

    def _shape(self, scheduled: list[tuple[_Req, int]]) -> tuple[StepShape, set[str]]:
        n_tok = 0
        pairs = 0.0
        ctx = 0
        samp = 0
        loras: set[str] = set()
        for r, n in scheduled:
            n_tok += n
            p = r.num_computed
            if n == 1 and p >= r.prompt_len:
                ctx += p + 1
                samp += 1
            else:
                pairs += n * p + n * (n + 1) / 2
                if p + n >= len(r.tokens):
                    samp += 1
            lora = r.lora
            if lora:
                loras.add(lora)
        shape = StepShape(
            num_tokens=n_tok,
            prefill_pairs=pairs,
            decode_ctx_sum=ctx,
            num_sampled=samp,
            has_lora=bool(loras),
            lora_enabled=self.config.enable_lora,
        )
        return shape, loras
