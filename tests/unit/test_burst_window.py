"""The ``burst-prefix-cache-producer``'s window on the request path: llm-d-router's
``deploy/config/epp-burst-prefix-cache-config.yaml`` loaded verbatim and driven through the
Director, with the window's timer in the test's hands (no sleeps, no wall clock)."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from infergate.app.core import build_core
from infergate.app.workers.metrics import MergedExposition, export_families
from infergate.config.picker import EndpointPickerConfig, default_picker_config, parse_picker_config
from infergate.config.settings import Settings
from infergate.datastore.store import Datastore
from infergate.requestcontrol.burst import BurstWindow
from infergate.requestcontrol.director import Director, RequestContext
from infergate.scheduling.engine.scheduler import build_scheduler
from infergate.scheduling.plugins.burst_prefix import BurstPrefixProducer, BurstPrefixScorer
from infergate.telemetry import GatewayMetrics
from infergate.types import EndpointMeta, EndpointMetrics, InferenceRequest, PoolSpec
from tests.support import eventually

# llm-d-router v0.10 deploy/config/epp-burst-prefix-cache-config.yaml, verbatim
BURST_CONFIG = """\
# Sample EPP config: burst prefix cache pipeline
#   token-producer -> burst-prefix-cache-producer -> prefix-cache-scorer
#
# Co-locates bursts of prompt-sharing requests (e.g. RL rollout group samples)
# onto shared replicas so a shared prefix is prefilled once instead of scattered
# across replicas on a cold cache.
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: token-producer
    parameters:
      modelName: hf-repo/model-name           # set to the model used in the vLLM deployment
      vllm:
        url: http://<vllm-service>.<namespace>.svc.cluster.local:8000
  - type: single-profile-handler
  - type: decode-filter
  - type: burst-prefix-cache-producer
    parameters:
      windowDurationMs: 100       # batch window T
      maxPerReplica: -1           # k; -1 sends all samples of a group to one replica
      minColocateBlocks: 0        # >0 co-locates distinct groups sharing >= N leading blocks; 0 = load-balanced
  - type: prefix-cache-scorer
    parameters:
      prefixMatchInfoProducerName: burst-prefix-cache-producer
  - type: load-aware-scorer
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - pluginRef: decode-filter
      - pluginRef: prefix-cache-scorer
        weight: 2.0
      - pluginRef: load-aware-scorer
        weight: 1.0
      - pluginRef: max-score-picker
"""  # noqa: E501 (verbatim)

MODEL = "hf-repo/model-name"


class FakeClock:
    def now(self) -> float:
        return 100.0


class Timers:
    """A fake ``loop.call_later``: records each timer, fired by the test."""

    def __init__(self) -> None:
        self.armed: list[tuple[float, Callable[[], None], Timer]] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer()
        self.armed.append((delay, callback, timer))
        return timer

    def fire(self) -> None:
        """Run every armed, uncancelled timer (each window's seal)."""
        armed, self.armed = self.armed, []
        for _, callback, timer in armed:
            if not timer.cancelled:
                callback()


class Timer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class PromptTokens:
    """A token producer standing in for the model server's renderer: one id per character."""

    async def token_ids(self, request: InferenceRequest) -> tuple[int, ...] | None:
        return tuple(ord(c) for c in request.prompt)


def store(n: int = 4) -> Datastore:
    clock = FakeClock()
    ds = Datastore(clock, staleness=2.0)
    for i in range(n):
        meta = EndpointMeta(name=f"pod{i}", address="127.0.0.1", port=9000 + i, pool="p")
        ds.upsert_endpoint(meta)
        ds.update_metrics(meta.key, EndpointMetrics(updated_at=clock.now()))
        ds.set_models(meta.key, frozenset({MODEL}))
    return ds


def director(
    config: str = BURST_CONFIG, *, metrics: GatewayMetrics | None = None
) -> tuple[Director, BurstWindow, Timers]:
    picker = parse_picker_config(config)
    sched = build_scheduler(picker, rng=random.Random(3), clock=FakeClock())
    producer = sched.plugin("burst-prefix-cache-producer")
    assert isinstance(producer, BurstPrefixProducer)
    timers = Timers()
    window = BurstWindow(producer, call_later=timers, metrics=metrics)
    d = Director(datastore=store(), scheduler=sched, flow=None, clock=FakeClock(), rng=random.Random(5))
    d.set_token_producer(PromptTokens())
    d.set_burst_stage(window)
    return d, window, timers


def body(prompt: str) -> bytes:
    return json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 4}).encode()


async def send_together(
    d: Director, window: BurstWindow, prompts: list[str]
) -> list[asyncio.Task[RequestContext]]:
    """Start one request per prompt and wait until all of them are held in the window."""
    tasks = [
        asyncio.create_task(
            d.handle_request(path="/v1/completions", headers={"x-request-id": f"r{i}"}, body=body(p))
        )
        for i, p in enumerate(prompts)
    ]
    await eventually(lambda: window.waiting == len(prompts), what="every request in the window")
    return tasks


