"""Turning engine output streams into OpenAI completions / chat responses (stream and non-stream).

One *choice* is one engine request. :func:`choice_events` follows its ``RequestOutput`` stream,
detokenises, applies ``stop`` strings (vLLM semantics: the stop string is not returned and text that
might start one is held back while streaming), records per-request latency histograms and yields
:class:`Delta` events; leaving the generator early (client gone, stop string hit) aborts the engine
request because the driver's iterator is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from infergate.simulator.drivers import RealtimeDriver
from infergate.simulator.engine import EngineRequest, RequestOutput
from infergate.simulator.metrics import SimMetrics
from infergate.simulator.openai_api import ApiError
from infergate.tokenization.protocol import TextTokenizer


@dataclass
class Delta:
    """New text of one choice; ``finish_reason`` set on its last event."""

    index: int
    text: str
    num_tokens: int  # generated tokens so far (usage)
    finish_reason: str | None = None
    stop_reason: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    kv_blocks: tuple[int, ...] | None = None  # P/D: a finished prefill's block ids (last event)


@dataclass
class ChoiceSpec:
    """Everything needed to run one choice."""

    index: int
    request: EngineRequest
    stop: tuple[str, ...]
    echo_ids: Sequence[int] | None = None  # --echo: generated ids replaced by the prompt's, cyclically


async def _aclose(it: AsyncIterator[RequestOutput]) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()


async def choice_events(
    driver: RealtimeDriver,
    tokenizer: TextTokenizer,
    metrics: SimMetrics,
    spec: ChoiceSpec,
    *,
    streaming: bool,
) -> AsyncIterator[Delta]:
    """Follow one engine request; the last yielded :class:`Delta` has a finish reason."""
    req = spec.request
    # the finish reason is decided here (stop strings are matched on text, as in vLLM's output
    # processor), so this code and not the engine counts it in request_success_total: the engine
    # may already have run the request to its length limit when a stop string is found
    req.frontend_counts = True
    try:
        outputs = driver.submit(req)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from exc
    stops = spec.stop
    hold = max((len(s) for s in stops), default=1) - 1 if streaming else 0
    text = ""
    emitted = 0
    generated = 0
    prev_time: float | None = None
    finish: str | None = None
    stop_reason: str | None = None
    prompt_tokens = len(req.prompt_token_ids)
    cached = 0
    last: RequestOutput | None = None
    try:
        while True:
            try:
                out = await anext(outputs)
            except StopAsyncIteration:
                break
            except ValueError as exc:
                raise ApiError(400, str(exc)) from exc
            last = out
            prompt_tokens = out.num_prompt_tokens
            cached = out.num_cached_tokens
            new_ids = out.new_token_ids
            if new_ids:
                if prev_time is None:
                    if out.first_token_time is not None:
                        metrics.ttft.observe(max(0.0, out.first_token_time - out.arrival_time))
                else:
                    metrics.itl.observe(max(0.0, out.now - prev_time))
                prev_time = out.now
                if spec.echo_ids:
                    src = spec.echo_ids
                    new_ids = tuple(src[(generated + i) % len(src)] for i in range(len(new_ids)))
                generated += len(new_ids)
                start = max(0, len(text) - hold)
                text += tokenizer.decode(new_ids)
                if stops:
                    cut = _find_stop(text, stops, start)
                    if cut is not None:
                        pos, s = cut
                        text = text[:pos]
                        finish, stop_reason = "stop", s
                        driver.abort(req.request_id, reason="stop")  # counted as vLLM does
                        break
            if out.finished:
                finish = out.finish_reason or "stop"
                break
            visible = len(text) - hold
            if visible > emitted:
                yield Delta(spec.index, text[emitted:visible], generated, prompt_tokens=prompt_tokens,
                            cached_tokens=cached)  # fmt: skip
                emitted = visible
    finally:
        await _aclose(outputs)
        if finish is None:  # the consumer left, an error, or the engine aborted the request
            finish = "abort"
        driver.engine.record_finish(finish)
        kv_blocks = driver.engine.sent_kv.pop(req.request_id, None)
    if finish != "abort" and last is not None:
        metrics.observe_finished(
            arrival=last.arrival_time,
            first_token=last.first_token_time,
            finished=last.now,
            prompt_tokens=prompt_tokens,
            generated=generated,
            max_tokens=req.max_tokens,
            scheduled=last.scheduled_time,
            queued=last.queued_time,
            cached_tokens=last.num_cached_tokens,
            preemptions=last.num_preemptions,
        )
    yield Delta(
        spec.index,
        text[emitted:],
        generated,
        finish_reason=finish,
        stop_reason=stop_reason,
        prompt_tokens=prompt_tokens,
        cached_tokens=cached,
        kv_blocks=kv_blocks,
    )


def _find_stop(text: str, stops: Sequence[str], start: int) -> tuple[int, str] | None:
    best: tuple[int, str] | None = None
    for s in stops:
        pos = text.find(s, max(0, start - len(s)))
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, s)
    return best


async def merged_events(
    make: Callable[[ChoiceSpec], AsyncIterator[Delta]], specs: Sequence[ChoiceSpec]
) -> AsyncIterator[Delta]:
    """Interleave the events of several choices in arrival order (n > 1 or batched prompts)."""
    if len(specs) == 1:
        gen = make(specs[0])
        try:
            async for d in gen:
                yield d
        finally:
            await _aclose_delta(gen)
        return
    queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()

    async def pump(spec: ChoiceSpec) -> None:
        gen = make(spec)
        try:
            async for d in gen:
                await queue.put(d)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await queue.put(exc)
        finally:
            await _aclose_delta(gen)
            await queue.put(None)

    tasks = [asyncio.create_task(pump(s)) for s in specs]
    done = 0
    try:
        while done < len(tasks):
            item = await queue.get()
            if item is None:
                done += 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _aclose_delta(gen: AsyncIterator[Delta]) -> None:
    close = getattr(gen, "aclose", None)
    if close is not None:
        await close()
