"""``slo-deadline`` ordering: inside a flow, the earliest arrival + ``x-llm-d-slo-ttft-ms`` first.

The reference's ``slo-deadline-ordering-policy``: requests without a TTFT bound come after every
request with one, equal deadlines first come first served; flows still take turns and bands still
go by priority. Configured by ``flow_control.ordering`` or an EndpointPickerConfig's bands.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infergate.config.picker import parse_picker_config
from infergate.config.picker_sections import apply_sections
from infergate.config.settings import Settings
from infergate.datastore.store import Datastore
from infergate.errors import ConfigError
from infergate.flowcontrol import FlowControlConfig, FlowCore, PriorityQueues, QueuedItem, SaturationDetector
from infergate.flowcontrol.settings import flow_control_from_settings
from infergate.types import EndpointMeta, EndpointMetrics, InferenceRequest


def _item(seq: int, *, arrived: float, ttft: float | None, flow: str = "f", priority: int = 0) -> QueuedItem:
    request = InferenceRequest(
        request_id=f"r{seq}",
        model="m",
        target_model="m",
        fairness_id=flow,
        priority=priority,
        arrived_at=arrived,
        ttft_slo=ttft,
    )
    return QueuedItem(request=request, size=1, enqueued_at=arrived, deadline=None, seq=seq)


def _drain(q: PriorityQueues) -> list[str]:
    out = []
    while (item := q.pop()) is not None:
        out.append(item.request.request_id)
    return out


def test_earliest_deadline_first_and_no_bound_last_within_a_flow() -> None:
    q = PriorityQueues("slo-deadline")
    q.push(_item(0, arrived=0.0, ttft=None))  # no bound: after every bounded request
    q.push(_item(1, arrived=0.0, ttft=8.0))  # due 8.0
    q.push(_item(2, arrived=1.0, ttft=0.5))  # due 1.5
    q.push(_item(3, arrived=0.2, ttft=1.3))  # due 1.5 too, queued later: after r2
    q.push(_item(4, arrived=2.0, ttft=None))
    assert q.oldest_enqueued_at() == 0.0  # r0, at the back of the flow now
    assert _drain(q) == ["r2", "r3", "r1", "r0", "r4"]
    fcfs = PriorityQueues()
    for i, (at, ttft) in enumerate([(0.0, None), (0.0, 8.0), (1.0, 0.5)]):
        fcfs.push(_item(i, arrived=at, ttft=ttft))
    assert _drain(fcfs) == ["r0", "r1", "r2"]


def test_flows_take_turns_and_bands_go_by_priority_whatever_the_deadlines() -> None:
    q = PriorityQueues("slo-deadline")
    q.push(_item(0, arrived=0.0, ttft=9.0, flow="a"))
    q.push(_item(1, arrived=0.0, ttft=0.1, flow="a"))
    q.push(_item(2, arrived=0.0, ttft=5.0, flow="b"))
    q.push(_item(3, arrived=0.0, ttft=None, flow="b", priority=1))
    assert _drain(q) == ["r3", "r1", "r2", "r0"]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 10), st.one_of(st.none(), st.floats(0.01, 10)), st.integers(0, 2)), max_size=40
    )
)
def test_a_flow_pops_in_deadline_order_after_any_removals(ops: list[tuple[float, float | None, int]]) -> None:
    """Also: the request queued longest is known after every push, pop and removal (it is
    remembered, not found by a scan each time)."""
    q = PriorityQueues("slo-deadline")
    live: list[QueuedItem] = []
    for seq, (arrived, ttft, then) in enumerate(ops):
        item = _item(seq, arrived=arrived, ttft=ttft)
        q.push(item)
        live.append(item)
        if then == 1 and len(live) > 1:
            victim = live.pop(seq % len(live))
            assert q.remove(victim)
        elif then == 2:
            got = q.pop()
            assert got is min(live, key=lambda i: i.due)
            live.remove(got)
        assert q.oldest_enqueued_at() == (min(i.enqueued_at for i in live) if live else None)
    popped = [q.pop() for _ in list(live)]
    assert popped == sorted(live, key=lambda i: i.due)
    assert q.oldest_enqueued_at() is None
    # a request with a bound before every request without one
    bounded = [i.request.ttft_slo is not None for i in popped if i is not None]
    assert bounded == sorted(bounded, reverse=True)


def test_the_setting_reaches_flow_control() -> None:
    ds = Datastore()
    ds.upsert_endpoint(EndpointMeta(name="e", address="10.0.0.1", port=8000))
    ds.update_metrics("10.0.0.1:8000", EndpointMetrics(waiting_queue_size=50, updated_at=ds.clock.now()))
    settings_ = Settings().replace({"flow_control.ordering": "slo-deadline"})
    detector, config = flow_control_from_settings(settings_, pool_name="p")
    core = FlowCore(ds, detector=detector, config=config)
    now = ds.clock.now()
    for seq, ttft in enumerate((None, 4.0, 0.3)):
        r = InferenceRequest(request_id=f"r{seq}", model="m", target_model="m", arrived_at=now, ttft_slo=ttft)
        assert core.offer(r, now).item is not None  # saturated: all wait
    ds.update_metrics("10.0.0.1:8000", EndpointMetrics(waiting_queue_size=0, updated_at=ds.clock.now()))
    released = []
    while (item := core.pop_ready(now)) is not None:
        released.append(item.request.request_id)
    assert released == ["r2", "r1", "r0"]
    with pytest.raises(ValueError, match="ordering"):
        FlowControlConfig(ordering="edf")
    with pytest.raises(ValueError, match="ordering"):
        PriorityQueues("lifo")
    assert FlowCore(ds, detector=SaturationDetector()).config.ordering == "fcfs"


CONFIG = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: slo-deadline-ordering-policy, name: deadline}
- {type: queue-scorer}
- {type: max-score-picker}
featureGates: [flowControl]
flowControl:
  defaultPriorityBand: {orderingPolicyRef: deadline}
  priorityBands: [{priority: 10, orderingPolicyRef: slo-deadline-ordering-policy}]
"""


def test_an_endpoint_picker_config_orders_every_band_by_deadline_or_is_refused() -> None:
    assert apply_sections(parse_picker_config(CONFIG), Settings()).flow_control.ordering == "slo-deadline"
    refused = {
        "defaultPriorityBand: {orderingPolicyRef: deadline}": (
            "defaultPriorityBand: {orderingPolicyRef: fcfs-ordering-policy}",
            r"priorityBands\[0\].orderingPolicyRef: bands that order their requests differently",
        ),
        "  defaultPriorityBand: {orderingPolicyRef: deadline}\n": (
            "",
            "defaultPriorityBand.orderingPolicyRef: must name slo-deadline-ordering-policy",
        ),
        "  priorityBands: [{priority: 10, orderingPolicyRef: slo-deadline-ordering-policy}]\n": (
            "",
            None,
        ),
    }
    for old, (new, message) in refused.items():
        text = CONFIG.replace(old, new)
        if message is None:  # the default band alone sets it for every band
            assert (
                apply_sections(parse_picker_config(text), Settings()).flow_control.ordering == "slo-deadline"
            )
            continue
        with pytest.raises(ConfigError, match=message):
            apply_sections(parse_picker_config(text), Settings())
    unused = CONFIG.split("featureGates")[0]
    with pytest.raises(
        ConfigError, match=r"plugins\[deadline\]: slo-deadline-ordering-policy is declared but no band"
    ):
        apply_sections(parse_picker_config(unused), Settings())
