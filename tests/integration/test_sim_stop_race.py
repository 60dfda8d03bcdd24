"""A stop string found after the engine already ran the request to its length limit.

The HTTP frontend reads engine outputs asynchronously, so under load the engine can finish a request
by length before the frontend has detokenised the step whose text holds a stop string. vLLM decides
the finish reason in its output processor (the frontend), so the request counts as ``stop``; this
test forces that ordering deterministically by not reading any output until the engine is done.
"""

from __future__ import annotations

import pytest

from infergate.simulator.drivers import RealtimeDriver
from infergate.simulator.engine import Engine, EngineConfig, EngineRequest
from infergate.simulator.generation import ChoiceSpec, Delta, choice_events
from infergate.simulator.metrics import SimMetrics
from infergate.tokenization.builtin import Tokenizer
from tests.support import async_wait_for

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def request(rid: str) -> EngineRequest:
    return EngineRequest(rid, Tokenizer().encode("Tell me a story about a cache"), 30, ignore_eos=True)


async def run_choice(driver: RealtimeDriver, spec: ChoiceSpec, *, streaming: bool) -> list[Delta]:
    """Submit, let the engine finish the request entirely, only then read the outputs."""
    engine = driver.engine
    metrics = SimMetrics(engine.stats, model_name=MODEL, max_model_len=engine.config.max_model_len)
    gen = choice_events(driver, Tokenizer(), metrics, spec, streaming=streaming)
    started = gen.__anext__()  # submits, then waits for the first output
    first = await started

    async def engine_done() -> bool:
        return spec.request.request_id not in engine.request_ids()

    await async_wait_for(engine_done, what="the engine to finish the request by length")
    return [first] + [d async for d in gen]


@pytest.mark.parametrize("streaming", [False, True])
async def test_stop_string_counts_as_stop_after_engine_finished_by_length(streaming: bool) -> None:
    engine = Engine(EngineConfig())
    driver = RealtimeDriver(engine, api_overhead=0.0)
    await driver.start()
    try:
        base = await run_choice(driver, ChoiceSpec(0, request("base"), ()), streaming=False)
        text = "".join(d.text for d in base)
        assert base[-1].finish_reason == "length"
        words = text.split()
        stop = " " + words[len(words) * 2 // 3]
        deltas = await run_choice(driver, ChoiceSpec(0, request("cut"), (stop,)), streaming=streaming)
    finally:
        await driver.stop()
    assert "".join(d.text for d in deltas) == text[: text.index(stop)]
    assert deltas[-1].finish_reason == "stop" and deltas[-1].stop_reason == stop
    # the engine had finished "cut" by length, but the frontend's verdict is what vLLM counts
    assert engine.stats().request_success_total == {"stop": 1, "length": 1, "abort": 0}
