"""P/D in the digital twin: a disaggregated request runs its prefill on the prefill replica and its
decode on the decode replica, which pulls the prompt instead of computing it; short prompts stay
on one replica."""

from __future__ import annotations

from infergate.bench.twin import TwinConfig, run_twin
from infergate.bench.workloads import BenchRequest
from infergate.config.picker import parse_picker_config

PICKER = """
plugins:
- type: prefix-cache-scorer
- type: queue-scorer
- type: prefill-filter
- type: decode-filter
- type: disagg-profile-handler
  parameters: {deciders: {prefill: prefix-based-pd-decider}}
- type: prefix-based-pd-decider
  parameters: {nonCachedTokens: 512}
schedulingProfiles:
- name: prefill
  plugins: [{pluginRef: prefill-filter}, {pluginRef: queue-scorer}]
- name: decode
  plugins: [{pluginRef: decode-filter}, {pluginRef: prefix-cache-scorer}, {pluginRef: queue-scorer}]
"""
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def requests(words: int, n: int) -> list[BenchRequest]:
    return [
        BenchRequest(index=i, model=MODEL, max_tokens=16, prompt=f"document {i}: " + "lorem ipsum " * words)
        for i in range(n)
    ]


def test_long_prompts_prefill_on_the_prefill_replica() -> None:
    cfg = TwinConfig(replicas=2, adapters=(), roles=("prefill", "decode"))
    reqs = requests(1500, 6)
    result = run_twin(
        reqs,
        [i * 0.5 for i in range(6)],
        strategy="prefix-only",
        config=cfg,
        picker=parse_picker_config(PICKER),
    )
    assert all(r.status == 200 and r.completion_tokens == 16 for r in result.records)
    assert result.disaggregated == 6
    # each request ran twice: a one-token prefill on 10.0.0.1, then the decode on 10.0.0.2
    assert result.per_endpoint_requests == {"10.0.0.1:8000": 6, "10.0.0.2:8000": 6}


def test_short_prompts_are_not_disaggregated() -> None:
    cfg = TwinConfig(replicas=2, adapters=(), roles=("prefill", "decode"))
    result = run_twin(
        requests(20, 6),
        [i * 0.5 for i in range(6)],
        strategy="prefix-only",
        config=cfg,
        picker=parse_picker_config(PICKER),
    )
    assert result.disaggregated == 0
    assert result.per_endpoint_requests == {"10.0.0.1:8000": 0, "10.0.0.2:8000": 6}
