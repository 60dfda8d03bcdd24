"""Drive a workload against any OpenAI-compatible URL and time every request.

Requests are streamed (``stream_options.include_usage``) so the client sees the first token and each
later one: TTFT is the time to the first chunk that carries text, inter-token latencies are the gaps
between text chunks, and token counts come from the final usage chunk. Open-loop runs send on a
Poisson schedule whatever the server does (the honest way to find a saturation point); closed-loop
runs keep a fixed number of requests in flight.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp

from infergate.bench.arrivals import ArrivalProcess
from infergate.bench.workloads import BenchRequest

__all__ = ["RequestRecord", "arrival_offsets", "run_closed_loop", "run_open_loop"]


@dataclass(slots=True, kw_only=True)
class RequestRecord:
    """What one request did, as the client saw it. Times are seconds from the run's start."""

    index: int
    model: str
    group: str
    sent_at: float
    status: int = 0
    ttft: float | None = None
    e2e: float | None = None
    itl: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first."""
        if self.ttft is None or self.e2e is None or self.completion_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.completion_tokens - 1)


def arrival_offsets(
    requests: Sequence[BenchRequest], qps: float, seed: int, process: ArrivalProcess | None = None
) -> list[float]:
    """Send times: the workload's own offsets where it fixes them, else ``process`` (Poisson by
    default) at ``qps``."""
    rng = random.Random(seed)
    t = 0.0
    out = []
    for r in requests:
        if r.offset is not None:
            out.append(r.offset)
            continue
        t += rng.expovariate(qps) if process is None else process.gap(rng, qps)
        out.append(t)
    return out


def _chunk_has_text(chunk: Mapping[str, object]) -> bool:
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        if choice.get("text"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and delta.get("content"):
            return True
    return False


async def _send(
    session: aiohttp.ClientSession,
    base_url: str,
    request: BenchRequest,
    start: float,
    headers: Mapping[str, str],
    before: asyncio.Task[RequestRecord] | None = None,
) -> RequestRecord:
    if before is not None:  # the session's previous turn: its end, not its outcome, matters here
        await asyncio.wait([before])
    sent = time.perf_counter()
    rec = RequestRecord(index=request.index, model=request.model, group=request.group, sent_at=sent - start)
    last_token_at: float | None = None
    try:
        async with session.post(
            base_url + request.path, json=request.body(), headers={**headers, **request.headers}
        ) as resp:
            rec.status = resp.status
            if resp.status != 200:
                rec.error = (await resp.text())[:300]
                rec.e2e = time.perf_counter() - sent
                return rec
            buffer = b""
            async for data in resp.content.iter_any():
                buffer += data
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    for line in event.split(b"\n"):
                        if not line.startswith(b"data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            continue
                        chunk = json.loads(payload)
                        if "error" in chunk:
                            rec.error = str(chunk["error"])[:300]
                        now = time.perf_counter()
                        if _chunk_has_text(chunk):
                            if last_token_at is None:
                                rec.ttft = now - sent
                            else:
                                rec.itl.append(now - last_token_at)
                            last_token_at = now
                        usage = chunk.get("usage")
                        if isinstance(usage, dict):
                            rec.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                            rec.completion_tokens = int(usage.get("completion_tokens") or 0)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
    rec.e2e = time.perf_counter() - sent
    return rec


def _sendable(requests: Sequence[BenchRequest]) -> None:
    """Refuse requests whose answer length only the twin can honour (WorkloadSpec.max_tokens):
    a real model server without ``ignore_eos`` ends its answers where it chooses."""
    if any(r.ends_itself for r in requests):
        raise ValueError("workload max_tokens other than 'answer' only applies to the twin")


def _session(timeout: float) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout))


async def run_open_loop(
    base_url: str,
    requests: Sequence[BenchRequest],
    *,
    qps: float,
    seed: int = 0,
    headers: Mapping[str, str] | None = None,
    request_timeout: float = 600.0,
    on_done: Callable[[RequestRecord], None] | None = None,
) -> list[RequestRecord]:
    """Send each request at its Poisson (or workload-fixed) time; wait for all to finish."""
    _sendable(requests)
    offsets = arrival_offsets(requests, qps, seed)
    hdrs = dict(headers or {})
    async with _session(request_timeout) as session:
        start = time.perf_counter()
        tasks: list[asyncio.Task[RequestRecord]] = []
        by_index: dict[int, asyncio.Task[RequestRecord]] = {}
        for request, offset in zip(requests, offsets, strict=True):
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            before = by_index.get(request.after) if request.after is not None else None
            task = asyncio.create_task(_send(session, base_url, request, start, hdrs, before))
            by_index[request.index] = task
            if on_done is not None:
                task.add_done_callback(lambda t: on_done(t.result()) if not t.cancelled() else None)
            tasks.append(task)
        return list(await asyncio.gather(*tasks))


async def run_closed_loop(
    base_url: str,
    requests: Sequence[BenchRequest],
    *,
    concurrency: int,
    headers: Mapping[str, str] | None = None,
    request_timeout: float = 600.0,
    on_done: Callable[[RequestRecord], None] | None = None,
) -> list[RequestRecord]:
    """Keep ``concurrency`` requests in flight until the workload is exhausted."""
    _sendable(requests)
    hdrs = dict(headers or {})
    queue = list(reversed(requests))
    records: list[RequestRecord] = []
    async with _session(request_timeout) as session:
        start = time.perf_counter()

        # the session's previous turn (popped before this one, if it is in the run) ends first
        ended = {r.index: asyncio.Event() for r in requests}

        async def worker() -> None:
            while queue:
                request = queue.pop()
                before = ended.get(request.after) if request.after is not None else None
                if before is not None:
                    await before.wait()
                try:
                    rec = await _send(session, base_url, request, start, hdrs)
                finally:
                    ended[request.index].set()
                records.append(rec)
                if on_done is not None:
                    on_done(rec)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    records.sort(key=lambda r: r.index)
    return records