async def targets(tasks: list[asyncio.Task[RequestContext]]) -> list[str]:
    return [ctx.target.meta.name for ctx in await asyncio.gather(*tasks)]


PROMPT = "Solve: a rollout group's shared prompt, sampled eight times. " * 4


async def test_the_samples_of_one_prompt_wait_for_the_window_then_land_on_one_replica() -> None:
    d, window, timers = director()
    tasks = await send_together(d, window, [PROMPT] * 8)
    # held: one timer for the window, armed for windowDurationMs by its first request only
    assert [delay for delay, _, _ in timers.armed] == [0.1]
    assert not any(t.done() for t in tasks)
    timers.fire()
    assert Counter(await targets(tasks)) == {"pod0": 8}
    assert window.windows == 1 and window.waiting == 0


async def test_a_cap_per_replica_fills_three_three_two() -> None:
    d, window, timers = director(BURST_CONFIG.replace("maxPerReplica: -1", "maxPerReplica: 3"))
    tasks = await send_together(d, window, [PROMPT] * 8)
    timers.fire()
    assert sorted(Counter(await targets(tasks)).values()) == [2, 3, 3]


async def test_distinct_prompts_are_spread() -> None:
    d, window, timers = director()
    groups = [f"group {g}: " + PROMPT for g in range(4)]
    tasks = await send_together(d, window, [p for p in groups for _ in range(2)])
    timers.fire()
    placed = await targets(tasks)
    # each group together, the four groups on four replicas (the window's load balances them)
    assert all(placed[2 * g] == placed[2 * g + 1] for g in range(4))
    assert len(set(placed)) == 4
    # prompts with no sibling in the window get no affinity: the load scorer alone decides
    d, window, timers = director()
    producer = window.producer
    tasks = await send_together(d, window, [f"alone {i}: " + PROMPT for i in range(8)])
    timers.fire()
    placed = await targets(tasks)
    assert len(producer.assignments) == 0
    assert len(set(placed)) > 1


async def test_a_request_waits_for_its_window_and_no_longer() -> None:
    d, window, timers = director()
    first = await send_together(d, window, [PROMPT])
    # a request arriving later joins the same window: it waits only for what is left of it
    second = asyncio.create_task(d.handle_request(path="/v1/completions", headers={}, body=body(PROMPT)))
    await eventually(lambda: window.waiting == 2, what="the second request in the window")
    assert len(timers.armed) == 1
    timers.fire()
    assert (await first[0]).target.key == (await second).target.key
    # the next request opens a new window of its own
    third = await send_together(d, window, [PROMPT])
    assert len(timers.armed) == 1
    timers.fire()
    await third[0]
    assert window.windows == 2


async def test_a_cancelled_request_leaves_the_window() -> None:
    d, window, timers = director()
    tasks = await send_together(d, window, [PROMPT] * 3)
    tasks[0].cancel()
    await eventually(lambda: window.waiting == 2, what="the cancelled request to leave")
    timers.fire()
    assert len(set(await targets(tasks[1:]))) == 1
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    # the last waiter of a window leaving disarms its timer
    lone = await send_together(d, window, [PROMPT])
    lone[0].cancel()
    await eventually(lambda: window.waiting == 0, what="the window to empty")
    assert all(t.cancelled for _, _, t in timers.armed)


async def test_a_full_window_serves_the_request_without_affinity() -> None:
    d, window, timers = director(BURST_CONFIG.replace("minColocateBlocks: 0", "maxBatchSize: 2"))
    tasks = await send_together(d, window, [PROMPT] * 2)
    # the third finds the window full: scheduled at once, no affinity, counted
    extra = await d.handle_request(path="/v1/completions", headers={"x-request-id": "x"}, body=body(PROMPT))
    assert window.overflowed == 1
    assert extra.result.plugin_scores["prefix-cache-scorer"] == {e: 0.0 for e in extra.result.scores}
    timers.fire()
    assert len(set(await targets(tasks))) == 1


OVERFLOW = "infergate_burst_window_overflow_total"
SMALL_BATCH = BURST_CONFIG.replace("minColocateBlocks: 0", "maxBatchSize: 2")


