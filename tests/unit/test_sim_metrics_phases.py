"""vLLM's request-phase histograms on a virtual clock, where the engine's timestamps are exact:
e2e = frontend + queue + inference and inference = prefill + decode for every request, and a request
queued behind a full batch shows its wait as queue time, not as prefill."""

from __future__ import annotations

import functools

from infergate.simulator.drivers import VirtualDriver, VirtualLoop
from infergate.simulator.engine import Engine, EngineConfig, EngineRequest, RequestOutput
from infergate.simulator.metrics import SimMetrics


def _sum(metrics: SimMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(f"{name}_sum", {"model_name": "m", "engine": "0"})
    assert value is not None
    return value


def test_phases_partition_each_request() -> None:
    engine = Engine(EngineConfig(max_num_seqs=1))  # one at a time: the second request queues
    loop = VirtualLoop()
    driver = VirtualDriver(engine, loop)
    finals: list[RequestOutput] = []

    def keep(out: RequestOutput) -> None:
        if out.finished:
            finals.append(out)

    for i in range(2):
        req = EngineRequest(f"r{i}", list(range(1000 + i, 1600 + i)), 20, ignore_eos=True)
        loop.call_at(0.0, functools.partial(driver.submit, req, keep))
    loop.run()
    metrics = SimMetrics(engine.stats, model_name="m", max_model_len=4096)
    for out in finals:  # as the HTTP server records a finished request
        metrics.observe_finished(
            arrival=out.arrival_time,
            first_token=out.first_token_time,
            finished=out.now,
            prompt_tokens=out.num_prompt_tokens,
            generated=out.num_generated,
            max_tokens=20,
            scheduled=out.scheduled_time,
            queued=out.queued_time,
            cached_tokens=out.num_cached_tokens,
            preemptions=out.num_preemptions,
        )
    e2e = _sum(metrics, "vllm:e2e_request_latency_seconds")
    queue = _sum(metrics, "vllm:request_queue_time_seconds")
    inference = _sum(metrics, "vllm:request_inference_time_seconds")
    prefill = _sum(metrics, "vllm:request_prefill_time_seconds")
    decode = _sum(metrics, "vllm:request_decode_time_seconds")
    frontend = sum((o.queued_time or 0.0) - o.arrival_time for o in finals)
    assert frontend > 0  # the API server's stage: 10 ms per request, serial
    assert abs(e2e - (frontend + queue + inference)) < 1e-9
    assert abs(inference - (prefill + decode)) < 1e-9
    first, second = sorted(finals, key=lambda o: o.now)
    assert first.scheduled_time == first.queued_time  # admitted at once
    assert second.scheduled_time is not None and second.queued_time is not None
    assert second.scheduled_time >= first.now  # waited for r0 (max_num_seqs 1)
    assert abs(queue - (second.scheduled_time - second.queued_time)) < 1e-12 and queue > 0
