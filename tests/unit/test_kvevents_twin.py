"""The twin feeds each engine's KV events, in vLLM's wire form, into the precise scorer's index:
at the end of a run the index holds exactly the blocks each engine has cached, and the scorer
decided from events (not its approximate fallback), by the engines' own block hashes, and found
the prompts' cached prefixes (the twin tokenizes each body as a model server does, BOS first on a
completion, so the scorer's blocks line up with the engines')."""

from __future__ import annotations

import pytest

import infergate.bench.twin as twin
import infergate.bench.twin_pool as twin_pool
from infergate.bench.workloads import generate, load_workload
from infergate.scheduling.engine.scheduler import Scheduler
from infergate.scheduling.plugins.precise_prefix import PRECISE_MATCH, PrecisePrefixScorer
from infergate.scheduling.sdk.framework import CycleState
from infergate.tokenization.builtin import Tokenizer


def test_index_mirrors_every_engines_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    captured: list[tuple[PrecisePrefixScorer, list[object]]] = []
    feed = twin_pool.feed_kv_events

    def spy(scheduler: Scheduler, replicas: list[object], model: str) -> None:
        feed(scheduler, replicas, model)  # type: ignore[arg-type]
        scorer = scheduler.plugin("prefix-cache-scorer")
        assert isinstance(scorer, PrecisePrefixScorer)
        captured.append((scorer, list(replicas)))

    monkeypatch.setattr(twin, "feed_kv_events", spy)
    decided_by_events: list[bool] = []
    longest: list[int] = []
    score = PrecisePrefixScorer.score

    def counting(self: PrecisePrefixScorer, request, candidates, state: CycleState):
        out = score(self, request, candidates, state)
        match = state.get(PRECISE_MATCH)
        assert match is not None
        decided_by_events.append(all(run is not None for run in match.runs.values()))
        longest.append(max((run or 0 for run in match.runs.values()), default=0))
        return out

    monkeypatch.setattr(PrecisePrefixScorer, "score", counting)
    requests = generate(load_workload("many-tenants"))[:240]
    offsets = [i / 6 for i in range(len(requests))]
    result = twin.run_twin(
        requests,
        offsets,
        strategy="precise-prefix",
        config=twin.TwinConfig(replicas=4, adapters=(), num_gpu_blocks=2000),
    )
    assert all(r.status == 200 for r in result.records)
    ((scorer, replicas),) = captured
    index = scorer.index
    assert index.stats.batches > 0
    assert (index.stats.resyncs, index.stats.orphan_blocks, scorer.subscriber.stats.malformed) == (0, 0, 0)
    for r in replicas:
        cached = len(r.engine.pool._cached)  # type: ignore[attr-defined]
        assert cached > 0
        assert index.blocks(r.key) == cached  # type: ignore[attr-defined]
    # every replica publishes from its first step: all but the first few decisions read events
    assert sum(decided_by_events) >= len(decided_by_events) - 4
    for r in replicas:
        scheme = index.scheme(r.key)  # type: ignore[attr-defined]
        assert scheme is not None and scheme.algo == "sha256"  # the engines' default scheme
    # 160 tenants' 3,000-token system prompts, two turns each: a second turn finds its first turn's
    # blocks (at least the system prompt's 187) unless they were evicted in between
    found = [n for n in longest if n >= 3000 // 16]
    assert len(found) >= len(longest) // 6, (len(found), len(longest))


def test_completion_prompts_line_up_with_the_engines_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Completions get BOS first in the engines as in the simulator's frontend: a tenant's second
    request finds every full block of the shared prompt its first request cached."""
    from infergate.bench.strategies import BASE_MODEL
    from infergate.bench.workloads import BenchRequest

    shared = [" ".join(f"tenant{t} rule{k}" for k in range(200)) for t in range(4)]
    requests = [
        BenchRequest(index=i, model=BASE_MODEL, max_tokens=4, prompt=shared[i % 4] + f" question {i}")
        for i in range(16)
    ]
    runs: list[int] = []
    score = PrecisePrefixScorer.score

    def spy(self: PrecisePrefixScorer, request, candidates, state: CycleState):
        out = score(self, request, candidates, state)
        match = state.get(PRECISE_MATCH)
        assert match is not None
        runs.append(max((r or 0 for r in match.runs.values()), default=0))
        return out

    monkeypatch.setattr(PrecisePrefixScorer, "score", spy)
    result = twin.run_twin(
        requests,
        [float(i) for i in range(16)],  # one at a time: every earlier request's blocks are published
        strategy="precise-prefix",
        config=twin.TwinConfig(replicas=2, adapters=()),
    )
    assert all(r.status == 200 for r in result.records)
    tok = Tokenizer(reverse=False)
    full = [(1 + len(tok.encode(p))) // 16 for p in shared]  # BOS + the shared text, in full blocks
    assert runs[:4] == [0, 0, 0, 0]
    assert all(run >= full[i % 4] - 1 for i, run in enumerate(runs[4:], start=4)), runs
