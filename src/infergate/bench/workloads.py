"""Benchmark workloads as data: a YAML spec becomes a seeded, reproducible list of requests.

A workload describes *what* is asked (models, prompt and answer lengths, shared prefixes, sessions,
objectives); the arrival process (open-loop Poisson or gamma at a rate, or closed-loop at a
concurrency) is chosen when it runs, so the same request stream is replayed against every routing
strategy. Prompt text is built from a fixed word list: no data set or tokenizer is downloaded. One
word is meant to be roughly one token, so lengths are given in tokens.

A file may also carry ``pool:`` defaults for the twin (replicas, adapters, LoRA slots, arrival
process, rate profile, replicas joining or leaving, GPUs slowing down; see
:mod:`infergate.bench.workload_pool`): the pool the workload is meant for, which command-line
flags override, and ``phases``: the workloads that follow the first one from points of a
steady-state run's measured window (what the clients ask changes; the pool does not).
:func:`generate` gives the workload's fixed list (its counts); :func:`stream` repeats the workload's
pattern (fresh sessions, same tenants) for as many requests as a steady-state run needs.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from infergate.bench.wordtext import TextFn, filler_text
from infergate.bench.wordtext import text as _text
from infergate.bench.wordtext import text_fast as _text_fast
from infergate.bench.workload_pool import PoolDefaults, ScaleEvent, SlowEvent

__all__ = [
    "OBJECTIVE_HEADER",
    "BenchRequest",
    "ClassesWorkload",
    "ObjectiveShare",
    "PoolDefaults",
    "ScaleEvent",
    "SlowEvent",
    "WorkloadError",
    "WorkloadPhase",
    "WorkloadSpec",
    "builtin_workloads",
    "filler_text",
    "generate",
    "load_workload",
    "stream",
    "stream_phases",
]

# The header that names a request's InferenceObjective (GIE's ``x-gateway-inference-objective``).
OBJECTIVE_HEADER = "x-gateway-inference-objective"
# A request's own latency bounds in milliseconds (llm-d's spelling).
SLO_TTFT_HEADER = "x-llm-d-slo-ttft-ms"
SLO_TPOT_HEADER = "x-llm-d-slo-tpot-ms"


class WorkloadError(ValueError):
    """A workload file that cannot be used; the message names the file and field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class LengthDist(_Model):
    """A token-length distribution: fixed (``mean`` only), uniform (``min``/``max``) or lognormal."""

    kind: Literal["fixed", "uniform", "lognormal"] = "fixed"
    mean: float = Field(default=128, gt=0)
    sigma: float = Field(default=0.0, ge=0)
    min: int = Field(default=1, ge=1)
    max: int = Field(default=32768, ge=1)

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            value = self.mean
        elif self.kind == "uniform":
            value = rng.uniform(self.min, self.max)
        else:  # lognormal with the given mean of the distribution (not of the log)
            mu = math.log(self.mean) - self.sigma**2 / 2
            value = rng.lognormvariate(mu, self.sigma)
        return max(self.min, min(self.max, round(value)))


class ModelShare(_Model):
    name: str
    weight: float = Field(default=1.0, gt=0)


class SharedPrefixWorkload(_Model):
    """Multi-tenant chat: each tenant has a long system prompt; sessions add turns to a growing history."""

    type: Literal["shared_prefix"]
    tenants: int = Field(default=50, ge=1)
    system_prompt_tokens: int = Field(default=2000, ge=0)
    question: LengthDist = LengthDist(mean=200)
    answer: LengthDist = LengthDist(mean=200)
    turns: int = Field(default=3, ge=1)
    sessions: int = Field(default=200, ge=1)
    models: tuple[ModelShare, ...] = (ModelShare(name="meta-llama/Llama-3.1-8B-Instruct"),)
    staggered: bool = False
    """Sessions do not start together: session k of the first ``sessions`` starts at turn k mod
    ``turns`` (its earlier turns are its history, never sent) and each session is followed by a
    fresh one, so every turn depth is sent at every moment and a session's turns are ``sessions``
    arrivals apart. False: every session's first turn, then every second turn, and so on."""
    turn_after_answer: bool = False
    """A session's turn is sent at its arrival time or once the session's previous answer has
    ended, whichever is later: one request in flight per session, as a person or an agent loop
    waits for the answer it continues (inference-perf's session rounds do the same). False: every
    turn at its arrival time, so a session's turns overlap when they come faster than answers."""


