"""``bench --url`` checks its target first: down, models it does not serve, unreadable replicas;
fresh prompts per load point unless ``--warm``; the default load; the [bench] extra named."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from infergate.bench import cli as bench_cli
from infergate.bench.cli import main
from tests.support import free_port

MODELS = ["meta-llama/Llama-3.1-8B-Instruct", "food-review", "cad-fabricator"]


class FakeTarget:
    """An OpenAI-compatible server in a thread: lists ``MODELS``, streams two tokens with usage."""

    def __init__(self) -> None:
        self.port = free_port()
        self.prompts: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in MODELS]})

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.prompts.append(json.dumps(body.get("prompt") or body.get("messages")))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for text in ("a", "b"):
            chunk = {"choices": [{"index": 0, "text": text, "delta": {"content": text}}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        usage = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
        await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        await resp.write_eof()
        return resp

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._generate)
        app.router.add_post("/v1/chat/completions", self._generate)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def __enter__(self) -> FakeTarget:
        self._thread.start()
        assert self._ready.wait(60), "fake target did not start"
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def target() -> Iterator[FakeTarget]:
    with FakeTarget() as t:
        yield t


def test_an_unreachable_target_exits_non_zero(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code = main(["--url", url, "--workload", "tutorial-mix", "--no-plots", "--out", str(tmp_path)])
    assert code == 1
    assert f"cannot reach {url}" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_a_model_the_target_does_not_serve_is_refused_with_what_it_serves(
    target: FakeTarget, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["--url", target.url, "--workload", "tutorial-mix", "--no-plots", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "does not serve legal-summarizer" in err and "food-review" in err
    assert target.prompts == []  # refused before any load


def test_skip_unserved_fresh_prompts_default_qps_and_replica_warning(
    target: FakeTarget, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dead_replica = f"http://127.0.0.1:{free_port()}"
    argv = ["--url", target.url, "--workload", "tutorial-mix", "--skip-unserved", "--limit", "6"]
    argv += ["--replica", dead_replica, "--no-plots", "--out", str(tmp_path)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"--replica {dead_replica}: cannot read its /metrics" in err
    assert "legal-summarizer: those requests are left out" in err
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(r["load"], r["load_kind"]) for r in results] == [(8.0, "qps")]  # documented default
    assert results[0]["summary"]["succeeded"] == 6

    target.prompts.clear()
    assert main([*argv, "--qps", "50,50"]) == 0
    first, second = target.prompts[:6], target.prompts[6:]
    assert len(second) == 6 and set(first).isdisjoint(second)  # fresh prompts per load point

    target.prompts.clear()
    assert main([*argv, "--qps", "50,50", "--warm"]) == 0
    assert sorted(target.prompts[:6]) == sorted(target.prompts[6:])


def test_missing_matplotlib_names_the_extra_before_running(
    target: FakeTarget, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_cli, "_plots_available", lambda: False)
    assert main(["--url", target.url, "--workload", "tutorial-mix", "--skip-unserved"]) == 2
    assert "pip install 'infergate[bench]'" in capsys.readouterr().err
    assert target.prompts == []


def test_url_only_flags_are_refused_elsewhere(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--twin", "--workload", "bursts", "--warm"]) == 2
    assert "--warm only apply to --url" in capsys.readouterr().err


def test_twin_progress_advances_once_per_load_point(monkeypatch: pytest.MonkeyPatch) -> None:
    from contextlib import contextmanager

    from infergate.bench.stats import Slo
    from infergate.bench.steady import resolve_pool
    from infergate.bench.workloads import load_workload

    seen: list[str] = []

    class Recorder:
        def update(self, _task: object, *, advance: int, description: str) -> None:
            seen.extend([description] * advance)

    totals: list[int | None] = []

    @contextmanager
    def fake_progress(points: int, open_ended: bool) -> Iterator[tuple[Recorder, int]]:
        totals.append(None if open_ended else points)
        yield Recorder(), 0

    monkeypatch.setattr(bench_cli, "_twin_progress", fake_progress)
    spec = load_workload("tutorial-mix")
    bench_cli.run_twin_steady(
        spec,
        resolve_pool(spec, replicas=2),
        strategies=["round-robin", "least-in-flight"],
        qps=[4.0, 6.0],
        slo_rate=False,
        slo=Slo(),
        seed=0,
        duration=4.0,
        warmup=2.0,
    )
    assert totals == [4] and len(seen) == 4
    assert "twin least-in-flight @ 6 QPS" in seen[-1]


def test_plot_ticks_read_in_plain_units() -> None:
    from infergate.bench.report import _seconds_label

    assert [_seconds_label(v) for v in (0.05, 0.2, 1.0, 20.0)] == ["50 ms", "200 ms", "1 s", "20 s"]


def test_flag_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", "http://127.0.0.1:9", "--twin", "--workload", "bursts"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exactly one of --url, --matrix, --twin" in err
    assert main(["--twin", "--workload", "bursts", "--qps", "4,x"]) == 2
    assert "--qps" in capsys.readouterr().err
