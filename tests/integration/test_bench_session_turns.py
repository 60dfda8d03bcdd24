"""Both load generators send a session's turn only once its previous answer has ended
(``BenchRequest.after``), against a chat server on loopback that holds one answer back."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from infergate.bench.loadgen import RequestRecord, run_closed_loop, run_open_loop
from infergate.bench.workloads import BenchRequest
from tests.support import free_port


class _HeldServer:
    """A chat server on loopback whose answers to the prompts in ``held`` wait for ``release``."""

    def __init__(self, held: set[str]) -> None:
        self.port = free_port()
        self.held = held
        self.seen: list[str] = []
        self.release = asyncio.Event()
        self.arrived = asyncio.Condition()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        question = body["messages"][-1]["content"]
        async with self.arrived:
            self.seen.append(question)
            self.arrived.notify_all()
        if question in self.held:
            await self.release.wait()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices": [{"index": 0, "delta": {"content": "x"}}]}\n\ndata: [DONE]\n\n')
        await resp.write_eof()
        return resp

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        return runner


def _turns() -> list[BenchRequest]:
    def req(i: int, question: str, after: int | None) -> BenchRequest:
        messages = ({"role": "user", "content": question},)
        return BenchRequest(index=i, model="m", max_tokens=1, messages=messages, offset=0.0, after=after)

    # a1 then its next turn a2; b1 of another session
    return [req(0, "a1", None), req(1, "a2", 0), req(2, "b1", None)]


@pytest.mark.parametrize("loop_kind", ["open", "closed"])
def test_load_generators_send_a_turn_only_after_its_previous_answer(loop_kind: str) -> None:
    async def scenario() -> list[RequestRecord]:
        server = _HeldServer(held={"a1"})
        runner = await server.start()
        try:
            url = f"http://127.0.0.1:{server.port}"
            if loop_kind == "open":
                run = asyncio.create_task(run_open_loop(url, _turns(), qps=1.0))
            else:
                run = asyncio.create_task(run_closed_loop(url, _turns(), concurrency=3))
            async with server.arrived:  # a1 and the other session's b1 arrive; a2 waits for a1
                await server.arrived.wait_for(lambda: {"a1", "b1"} <= set(server.seen))
            assert "a2" not in server.seen
            server.release.set()
            records = await run
            assert server.seen.index("a2") > server.seen.index("a1")
            return records
        finally:
            await runner.cleanup()

    records = asyncio.run(scenario())
    assert all(r.ok for r in records)
    a1, a2, _ = sorted(records, key=lambda r: r.index)
    assert a1.e2e is not None and a2.sent_at >= a1.sent_at + a1.e2e