class MixWorkload(_Model):
    """Independent requests over several models (base model and adapters) in given proportions."""

    type: Literal["mix"]
    requests: int = Field(default=500, ge=1)
    prompt: LengthDist = LengthDist(mean=256)
    answer: LengthDist = LengthDist(mean=128)
    models: tuple[ModelShare, ...]
    api: Literal["completions", "chat"] = "completions"


class BurstWorkload(_Model):
    """A mix whose requests arrive in bursts: ``burst_size`` at once every ``period_s`` seconds."""

    type: Literal["burst"]
    bursts: int = Field(default=10, ge=1)
    burst_size: int = Field(default=32, ge=1)
    period_s: float = Field(default=5.0, gt=0)
    prompt: LengthDist = LengthDist(mean=256)
    answer: LengthDist = LengthDist(mean=128)
    models: tuple[ModelShare, ...] = (ModelShare(name="meta-llama/Llama-3.1-8B-Instruct"),)
    samples: int = Field(default=1, ge=1)
    """Requests per prompt: a burst is groups of ``samples`` requests with the same prompt and
    model, each with its own answer length, as a reinforcement-learning rollout asks a policy for
    several samples of each prompt at once (GRPO's group). 1: every request its own prompt."""


class RequestClass(_Model):
    """One kind of request in a ``classes`` workload: its share, lengths and models, and the
    latency bounds its clients send (``x-llm-d-slo-ttft-ms``/``-tpot-ms``; unset: none sent)."""

    name: str
    weight: float = Field(default=1.0, gt=0)
    prompt: LengthDist = LengthDist(mean=256)
    answer: LengthDist = LengthDist(mean=128)
    models: tuple[ModelShare, ...] = (ModelShare(name="meta-llama/Llama-3.1-8B-Instruct"),)
    slo_ttft: float | None = Field(default=None, gt=0)
    """Seconds."""
    slo_tpot: float | None = Field(default=None, gt=0)
    """Seconds."""


class ClassesWorkload(_Model):
    """Independent requests from several kinds with their own length distributions, e.g. a
    prefill-heavy kind (long prompt, short answer) beside a decode-heavy one (the reverse)."""

    type: Literal["classes"]
    requests: int = Field(default=500, ge=1)
    classes: tuple[RequestClass, ...] = Field(min_length=1)
    api: Literal["completions", "chat"] = "completions"


WorkloadBody = Annotated[
    SharedPrefixWorkload | MixWorkload | BurstWorkload | ClassesWorkload, Field(discriminator="type")
]


class ObjectiveShare(_Model):
    """An InferenceObjective the workload's requests name (header), with its priority and share.

    Negative priorities are sheddable: when a workload has objectives, the SLO is judged on the
    requests of non-negative priority only, so shedding the sheddable ones under overload is
    allowed, as the gateway's flow control intends.
    """

    name: str
    priority: int = 0
    weight: float = Field(default=1.0, gt=0)


class WorkloadPhase(_Model):
    """What the clients ask from a point of the measured window on: a batch job starts, the popular
    adapters change, new tenants arrive. The pool, the arrival process and the rate stay; each
    phase draws its own text, so a later phase's tenants are new ones."""

    at: float = Field(gt=0.0, lt=1.0)
    """When: a fraction of the measured window (the warm-up runs the first workload)."""
    workload: WorkloadBody


