"""The scraper against a real `infergate simulate` process: live metrics, models, a killed replica."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from infergate.datastore.store import Datastore
from infergate.sources.scraper import MetricsScraper
from infergate.types import EndpointMeta
from tests.support import ChildProcess, async_wait_for, free_port, start_infergate

BASE = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[tuple[ChildProcess, int]]:
    port = free_port()
    child = start_infergate(
        [
            "simulate",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--enable-lora",
            "--max-loras",
            "2",
            "--lora-modules",
            "food-review=/adapters/food-review",
        ],
        tmp_path,
        health_url=f"http://127.0.0.1:{port}/health",
    )
    try:
        yield child, port
    finally:
        child.stop()


async def test_scraper_follows_a_simulated_vllm(simulator: tuple[ChildProcess, int]) -> None:
    child, port = simulator
    key = f"127.0.0.1:{port}"
    ds = Datastore()
    ds.upsert_endpoint(EndpointMeta(name="sim-0", address="127.0.0.1", port=port))
    scraper = MetricsScraper(ds, interval=0.05)
    task = asyncio.create_task(scraper.run())

    def running_requests() -> int:
        e = ds.endpoint(key)
        return e.metrics.running_requests if e is not None else -1

    async def check(v: bool) -> bool:
        return v

    try:
        await async_wait_for(
            lambda: check(ds.models(key) == frozenset({BASE, "food-review"})), timeout=10, what="models"
        )
        ready = ds.candidates()
        assert [e.key for e in ready] == [key]
        # like vLLM, lora_requests_info (which carries max_lora) exists only after the first step
        assert (ready[0].metrics.block_size, ready[0].metrics.max_active_adapters) == (16, 0)

        # A long streamed LoRA request shows up as running, with its adapter, within a few scrapes.
        body = {"model": "food-review", "prompt": "hello " * 50, "max_tokens": 4000, "stream": True}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://{key}/v1/completions", data=json.dumps(body)) as resp,
        ):
            assert resp.status == 200
            await resp.content.readline()
            await async_wait_for(lambda: check(running_requests() == 1), timeout=5, what="running=1")

            def adapters() -> tuple[frozenset[str], int]:
                e = ds.endpoint(key)
                return (e.metrics.running_adapters, e.metrics.max_active_adapters) if e else (frozenset(), -1)

            # lora_requests_info is recorded when a step ends, like vLLM's: a scrape may see the
            # request running before it sees its adapter
            await async_wait_for(
                lambda: check(adapters() == (frozenset({"food-review"}), 2)), timeout=5, what="adapter"
            )
        await async_wait_for(lambda: check(running_requests() == 0), timeout=5, what="aborted request gone")

        # A replica that hangs (SIGSTOP) leaves rotation (by the scrape timeout: the connection stays
        # open), and rejoins when it resumes.
        child.proc.send_signal(signal.SIGSTOP)
        try:
            await async_wait_for(lambda: check(ds.candidates() == []), timeout=30, what="unhealthy when hung")
        finally:
            child.proc.send_signal(signal.SIGCONT)
        await async_wait_for(lambda: check(len(ds.candidates()) == 1), timeout=5, what="rejoin after SIGCONT")

        child.stop(signal.SIGKILL)
        await async_wait_for(lambda: check(ds.candidates() == []), timeout=30, what="unhealthy after SIGKILL")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