def overflows(text: str) -> float | None:
    """The overflow counter's value in a rendered exposition; None: no such series."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == OVERFLOW:
                assert sample.labels == {}  # one window per process: nothing to tell apart
                return sample.value
    return None


async def test_each_request_beyond_max_batch_size_counts_once_on_metrics() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    d, window, timers = director(SMALL_BATCH, metrics=metrics)
    assert overflows(metrics.render().decode()) == 0.0  # exported from the start, for increase()
    tasks = await send_together(d, window, [PROMPT] * 2)  # up to maxBatchSize: no overflow
    assert overflows(metrics.render().decode()) == 0.0
    for i in range(3):
        await d.handle_request(path="/v1/completions", headers={"x-request-id": f"x{i}"}, body=body(PROMPT))
        assert overflows(metrics.render().decode()) == i + 1
    assert window.overflowed == 3  # the log's running count agrees
    timers.fire()
    await targets(tasks)
    # a fresh window has room again: a full batch in it counts nothing
    tasks = await send_together(d, window, [PROMPT] * 2)
    timers.fire()
    await targets(tasks)
    assert overflows(metrics.render().decode()) == 3.0


async def test_the_built_gateway_exports_its_windows_overflows_on_metrics() -> None:
    """build_core hands the window the gateway's metrics; the scrape shows the series, its help
    and its value, and a gateway without the producer exports no such series."""

    def built(picker: EndpointPickerConfig) -> tuple[GatewayMetrics, BurstWindow | None]:
        metrics = GatewayMetrics(CollectorRegistry())
        core = build_core(
            store(),
            PoolSpec(name="pool"),
            picker=picker,
            settings=Settings(),
            metrics=metrics,
            clock=FakeClock(),
            rng=random.Random(1),
        )
        return metrics, core.burst

    metrics, window = built(default_picker_config(lora=False))
    assert window is None and overflows(metrics.render().decode()) is None
    metrics, window = built(parse_picker_config(SMALL_BATCH))
    assert window is not None
    request = InferenceRequest(request_id="r", model=MODEL, target_model=MODEL, prompt=PROMPT)
    held = [asyncio.create_task(window.place(request, [])) for _ in range(2)]
    await eventually(lambda: window.waiting == 2, what="a full window")
    await window.place(request, [])  # the third goes on at once
    window.close()  # releases the two held ones (and disarms the loop's timer): no waiting on it
    await asyncio.gather(*held)
    text = metrics.render().decode()
    lines = text.splitlines()
    assert f"# TYPE {OVERFLOW} counter" in lines
    assert any(line.startswith(f"# HELP {OVERFLOW} Requests that found") for line in lines)
    assert f"{OVERFLOW} 1.0" in lines


def test_the_gateway_process_sums_its_workers_overflow_counters() -> None:
    """With ``--workers N`` each worker counts on its own registry; the merged ``/metrics`` adds
    them up (a counter, not one of the gauges shown as the highest) and keeps a dead worker's."""
    parent = GatewayMetrics(CollectorRegistry())
    parent.burst_window_overflow()  # the gateway process builds a window too, and serves nothing
    merged = MergedExposition(parent.registry)
    for worker, count in enumerate((2, 5)):
        m = GatewayMetrics(CollectorRegistry())
        m.burst_window_overflow().inc(count)
        merged.update(worker, export_families(m.registry))
    assert overflows(generate_latest(merged).decode()) == 7.0
    merged.retire(1)
    merged.update(1, export_families(GatewayMetrics(CollectorRegistry()).registry))
    assert overflows(generate_latest(merged).decode()) == 7.0


async def test_closing_releases_the_waiters_and_stops_batching() -> None:
    d, window, _ = director()
    tasks = await send_together(d, window, [PROMPT] * 2)
    window.close()
    assert len(set(await targets(tasks))) == 1
    after = await d.handle_request(path="/v1/completions", headers={}, body=body(PROMPT))
    assert after.target is not None and window.waiting == 0 and window.windows == 1


async def test_hold_closes_the_window_when_cancelled() -> None:
    d, window, timers = director()
    tasks = await send_together(d, window, [PROMPT] * 2)
    held = asyncio.create_task(window.hold())
    await asyncio.sleep(0)  # one step of the loop: the task is inside hold() (not a timed wait)
    held.cancel()  # the gateway's shutdown
    with pytest.raises(asyncio.CancelledError):
        await held
    assert len(set(await targets(tasks))) == 1  # released without the timer
    assert not timers.armed or all(t.cancelled for _, _, t in timers.armed)


async def test_a_request_without_prefix_does_not_wait() -> None:
    _, window, timers = director()
    empty = InferenceRequest(request_id="r", model=MODEL, target_model=MODEL, prompt="")
    await window.place(empty, [])
    assert timers.armed == [] and window.waiting == 0


def test_build_core_wires_the_window_only_when_configured() -> None:
    def core(picker: EndpointPickerConfig) -> BurstWindow | None:
        return build_core(
            store(),
            PoolSpec(name="pool"),
            picker=picker,
            settings=Settings(),
            metrics=GatewayMetrics(CollectorRegistry()),
            clock=FakeClock(),
            rng=random.Random(1),
        ).burst

    burst = core(parse_picker_config(BURST_CONFIG))
    assert burst is not None and burst.producer.params.window_duration_ms == 100
    assert core(default_picker_config(lora=False)) is None


def test_the_published_config_scores_with_the_burst_scorer() -> None:
    sched = build_scheduler(parse_picker_config(BURST_CONFIG))
    assert isinstance(sched.plugin("prefix-cache-scorer"), BurstPrefixScorer)