class WorkloadSpec(_Model):
    name: str
    description: str = ""
    seed: int = 0
    workload: WorkloadBody
    phases: tuple[WorkloadPhase, ...] = ()
    """Later workloads, in order of ``at``: ``workload`` until the first one's ``at``, then each in
    turn. Only steady-state twin runs (open or closed loop) have a window to switch in; the
    others refuse them."""
    pool: PoolDefaults = PoolDefaults()
    objectives: tuple[ObjectiveShare, ...] = ()
    streamed: float = Field(default=1.0, ge=0.0, le=1.0)
    """The share of requests sent with ``stream: true`` (drawn per request from its own seeded
    stream); the others wait for the whole answer, so the gateway learns from their end-to-end
    time only. The SLO is judged on every request's own token times all the same (the twin knows
    them; a client that does not stream sees them as its end-to-end time)."""
    max_tokens: Annotated[int, Field(ge=1)] | Literal["answer", "none"] = "answer"
    """What the clients send as ``max_tokens``. ``answer`` (a benchmark client's habit): the
    answer's own length, with ``ignore_eos``, so the gateway knows every answer's length in
    advance. A number (an application's cap, e.g. 4096): that, and the model ends each answer at
    its drawn length by itself (answers longer than the cap stop at it). ``none``: no
    ``max_tokens`` at all. Only the twin can honour the last two (a real model server decides
    where its answers end)."""

    @model_validator(mode="after")
    def _phases_in_order(self) -> WorkloadSpec:
        if any(b.at <= a.at for a, b in itertools.pairwise(self.phases)):
            raise ValueError("phases must be in increasing order of 'at'")
        bodies = (self.workload, *(p.workload for p in self.phases))
        if self.phases and any(isinstance(b, BurstWorkload) for b in bodies):
            raise ValueError("a burst workload places its own arrivals and cannot have phases")
        return self


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchRequest:
    """One request of a workload. ``offset`` is a fixed arrival time for bursty workloads, else None
    (the runner's arrival process decides). ``messages`` is set for chat requests, ``prompt`` for
    completions. ``group`` names what the request shares a prefix with (tenant), for reports."""

    index: int
    model: str
    max_tokens: int
    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    group: str = ""
    offset: float | None = None
    objective: str | None = None
    """The InferenceObjective the request names (sent as :data:`OBJECTIVE_HEADER`), or None."""
    stream: bool = True
    """Sent with ``stream: true`` (and usage in the stream), else answered whole."""
    ends_itself: bool = False
    """The client sends :attr:`sent_max_tokens` (not the answer's length, nor ``ignore_eos``) and
    the model ends the answer after :attr:`max_tokens` tokens by itself (WorkloadSpec.max_tokens)."""
    sent_max_tokens: int | None = None
    """With :attr:`ends_itself`: the ``max_tokens`` the client sends, or None for none."""
    slo_ttft: float | None = None
    """The TTFT bound the client sends (seconds, as ``x-llm-d-slo-ttft-ms``), or None."""
    slo_tpot: float | None = None
    """The TPOT bound the client sends (seconds, as ``x-llm-d-slo-tpot-ms``), or None."""
    after: int | None = None
    """The index of the request whose answer must end before this one is sent (the session's
    previous turn, :attr:`SharedPrefixWorkload.turn_after_answer`), or None."""

    @property
    def headers(self) -> dict[str, str]:
        out = {OBJECTIVE_HEADER: self.objective} if self.objective is not None else {}
        if self.slo_ttft is not None:
            out[SLO_TTFT_HEADER] = f"{self.slo_ttft * 1000.0:g}"
        if self.slo_tpot is not None:
            out[SLO_TPOT_HEADER] = f"{self.slo_tpot * 1000.0:g}"
        return out

    def body(self, *, stream: bool | None = None) -> dict[str, Any]:
        """The request's JSON body; ``stream`` overrides :attr:`stream`."""
        body: dict[str, Any] = {"model": self.model}
        if not self.ends_itself:
            body["max_tokens"] = self.max_tokens
            body["ignore_eos"] = True
        elif self.sent_max_tokens is not None:
            body["max_tokens"] = self.sent_max_tokens
        if self.messages is not None:
            body["messages"] = list(self.messages)
        else:
            body["prompt"] = self.prompt
        if self.stream if stream is None else stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.messages is not None else "/v1/completions"


def _pick_model(rng: random.Random, models: Sequence[ModelShare]) -> str:
    return rng.choices([m.name for m in models], weights=[m.weight for m in models])[0]


