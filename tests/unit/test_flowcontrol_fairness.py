"""``global-strict`` fairness: a band's flows served as one queue, in the ordering's order.

llm-d-router's default ``global-strict-fairness-policy`` (round-robin is infergate's default):
the flow whose head comes first goes next, however many requests it already had served, so one
tenant's burst is served before a later request of another tenant. ``edf-ordering-policy`` maps
onto first come first served (every request has the same TTL).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infergate.config.picker import parse_picker_config
from infergate.config.picker_sections import apply_sections
from infergate.config.settings import Settings
from infergate.errors import ConfigError
from infergate.flowcontrol import FlowControlConfig, PriorityQueues, QueuedItem
from infergate.types import InferenceRequest


def _item(seq: int, flow: str, *, priority: int = 0, ttft: float | None = None) -> QueuedItem:
    request = InferenceRequest(
        request_id=f"{flow}{seq}",
        model="m",
        target_model="m",
        fairness_id=flow,
        priority=priority,
        arrived_at=float(seq),
        ttft_slo=ttft,
    )
    return QueuedItem(request=request, size=1, enqueued_at=float(seq), deadline=None, seq=seq)


def _drain(q: PriorityQueues) -> list[str]:
    out = []
    while (item := q.pop()) is not None:
        out.append(item.request.request_id)
    return out


def _burst(q: PriorityQueues) -> PriorityQueues:
    for seq, flow in enumerate(["a", "a", "a", "b", "a", "b"]):
        q.push(_item(seq, flow))
    return q


def test_global_strict_serves_the_band_in_arrival_order_across_flows() -> None:
    assert _drain(_burst(PriorityQueues(fairness="global-strict"))) == ["a0", "a1", "a2", "b3", "a4", "b5"]
    # round-robin (the default) lets b through after each of a's
    assert _drain(_burst(PriorityQueues())) == ["a0", "b3", "a1", "b5", "a2", "a4"]


def test_global_strict_follows_the_deadline_ordering_and_the_bands() -> None:
    q = PriorityQueues("slo-deadline", "global-strict")
    q.push(_item(0, "a", ttft=9.0))  # due 9
    q.push(_item(1, "b", ttft=1.0))  # due 2
    q.push(_item(2, "a", ttft=0.5))  # due 2.5: ahead of a0 in flow a
    q.push(_item(3, "c"))  # no bound: last
    q.push(_item(4, "d", priority=5))  # a higher band goes first whatever its due
    assert _drain(q) == ["d4", "b1", "a2", "a0", "c3"]


def test_global_strict_peek_is_what_pop_returns_and_removal_keeps_the_rotation_consistent() -> None:
    q = _burst(PriorityQueues(fairness="global-strict"))
    head = q.peek()
    assert head is not None and head.request.request_id == "a0"
    b3 = next(i for i in q if i.request.request_id == "b3")
    assert q.remove(b3)
    assert _drain(q) == ["a0", "a1", "a2", "a4", "b5"]
    assert len(q) == 0 and q.snapshot() == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 2)), min_size=1, max_size=40))
def test_global_strict_pops_each_band_in_sequence_order(pushes: list[tuple[str, int]]) -> None:
    q = PriorityQueues(fairness="global-strict")
    for seq, (flow, priority) in enumerate(pushes):
        q.push(_item(seq, flow, priority=priority))
    popped = []
    while (item := q.pop()) is not None:
        popped.append((-item.priority, item.seq))
    assert popped == sorted(popped)
    assert len(q) == 0 and q.bytes == 0


def test_fairness_is_checked() -> None:
    with pytest.raises(ValueError, match="fairness"):
        PriorityQueues(fairness="lottery")
    with pytest.raises(ValueError, match="fairness"):
        FlowControlConfig(fairness="lottery")


def _fc(text: str) -> tuple[str, str]:
    s = apply_sections(parse_picker_config("featureGates: [flowControl]\n" + text), Settings()).flow_control
    return s.fairness, s.ordering


def test_endpoint_picker_configs_choose_the_fairness_and_map_edf() -> None:
    plugins = "plugins: [{type: queue-scorer}, {type: max-score-picker}"
    band = "flowControl: {defaultPriorityBand: {fairnessPolicyRef: %s, orderingPolicyRef: %s}}\n"
    assert _fc(plugins + "]\n") == ("round-robin", "fcfs")
    assert _fc(plugins + "]\n" + band % ("global-strict-fairness-policy", "edf-ordering-policy")) == (
        "global-strict",
        "fcfs",
    )
    # declared under the reference's default name, it is the default fairness
    assert _fc(plugins + ", {type: global-strict-fairness-policy}]\n") == ("global-strict", "fcfs")
    mixed = (
        plugins
        + "]\nflowControl:\n  defaultPriorityBand: {fairnessPolicyRef: global-strict-fairness-policy}\n"
        "  priorityBands: [{priority: 5, fairnessPolicyRef: round-robin-fairness-policy}]\n"
    )
    with pytest.raises(
        ConfigError, match=r"priorityBands\[0\].fairnessPolicyRef: bands whose flows take turns"
    ):
        _fc(mixed)
    with pytest.raises(ConfigError, match="'weighted-fairness' is not supported"):
        _fc(plugins + "]\n" + band % ("weighted-fairness", "fcfs-ordering-policy"))
