"""What the Director tells the scheduler about an answer that was not streamed.

Nobody sees such an answer's first token, so the scheduler hears its end-to-end time and token
count (``observe_answer``) instead of a TTFT and a time per token; when that count does not belong
to one answer, or the request failed, it hears that there is nothing to learn.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

import pytest

from infergate.config.picker import default_picker_config
from infergate.requestcontrol.director import Director
from infergate.scheduling.engine.scheduler import Scheduler, build_scheduler
from infergate.types import Endpoint, InferenceRequest, SchedulingResult
from tests.unit.test_director import FakeClock, body, make_store

Call = tuple[object, ...]


class Recording:
    """The gateway's scheduler, with what it is told about outcomes recorded."""

    def __init__(self, inner: Scheduler) -> None:
        self.inner = inner
        self.calls: list[Call] = []

    def schedule(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> SchedulingResult:
        return self.inner.schedule(request, candidates)

    def observe_ttft(self, request_id: str, ttft_seconds: float | None) -> None:
        self.calls.append(("ttft", ttft_seconds))

    def observe_tpot(self, request_id: str, tpot_seconds: float | None) -> None:
        self.calls.append(("tpot", tpot_seconds))

    def observe_answer(self, request_id: str, seconds: float | None, output_tokens: int | None) -> None:
        self.calls.append(("answer", seconds, output_tokens))


def answer(tokens: int | None, choices: int = 1) -> bytes:
    data: dict[str, object] = {"choices": [{"index": i, "text": "x"} for i in range(choices)]}
    if tokens is not None:
        data["usage"] = {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": 3 + tokens}
    return json.dumps(data).encode()


async def told(request: bytes, status: int, response: bytes, ctype: str = "application/json") -> list[Call]:
    """What the scheduler hears about one request answered ``response`` 1.5 s after it came."""
    clock = FakeClock()
    sched = Recording(build_scheduler(default_picker_config(lora=True), rng=random.Random(1), clock=clock))
    d = Director(datastore=make_store(clock), scheduler=sched, flow=None, clock=clock, rng=random.Random(7))
    ctx = await d.handle_request(path="/v1/completions", headers={}, body=request)
    d.handle_response_headers(ctx, status, {"content-type": ctype})
    clock.t += 1.5
    d.handle_response_chunk(ctx, response, end_of_stream=True)
    d.handle_response_complete(ctx)
    return sched.calls


async def test_an_answer_that_came_whole_is_told_with_its_time_and_token_count() -> None:
    assert await told(body(max_tokens=40), 200, answer(40)) == [("answer", pytest.approx(1.5), 40)]


@pytest.mark.parametrize(
    ("request_body", "status", "response"),
    [
        pytest.param(body(max_tokens=40), 200, answer(None), id="no usage"),
        pytest.param(body(max_tokens=40, n=2), 200, answer(80, choices=2), id="two choices"),
        pytest.param(body(prompt=["a", "b"], max_tokens=40), 200, answer(80, choices=2), id="two prompts"),
        pytest.param(body(max_tokens=40), 500, b'{"error":{"message":"boom"}}', id="failed"),
    ],
)
async def test_an_answer_whose_tokens_are_not_one_answers_teaches_nothing(
    request_body: bytes, status: int, response: bytes
) -> None:
    assert await told(request_body, status, response) == [("ttft", None), ("tpot", None)]


async def test_a_streamed_answer_is_told_as_before() -> None:
    events = b'data: {"choices":[{"text":"a"}]}\n\n' * 3
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":3}}\n\ndata: [DONE]\n\n'
    calls = await told(body(stream=True), 200, events + usage, "text/event-stream")
    assert [c[0] for c in calls] == ["ttft", "tpot"] and all(c[1] is not None for c in calls)


class RecordingFlow:
    """Flow control that holds each request 0.4 s, then lets it go; what it is told is recorded."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[Call] = []

    async def admit(self, request: InferenceRequest) -> bool:
        self.clock.t += 0.4
        return True

    def with_room(self, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        return list(endpoints)

    def observe_tpot(self, tpot_seconds: float) -> None:
        self.calls.append(("tpot", tpot_seconds))

    def observe_ttft(self, seconds: float) -> None:
        self.calls.append(("ttft", seconds))


async def test_a_stream_tells_flow_control_its_ttft_from_dispatch_and_its_tpot() -> None:
    """The decode guard spends TTFT slack: it must see what a request takes once let go, not
    the wait it was held for (the scheduler's TTFT correction counts from arrival)."""
    clock = FakeClock()
    sched = Recording(build_scheduler(default_picker_config(lora=True), rng=random.Random(1), clock=clock))
    flow = RecordingFlow(clock)
    d = Director(datastore=make_store(clock), scheduler=sched, flow=flow, clock=clock, rng=random.Random(7))
    ctx = await d.handle_request(path="/v1/completions", headers={}, body=body(stream=True))
    d.handle_response_headers(ctx, 200, {"content-type": "text/event-stream"})
    clock.t += 1.5
    d.handle_response_chunk(ctx, b'data: {"choices":[{"text":"a"}]}\n\n', end_of_stream=False)
    clock.t += 1.0
    rest = b'data: {"choices":[{"text":"a"}]}\n\n' * 2
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":3}}\n\ndata: [DONE]\n\n'
    d.handle_response_chunk(ctx, rest + usage, end_of_stream=True)
    d.handle_response_complete(ctx)
    assert sched.calls == [("ttft", pytest.approx(1.9)), ("tpot", pytest.approx(0.5))]
    assert flow.calls == [("ttft", pytest.approx(1.5)), ("tpot", pytest.approx(0.5))]


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
async def test_a_streamed_first_token_counts_the_request_as_started_until_it_ends(stream: bool) -> None:
    """Flow control reads the requests seen to start between scrapes: a streamed answer counts as
    started from its first token to its end (and once), an answer that came whole never does."""
    clock = FakeClock()
    store = make_store(clock)
    d = Director(
        datastore=store,
        scheduler=build_scheduler(default_picker_config(lora=True), rng=random.Random(1), clock=clock),
        flow=None,
        clock=clock,
        rng=random.Random(7),
    )
    ctx = await d.handle_request(
        path="/v1/completions", headers={}, body=body(stream=stream, prompt="x" * 400)
    )
    assert ctx.target is not None
    key = ctx.target.key

    def counts() -> tuple[int, int, int]:
        e = store.endpoint(key)
        assert e is not None
        return e.in_flight, e.in_flight_tokens, e.in_flight_started

    assert counts() == (1, 100, 0)
    d.handle_response_headers(
        ctx, 200, {"content-type": "text/event-stream" if stream else "application/json"}
    )
    d.handle_response_chunk(ctx, b'data: {"choices":[{"text":"a"}]}\n\n', end_of_stream=False)
    assert counts() == ((1, 0, 1) if stream else (1, 100, 0))
    d.handle_response_chunk(ctx, b'data: {"choices":[{"text":"a"}]}\n\n', end_of_stream=True)
    d.handle_response_complete(ctx)
    assert counts() == (0, 0, 0)