def _shared_prefix(
    w: SharedPrefixWorkload, rng: random.Random, epochs: int = 1, text: TextFn = _text
) -> list[BenchRequest]:
    systems = [f"tenant {t}: " + text(rng, w.system_prompt_tokens) for t in range(w.tenants)]
    tenant_models = [_pick_model(rng, w.models) for _ in range(w.tenants)]
    if w.staggered:
        return _staggered(w, rng, systems, tenant_models, epochs * w.sessions * w.turns, text)
    out: list[BenchRequest] = []
    for _ in range(epochs):  # later epochs: fresh sessions of the same tenants
        out.extend(_sessions(w, rng, systems, tenant_models, len(out), text))
    return out


def _staggered(
    w: SharedPrefixWorkload,
    rng: random.Random,
    systems: Sequence[str],
    tenant_models: Sequence[str],
    count: int,
    text: TextFn,
) -> list[BenchRequest]:
    # ``sessions`` slots sent in turn; each runs sessions one after another, the first one of
    # slot k from its turn k mod ``turns`` (the turns before are history it starts with)
    slots = w.sessions
    state: list[tuple[int, int, list[dict[str, str]], int]] = []  # tenant, next turn, history, last index
    for k in range(slots):
        tenant = rng.randrange(w.tenants)
        history = [{"role": "system", "content": systems[tenant]}]
        for _ in range(k % w.turns):
            history.append({"role": "user", "content": text(rng, w.question.sample(rng))})
            history.append({"role": "assistant", "content": text(rng, w.answer.sample(rng))})
        state.append((tenant, k % w.turns, history, -1))
    out: list[BenchRequest] = []
    while len(out) < count:
        k = len(out) % slots
        tenant, turn, history, last = state[k]
        if turn == w.turns:  # the slot's next session
            tenant = rng.randrange(w.tenants)
            turn, history, last = 0, [{"role": "system", "content": systems[tenant]}], -1
        after = last if last >= 0 and w.turn_after_answer else None
        out.append(_turn(w, rng, history, tenant_models[tenant], tenant, len(out), after, text))
        state[k] = (tenant, turn + 1, history, len(out) - 1)
    return out


def _sessions(
    w: SharedPrefixWorkload,
    rng: random.Random,
    systems: Sequence[str],
    tenant_models: Sequence[str],
    first_index: int,
    text: TextFn = _text,
) -> list[BenchRequest]:
    # Sessions interleave: every session's first turn, then every second turn, and so on, the way
    # conversations overlap in time; a turn's history holds the earlier turns' questions and answers.
    histories: list[list[dict[str, str]]] = []
    tenants = [rng.randrange(w.tenants) for _ in range(w.sessions)]
    for tenant in tenants:
        histories.append([{"role": "system", "content": systems[tenant]}])
    out: list[BenchRequest] = []
    for turn in range(w.turns):
        for s, tenant in enumerate(tenants):
            after = first_index + (turn - 1) * w.sessions + s if turn and w.turn_after_answer else None
            index = first_index + len(out)
            out.append(_turn(w, rng, histories[s], tenant_models[tenant], tenant, index, after, text))
    return out


def _turn(
    w: SharedPrefixWorkload,
    rng: random.Random,
    history: list[dict[str, str]],
    model: str,
    tenant: int,
    index: int,
    after: int | None,
    text: TextFn,
) -> BenchRequest:
    """One turn of a session: a question added to ``history``, the request carrying it, then the
    answer added for the turns after."""
    history.append({"role": "user", "content": text(rng, w.question.sample(rng))})
    answer_len = w.answer.sample(rng)
    request = BenchRequest(
        index=index,
        model=model,
        max_tokens=answer_len,
        messages=tuple(dict(m) for m in history),
        group=f"tenant-{tenant}",
        after=after,
    )
    history.append({"role": "assistant", "content": text(rng, answer_len)})
    return request


