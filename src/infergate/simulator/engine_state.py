"""The engine's mutable per-request and per-step state (kept apart so engine_scheduler.py and
engine.py stay about scheduling and stepping; nothing outside the engine touches these objects)."""

from __future__ import annotations

from dataclasses import dataclass, field

from infergate.tokenization.blockhash import ExtraKeys

WAITING, RUNNING, FINISHED = 0, 1, 2
RECEIVING = 3  # holding blocks while its prompt's KV arrives from a prefill instance (P/D)


class ReqState:
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
        "mark_at",
        "max_tokens",
        "min_tokens",
        "num_cached",
        "num_cached_blocks",
        "num_computed",
        "num_external",
        "preemptions",
        "prompt_len",
        "queued",
        "ready_at",
        "remote",
        "scheduled",
        "seed",
        "seed_c",
        "send_kv",
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
        self.remote = 0  # prompt tokens whose KV a prefill instance sends (do_remote_prefill)
        self.num_external = 0  # of those, the ones not already in the local prefix cache
        self.ready_at = 0.0  # when that transfer completes
        self.send_kv = False  # do_remote_decode: keep its block ids for the decode instance
        self.first_token_time: float | None = None
        self.scheduled: float | None = None  # start of the step that first scheduled it
        self.queued = 0.0  # when the engine received it (after the frontend)
        self.status = WAITING
        self.id = ""
        self.prompt_len = 0
        self.lora: str | None = None
        self.lora_id: int | None = None
        self.max_tokens = 0
        self.mark_at = 0  # sparse mode: also an output at this many generated tokens (0: none)
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
class Step:
    scheduled: list[tuple[ReqState, int]]
    start: float
    duration: float = field(default=0.0)
