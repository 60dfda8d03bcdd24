"""The simulated vLLM V1 engine: scheduler, KV blocks, LoRA slots and the step-time model.

The engine is a pure state machine with no clock of its own: a driver calls ``begin_step(now)``,
which schedules one V1 iteration (running requests first, then waiting ones FCFS, chunked prefill
under ``max_num_batched_tokens``, ``max_num_seqs``, KV blocks and the LoRA-slot limit) and returns
how long it takes; after that much (wall or virtual) time the driver calls ``end_step(now)``, which
applies the step and returns the tokens produced. The same code therefore runs on the wall clock
(HTTP server) and on a discrete-event virtual clock (digital twin).

Generated tokens are deterministic: ``Tokenizer.filler_token`` of a per-request seed derived from
the engine seed and the prompt, and a natural stop length derived the same way (unless given).
"""

from __future__ import annotations

import math
import random
import zlib
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from infergate.simulator.adapters import AdapterCache
from infergate.simulator.engine_types import (
    EngineConfig,
    EngineRequest,
    EngineStats,
    PromptTooLongError,
    RequestOutput,
    TimedOutput,
    UnknownLoraError,
)
from infergate.simulator.kvcache import BlockPool, KvEvent
from infergate.simulator.profile import Profile, StepShape, get_profile
from infergate.tokenization.blockhash import BlockHasher, ExtraKeys, lora_extra_keys
from infergate.tokenization.builtin import Tokenizer, stable_hash64

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineRequest",
    "EngineStats",
    "PromptTooLongError",
    "RequestOutput",
    "TimedOutput",
    "UnknownLoraError",
]

WAITING, RUNNING, FINISHED = 0, 1, 2


class _Req:
    """Mutable per-request state (the engine's own; never handed out)."""

    __slots__ = (
        "arrival",
        "blocks",
        "counted",
        "end_at",
        "extra",
        "first_token_time",
        "hashes",
        "id",
        "ignore_eos",
        "lora",
        "lora_id",
        "max_tokens",
        "min_tokens",
        "num_cached",
        "num_cached_blocks",
        "num_computed",
        "preemptions",
        "prompt_len",
        "seed",
        "seed_c",
        "status",
        "stop_at",
        "times",
        "tokens",
    )

    def __init__(self) -> None:
        self.blocks: list[int] = []
        self.hashes: list[bytes] = []
        self.tokens: list[int] = []
        self.times: list[float] = []  # token times, recorded in sparse mode only
        self.num_computed = 0
        self.num_cached = 0
        self.num_cached_blocks = 0
        self.preemptions = 0
        self.first_token_time: float | None = None
        self.status = WAITING
        self.id = ""
        self.prompt_len = 0
        self.lora: str | None = None
        self.lora_id: int | None = None
        self.max_tokens = 0
        self.min_tokens = 0
        self.ignore_eos = False
        self.stop_at: int | None = None
        self.seed = 0
        self.seed_c = 0  # filler-token hash state before the token index is added
        self.arrival = 0.0
        self.counted = True  # the engine counts its finish in request_success_total
        self.extra: ExtraKeys = None  # block-hash extra keys (LoRA)
        self.end_at = 0  # generated tokens after which it finishes, by stop or by length


@dataclass
class _Step:
    scheduled: list[tuple[_Req, int]]
    start: float
    duration: float = field(default=0.0)