def _independent(
    rng: random.Random,
    count: int,
    prompt: LengthDist,
    answer: LengthDist,
    models: Sequence[ModelShare],
    chat: bool,
    text_fn: TextFn = _text,
    samples: int = 1,
) -> list[BenchRequest]:
    """``count`` requests; each prompt (and model) is drawn once for ``samples`` requests in a row,
    which then share it whole (group ``prompt-N``), else each request draws its own."""
    out = []
    model = text = ""
    for i in range(count):
        if i % samples == 0:
            model = _pick_model(rng, models)
            text = text_fn(rng, prompt.sample(rng))
        messages = ({"role": "user", "content": text},) if chat else None
        out.append(
            BenchRequest(
                index=i,
                model=model,
                max_tokens=answer.sample(rng),
                prompt=None if chat else text,
                messages=messages,
                group=model if samples == 1 else f"prompt-{i // samples}",
            )
        )
    return out


def _classes(w: ClassesWorkload, rng: random.Random, count: int, text: TextFn = _text) -> list[BenchRequest]:
    out = []
    weights = [c.weight for c in w.classes]
    for i in range(count):
        kind = rng.choices(w.classes, weights=weights)[0]
        (one,) = _independent(rng, 1, kind.prompt, kind.answer, kind.models, w.api == "chat", text)
        out.append(replace(one, index=i, group=kind.name, slo_ttft=kind.slo_ttft, slo_tpot=kind.slo_tpot))
    return out


def _with_objectives(spec: WorkloadSpec, requests: list[BenchRequest]) -> list[BenchRequest]:
    """Give each request an objective drawn by weight from its own seeded stream, so the requests
    themselves are those of the workload without objectives."""
    if not spec.objectives:
        return requests
    rng = random.Random(f"{spec.seed}:objectives")
    names = [o.name for o in spec.objectives]
    weights = [o.weight for o in spec.objectives]
    return [replace(r, objective=rng.choices(names, weights=weights)[0]) for r in requests]


def _with_streaming(spec: WorkloadSpec, requests: list[BenchRequest]) -> list[BenchRequest]:
    """Mark the share of requests that are not streamed, drawn from its own seeded stream, so the
    requests themselves are those of the workload with every request streamed."""
    if spec.streamed >= 1.0:
        return requests
    rng = random.Random(f"{spec.seed}:streamed")
    return [replace(r, stream=rng.random() < spec.streamed) for r in requests]


def _with_max_tokens(spec: WorkloadSpec, requests: list[BenchRequest]) -> list[BenchRequest]:
    """The ``max_tokens`` the clients send (WorkloadSpec.max_tokens); an answer longer than a
    cap stops at it."""
    if spec.max_tokens == "answer":
        return requests
    cap = None if spec.max_tokens == "none" else spec.max_tokens
    return [
        replace(r, ends_itself=True, sent_max_tokens=cap, max_tokens=min(r.max_tokens, cap or r.max_tokens))
        for r in requests
    ]


def _with_clients(spec: WorkloadSpec, requests: list[BenchRequest]) -> list[BenchRequest]:
    """What the clients choose beside the requests' text: objectives, streaming, ``max_tokens``."""
    return _with_max_tokens(spec, _with_streaming(spec, _with_objectives(spec, requests)))


