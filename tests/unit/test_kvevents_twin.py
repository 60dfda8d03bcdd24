"""The twin feeds each engine's KV events, in vLLM's wire form, into the precise scorer's index:
at the end of a run the index holds exactly the blocks each engine has cached, and the scorer
decided from events (not its approximate fallback)."""

from __future__ import annotations

import pytest

import infergate.bench.twin as twin
from infergate.bench.workloads import generate, load_workload
from infergate.scheduling.engine.scheduler import Scheduler
from infergate.scheduling.plugins.precise_prefix import PRECISE_MATCH, PrecisePrefixScorer
from infergate.scheduling.sdk.framework import CycleState


def test_index_mirrors_every_engines_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    captured: list[tuple[PrecisePrefixScorer, list[object]]] = []
    feed = twin._feed_kv_events

    def spy(scheduler: Scheduler, replicas: list[object], model: str) -> None:
        feed(scheduler, replicas, model)  # type: ignore[arg-type]
        scorer = scheduler.plugin("prefix-cache-scorer")
        assert isinstance(scorer, PrecisePrefixScorer)
        captured.append((scorer, list(replicas)))

    monkeypatch.setattr(twin, "_feed_kv_events", spy)
    decided_by_events: list[bool] = []
    score = PrecisePrefixScorer.score

    def counting(self: PrecisePrefixScorer, request, candidates, state: CycleState):
        out = score(self, request, candidates, state)
        match = state.get(PRECISE_MATCH)
        assert match is not None
        decided_by_events.append(all(run is not None for run in match.runs.values()))
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