class Engine:
    """Deterministic vLLM V1 engine model; see the module docstring for the driving protocol."""

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
        self.hasher = BlockHasher(config.prefix_caching_hash_algo, config.hash_seed)
        self.filler_ids = config.filler_ids or Tokenizer(reverse=False).filler_ids
        self.adapters = AdapterCache(config.max_loras, config.max_cpu_loras, self.profile)
        self._waiting: deque[_Req] = deque()
        self._running: list[_Req] = []
        self._requests: dict[str, _Req] = {}
        self._step: _Step | None = None
        self._loras: dict[str, str] = {}
        self._lora_ids: dict[str, int] = {}
        self._next_lora_id = 1
        self._kv_sink: Callable[[list[KvEvent]], None] | None = None
        self._deferred = 0
        # counters
        self._queries = 0
        self._hits = 0
        self._preemptions = 0
        self._prompt_tokens = 0
        self._generation_tokens = 0
        self._success: dict[str, int] = {"stop": 0, "length": 0, "abort": 0}
        self._num_steps = 0
        self._busy = 0.0
        self.last_step_tokens = 0  # tokens generated by the last step (the frontend detokenises them)

    # -- KV events ---------------------------------------------------------------------------
    def set_kv_event_sink(self, sink: Callable[[list[KvEvent]], None] | None) -> None:
        """Receive the KV events of each step (tuples, see ``kvcache``); None turns them off."""
        self._kv_sink = sink
        self.pool.events_enabled = sink is not None

    # -- requests ----------------------------------------------------------------------------
    @property
    def kv_capacity_tokens(self) -> int:
        return (self.pool.num_blocks - 1) * self.config.block_size

    def validate(self, req: EngineRequest) -> None:
        """Raise ``ValueError`` (or a subclass) if ``add_request`` would refuse ``req``."""
        n = len(req.prompt_token_ids)
        if n == 0:
            raise ValueError("the prompt must contain at least one token")
        if n >= self.config.max_model_len:
            raise PromptTooLongError(n, self.config.max_model_len)
        if n >= self.kv_capacity_tokens:
            raise ValueError(
                f"prompt of {n} tokens does not fit the KV cache ({self.kv_capacity_tokens} tokens)"
            )
        if req.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if req.lora_name is not None and (not self.config.enable_lora or req.lora_name not in self._loras):
            raise UnknownLoraError(f"LoRA adapter {req.lora_name!r} is not loaded")
        if req.request_id in self._requests:
            raise ValueError(f"request id {req.request_id!r} is already in use")

    def add_request(self, req: EngineRequest, now: float, arrival_time: float | None = None) -> None:
        """Queue ``req`` at the back of the waiting queue. ``arrival_time`` defaults to ``now``."""
        self.validate(req)
        cfg = self.config
        r = _Req()
        r.id = req.request_id
        r.tokens = list(req.prompt_token_ids)
        r.prompt_len = len(r.tokens)
        r.lora = req.lora_name
        r.lora_id = self._lora_ids.get(req.lora_name) if req.lora_name else None
        r.max_tokens = min(
            req.max_tokens, cfg.max_model_len - r.prompt_len, self.kv_capacity_tokens - r.prompt_len
        )
        r.min_tokens = req.min_tokens
        r.ignore_eos = req.ignore_eos
        r.arrival = now if arrival_time is None else arrival_time
        r.counted = not req.frontend_counts
        digest = zlib.crc32(array("q", r.tokens).tobytes())
        r.seed = stable_hash64(cfg.seed, digest, r.prompt_len, zlib.crc32((r.lora or "").encode()))
        r.seed_c = ((r.seed * 1_000_003) + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        r.stop_at = req.eos_after if req.eos_after is not None else self._natural_length(r.seed)
        r.end_at = r.max_tokens
        if not r.ignore_eos and r.stop_at is not None:
            r.end_at = min(r.end_at, max(r.stop_at, r.min_tokens))
        r.extra = lora_extra_keys(r.lora, self._loras.get(r.lora) if r.lora else None)
        if cfg.enable_prefix_caching:
            r.hashes = self.hasher.block_hashes(r.tokens, cfg.block_size, r.extra)
        else:
            r.hashes = []
        self._requests[r.id] = r
        self._waiting.append(r)

    @staticmethod
    def _natural_length(seed: int) -> int:
        """Output length the simulated model would stop at: log-normal, median 150 tokens [est]."""
        rng = random.Random(seed)
        return max(1, int(rng.lognormvariate(math.log(150.0), 0.8)))

    def abort(self, request_id: str, now: float, reason: str = "abort") -> RequestOutput | None:
        """Drop a request wherever it is; returns its final ``abort`` output (None if unknown).

        ``reason`` is what ``vllm:request_success_total`` counts it as: the server ends a request
        whose text hit a stop string this way, and vLLM counts that as ``stop``."""
        r = self._requests.pop(request_id, None)
        if r is None:
            return None
        if r.status == WAITING:
            self._waiting.remove(r)
        elif r.status == RUNNING:
            self._running.remove(r)
            self.pool.free(r.blocks[::-1])
            r.blocks = []
        r.status = FINISHED
        if r.counted:
            self._success[reason] = self._success.get(reason, 0) + 1
        if r.times:  # sparse mode: the consumer has had no per-token outputs
            return self._timed_output(r, (), "abort", now)
        return self._output(r, (), "abort", now)

    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    # -- stepping ----------------------------------------------------------------------------
    def begin_step(self, now: float) -> float | None:
        """Schedule the next iteration and return its duration in seconds (None when idle)."""
        if self._step is not None:
            raise RuntimeError("begin_step called twice without end_step")
        if not self._waiting and not self._running:
            return None
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
            n = min(len(r.tokens) - num_hit, budget)
            if not self._allocate(r, n, num_hit, hit_blocks):
                break
            waiting.popleft()
            if r.preemptions == 0 and cfg.enable_prefix_caching:
                self._queries += len(r.tokens)
                self._hits += num_hit
                r.num_cached = num_hit
            r.num_computed = num_hit
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

    def _full_sequence_fits(self, r: _Req, hit_blocks: list[int]) -> bool:
        """vLLM 0.33's admission gate (``scheduler_reserve_full_isl``, on by default): a waiting
        request is admitted only if blocks for its whole sequence (prompt, plus tokens generated
        before a preemption) are free now, counting its prefix-cache hits, not just its first chunk."""
        pool = self.pool
        tokens = min(len(r.tokens), self.config.max_model_len)
        need = -(-tokens // self.config.block_size) - len(hit_blocks)
        return need <= pool.num_free - (pool.num_evictable(hit_blocks) if hit_blocks else 0)

    def _allocate(self, r: _Req, n: int, computed: int, hit_blocks: list[int]) -> bool:
        """Give ``r`` blocks for ``computed + n`` tokens (reviving ``hit_blocks``); False if short."""
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
        if r.hashes:
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

    def end_step(self, now: float, *, sparse: bool = False) -> list[RequestOutput]:
        """Apply the step begun by ``begin_step``: advance prefills, sample one token per ready request.

        ``sparse=True`` (the digital twin) returns outputs only for a request's first token and for
        its end, the latter a :class:`TimedOutput` with every token's time; engine state, token ids
        and timing are the same as in the default mode, only the per-token outputs are skipped.
        """
        step = self._step
        if step is None:
            raise RuntimeError("end_step called without begin_step")
        self._step = None
        self._num_steps += 1
        self._busy += step.duration
        bs = self.config.block_size
        fill = self.filler_ids
        n_fill = len(fill)
        hasher = self.hasher
        caching = self.config.enable_prefix_caching
        mask = 0xFFFFFFFFFFFFFFFF
        outputs: list[RequestOutput] = []
        finished = False
        generated = 0
        running_state = RUNNING
        for r, n in step.scheduled:
            if r.status != running_state:
                continue  # aborted while the step ran
            computed = r.num_computed + n
            r.num_computed = computed
            tokens = r.tokens
            ntok = len(tokens)
            if computed < ntok:
                continue  # partial prefill
            idx = ntok - r.prompt_len
            # Tokenizer.filler_token(r.seed, idx), inlined (SplitMix64; the mod-2^64 sum
            # seed·1000003 + idx + golden-ratio constant with its constant part precomputed)
            x = (r.seed_c + idx) & mask
            x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
            x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
            tok = fill[(x ^ (x >> 31)) % n_fill]
            tokens.append(tok)
            if idx == 0:
                r.first_token_time = now
                self._prompt_tokens += r.prompt_len
            generated += 1
            if caching and (ntok + 1) % bs == 0:  # a block just filled (prompts < 1 block too)
                hasher.block_hashes(tokens, bs, r.extra, r.hashes)
            reason: str | None = None
            if idx + 1 >= r.end_at:  # the same test as below, precomputed per request
                ngen = idx + 1
                if not r.ignore_eos and r.stop_at is not None and ngen >= max(r.stop_at, r.min_tokens):
                    reason = "stop"
                elif ngen >= r.max_tokens:
                    reason = "length"
            if reason is not None:
                self._finish(r, reason)
                finished = True
            if sparse:
                r.times.append(now)
                if reason is None:
                    if idx == 0:
                        outputs.append(self._output(r, (tok,), None, now))
                else:
                    outputs.append(self._timed_output(r, (tok,), reason, now))
            else:
                outputs.append(self._output(r, (tok,), reason, now))
        self._generation_tokens += generated
        self.last_step_tokens = generated
        if finished:
            self._running = [r for r in self._running if r.status == RUNNING]
        if self._kv_sink is not None:
            events = self.pool.drain_events()
            if events:
                self._kv_sink(events)
        return outputs

    def _finish(self, r: _Req, reason: str) -> None:
        r.status = FINISHED
        self.pool.free(r.blocks[::-1])
        r.blocks = []
        self._requests.pop(r.id, None)
        if r.counted:
            self._success[reason] = self._success.get(reason, 0) + 1

    def record_finish(self, reason: str) -> None:
        """Count a finish decided by the frontend (requests submitted with ``frontend_counts``)."""
        self._success[reason] = self._success.get(reason, 0) + 1

    def _output(self, r: _Req, new: tuple[int, ...], reason: str | None, now: float) -> RequestOutput:
        return RequestOutput(
            request_id=r.id,
            new_token_ids=new,
            finished=reason is not None,
            finish_reason=reason,
            num_prompt_tokens=r.prompt_len,
            num_cached_tokens=r.num_cached,
            num_generated=len(r.tokens) - r.prompt_len,
            arrival_time=r.arrival,
            first_token_time=r.first_token_time,
            now=now,
        )

    def _timed_output(self, r: _Req, new: tuple[int, ...], reason: str | None, now: float) -> TimedOutput:
        gen = len(r.tokens) - r.prompt_len
        return TimedOutput(
            r.id, new, reason is not None, reason, r.prompt_len, r.num_cached, gen, r.arrival,
            r.first_token_time, now, tuple(r.times),
        )  # fmt: skip

    # -- observation -------------------------------------------------------------------------
    def stats(self) -> EngineStats:
        running_loras = tuple(dict.fromkeys(r.lora for r in self._running if r.lora))
        waiting_loras = tuple(dict.fromkeys(r.lora for r in self._waiting if r.lora))
        return EngineStats(
            num_running=len(self._running),
            num_waiting=len(self._waiting),
            kv_cache_usage=self.pool.usage(),
            num_gpu_blocks=self.pool.num_blocks,
            block_size=self.config.block_size,
            prefix_cache_queries=self._queries,
            prefix_cache_hits=self._hits,
            num_preemptions=self._preemptions,
            prompt_tokens_total=self._prompt_tokens,
            generation_tokens_total=self._generation_tokens,
            running_loras=running_loras,
            waiting_loras=waiting_loras,
            max_loras=self.config.max_loras,
            request_success_total=dict(self._success),
            num_waiting_deferred=self._deferred,
            num_steps=self._num_steps,
            busy_time=self._busy,
            lora_gpu_loads=self.adapters.gpu_loads,
        )

    def lora_state(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Adapters of the running and of the waiting requests, in queue order (cheap: per step)."""
        running = tuple(dict.fromkeys(r.lora for r in self._running if r.lora))
        waiting = tuple(dict.fromkeys(r.lora for r in self._waiting if r.lora))
        return running, waiting

    def prefix_cache_contains(self, token_ids: Sequence[int], lora: str | None) -> int:
        """Tokens of ``token_ids`` a new request would find cached right now (block-aligned)."""
        if not self.config.enable_prefix_caching or not token_ids:
            return 0
        bs = self.config.block_size
        max_blocks = (len(token_ids) - 1) // bs
        extra = lora_extra_keys(lora, self._loras.get(lora) if lora else None)
        hashes = self.hasher.block_hashes(token_ids[: max_blocks * bs], bs, extra)
        return len(self.pool.lookup(hashes, max_blocks)) * bs

    def reset_prefix_cache(self) -> bool:
        """Clear the prefix cache if nothing is running (``POST /reset_prefix_cache``)."""
        return self.pool.reset_prefix_cache()

    # -- LoRA registry -----------------------------------------------------------------------
    def add_lora(self, name: str, path: str) -> None:
        """Register an adapter and load it into the CPU cache; ``ValueError`` if LoRA is off or taken."""
        if not self.config.enable_lora:
            raise ValueError("LoRA is not enabled (start with --enable-lora)")
        if name in self._loras:
            raise ValueError(f"The lora adapter '{name}' has already been loaded.")
        self._loras[name] = path
        self._lora_ids[name] = self._next_lora_id
        self._next_lora_id += 1
        self.adapters.preload(name)

    def remove_lora(self, name: str) -> None:
        """Unregister an adapter; ``KeyError`` if unknown. Requests already admitted finish normally."""
        if name not in self._loras:
            raise KeyError(name)
        del self._loras[name]
        self._lora_ids.pop(name, None)
        self.adapters.remove(name)

    def loras(self) -> dict[str, str]:
        return dict(self._loras)

    def lora_id(self, name: str) -> int | None:
        return self._lora_ids.get(name)

    def request_ids(self) -> list[str]:
        return list(self._requests)