def generate(spec: WorkloadSpec) -> list[BenchRequest]:
    """The workload's requests, identical for identical specs (seeded)."""
    if spec.phases:
        raise WorkloadError(
            f"workload {spec.name}: phases switch at points of a measured window, which only a "
            "steady-state run (infergate bench --twin without --limit) has"
        )
    rng = random.Random(spec.seed)
    w = spec.workload
    if isinstance(w, SharedPrefixWorkload):
        return _with_clients(spec, _shared_prefix(w, rng))
    if isinstance(w, MixWorkload):
        return _with_clients(
            spec, _independent(rng, w.requests, w.prompt, w.answer, w.models, w.api == "chat")
        )
    if isinstance(w, ClassesWorkload):
        return _with_clients(spec, _classes(w, rng, w.requests))
    requests = _independent(
        rng, w.bursts * w.burst_size, w.prompt, w.answer, w.models, False, samples=w.samples
    )
    return _with_clients(
        spec,
        [
            BenchRequest(
                index=r.index,
                model=r.model,
                max_tokens=r.max_tokens,
                prompt=r.prompt,
                group=r.group,
                offset=(r.index // w.burst_size) * w.period_s,
            )
            for r in requests
        ],
    )


def stream(spec: WorkloadSpec, count: int, *, seed: int = 0) -> list[BenchRequest]:
    """At least ``count`` requests of the workload's pattern, for a run of a given duration.

    Independent requests are simply more of them; session workloads repeat their pattern in epochs
    of ``sessions`` interleaved sessions over the same tenants (same system prompts), so a long run
    keeps the workload's mix of turn depths and prefix sharing (``staggered`` ones follow each
    session with a fresh one instead). ``seed`` is mixed into the
    workload's own, so every load point can get a fresh stream. No fixed offsets: the runner's
    arrival process places every request (bursts: see the runner). A workload with ``phases``
    gives each phase a share of ``count`` as large as its share of the window
    (:func:`stream_phases` with counts of its own places them by time).
    """
    if spec.phases:
        return stream_phases(spec, _phase_counts(spec, count), seed=seed)
    sub = spec.model_copy(update={"seed": spec.seed * 1_000_003 + seed}) if seed else spec
    rng = random.Random(sub.seed)
    w = spec.workload
    if isinstance(w, SharedPrefixWorkload):
        per_epoch = w.sessions * w.turns
        return _with_clients(
            sub, _shared_prefix(w, rng, epochs=max(1, -(-count // per_epoch)), text=_text_fast)
        )
    if isinstance(w, ClassesWorkload):
        return _with_clients(sub, _classes(w, rng, count, _text_fast))
    chat = isinstance(w, MixWorkload) and w.api == "chat"
    samples = w.samples if isinstance(w, BurstWorkload) else 1
    return _with_clients(
        sub, _independent(rng, count, w.prompt, w.answer, w.models, chat, _text_fast, samples)
    )


def _phase_counts(spec: WorkloadSpec, count: int) -> list[int]:
    ends = [p.at for p in spec.phases] + [1.0]
    cuts = [round(count * at) for at in ends]
    return [b - a for a, b in itertools.pairwise([0, *cuts])]


def stream_phases(spec: WorkloadSpec, counts: Sequence[int], *, seed: int = 0) -> list[BenchRequest]:
    """``counts[i]`` requests of phase ``i`` (0: ``spec.workload``), one phase after another,
    numbered in order (a session turn's ``after`` moves with it). Phase ``i`` draws from the
    workload's seed shifted by ``i``, so no later phase repeats an earlier one's text."""
    bodies = (spec.workload, *(p.workload for p in spec.phases))
    if len(counts) != len(bodies):
        raise ValueError(f"workload {spec.name}: {len(bodies)} phases, {len(counts)} counts")
    out: list[BenchRequest] = []
    for i, (body, n) in enumerate(zip(bodies, counts, strict=True)):
        if n <= 0:
            continue
        one = spec.model_copy(update={"workload": body, "phases": (), "seed": spec.seed + 7919 * i})
        base = len(out)
        out.extend(
            replace(r, index=base + r.index, after=None if r.after is None else base + r.after)
            for r in stream(one, n, seed=seed)[:n]
        )
    return out


def load_workload(source: str | Path) -> WorkloadSpec:
    """Read a workload from a YAML file or by the name of a built-in one."""
    path = Path(source)
    if not path.exists():
        builtin = builtin_workloads()
        if str(source) not in builtin:
            known = ", ".join(sorted(builtin))
            raise WorkloadError(f"{source}: no such file and no built-in workload of that name ({known})")
        path = builtin[str(source)]
    try:
        data = yaml.safe_load(path.read_text())
        return WorkloadSpec.model_validate(data)
    except yaml.YAMLError as exc:
        raise WorkloadError(f"{path}: not valid YAML: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise WorkloadError(f"{path}: {loc}: {first['msg']}") from exc


def builtin_workloads() -> dict[str, Path]:
    """Bundled workloads by name (the file stem)."""
    folder = resources.files("infergate.bench") / "workloads"
    return {
        Path(str(entry)).stem: Path(str(entry)) for entry in folder.iterdir() if str(entry).endswith(".yaml")
    }
