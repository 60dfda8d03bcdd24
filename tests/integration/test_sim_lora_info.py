"""``vllm:lora_requests_info`` with vLLM's series semantics, and the gateway's scraper reading it.

vLLM keeps one series per label set it ever recorded (``set_to_current_time`` after each engine
step), so a scrape shows stale states next to the current one; only the newest series is the
present. The simulator reproduces that, and the gateway's vLLM dialect picks the newest series.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from infergate.simulator.args import parse_args
from infergate.simulator.server import SimServer
from infergate.sources.dialects import parse_metrics_report
from tests.support import async_wait_for

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    argv = ["--host", "127.0.0.1", "--port", "0", "--time-scale", "0.05", "--model", MODEL]
    argv += ["--enable-lora", "--max-loras", "1", "--lora-modules", "a=/ad/a", "b=/ad/b"]
    server = SimServer(parse_args(argv, {}))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def scrape(sim: SimServer) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"{sim.url}/metrics") as r:
        return await r.text()


def lora_series(text: str) -> dict[tuple[str, str], float]:
    """(running, waiting) → value of every lora_requests_info series."""
    for fam in text_string_to_metric_families(text):
        if fam.name == "vllm:lora_requests_info":
            return {
                (s.labels["running_lora_adapters"], s.labels["waiting_lora_adapters"]): s.value
                for s in fam.samples
            }
    raise AssertionError("no vllm:lora_requests_info family")


async def test_series_accumulate_and_the_scraper_reads_the_newest(sim: SimServer) -> None:
    assert lora_series(await scrape(sim)) == {}  # nothing recorded before the first engine step
    body = {"prompt": "adapter request", "max_tokens": 100000, "ignore_eos": True, "stream": True}

    async def consume(model: str) -> None:
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"{sim.url}/v1/completions", json={**body, "model": model}) as r,
        ):
            async for _ in r.content:
                pass

    a = asyncio.create_task(consume("a"))
    b: asyncio.Task[None] | None = None
    try:

        async def state(running: str, waiting: str) -> bool:
            text = await scrape(sim)
            m = parse_metrics_report(text, "vllm", now=0.0).metrics
            return (",".join(sorted(m.running_adapters)), ",".join(sorted(m.waiting_adapters))) == (
                running,
                waiting,
            )

        await async_wait_for(lambda: state("a", ""), what="the scraper to see a running")
        b = asyncio.create_task(consume("b"))
        await async_wait_for(lambda: state("a", "b"), what="the scraper to see b waiting behind a")
        a.cancel()
        await asyncio.gather(a, return_exceptions=True)
        await async_wait_for(lambda: state("b", ""), what="b to run once a is gone")
    finally:
        for t in (a, b):
            if t is not None:
                t.cancel()
                await asyncio.gather(t, return_exceptions=True)
    await async_wait_for(lambda: state("", ""), what="the pool to go idle")
    series = lora_series(await scrape(sim))
    # every state ever recorded is still exported, valued with when it was last current
    assert {("a", ""), ("a", "b"), ("b", ""), ("", "")} <= set(series)
    assert max(series, key=lambda k: series[k]) == ("", "")
    assert series[("a", "")] < series[("a", "b")] < series[("b", "")] < series[("", "")]
    # the stale series are still there on the next scrape, unchanged: only steps update them
    assert lora_series(await scrape(sim)) == series
    assert all(v > 1.7e9 for v in series.values())
