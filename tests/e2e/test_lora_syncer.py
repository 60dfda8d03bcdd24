"""The LoRA syncer against a small, real aiohttp server that answers like vLLM's LoRA endpoints.

The fake keeps vLLM's status codes and messages (``serving_models.py``): load of a loaded adapter →
400 "has already been loaded", unload of an unknown one → 404 "cannot be found", success → 200 text.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from infergate.lora.cli import main
from infergate.lora.config import Adapter, parse_config
from infergate.lora.syncer import LoraSyncer
from tests.support import async_wait_for, free_port

BASE = "meta-llama/Llama-3.1-8B-Instruct"


def _error(message: str, err_type: str, status: int) -> web.Response:
    body = {"object": "error", "message": message, "type": err_type, "param": None, "code": status}
    return web.json_response(body, status=status)


class FakeVllm:
    """Just enough of vLLM's HTTP API for the syncer, with switches to make it misbehave."""

    def __init__(self) -> None:
        self.adapters: dict[str, str] = {}
        self.healthy = True
        self.fail_next = 0  # answer this many load/unload calls with a server error
        self.fail_status = 500
        self.calls: list[tuple[str, str]] = []
        self.hang = asyncio.Event()  # while clear and hang_loads is set, loads never answer
        self.hang_loads = False
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/load_lora_adapter", self.load)
        app.router.add_post("/v1/unload_lora_adapter", self.unload)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def count(self, what: str, name: str | None = None) -> int:
        return sum(1 for kind, n in self.calls if kind == what and (name is None or n == name))

    async def health(self, request: web.Request) -> web.Response:
        self.calls.append(("health", ""))
        return web.Response(status=200 if self.healthy else 503)

    async def models(self, request: web.Request) -> web.Response:
        data: list[dict[str, Any]] = [
            {"id": BASE, "object": "model", "owned_by": "vllm", "root": BASE, "parent": None}
        ]
        data += [
            {"id": name, "object": "model", "owned_by": "vllm", "root": path, "parent": BASE}
            for name, path in self.adapters.items()
        ]
        return web.json_response({"object": "list", "data": data})

    def _failure(self) -> web.Response | None:
        if self.fail_next <= 0:
            return None
        self.fail_next -= 1
        if self.fail_status == 404:  # runtime LoRA updating disabled: the route does not exist
            return web.json_response({"detail": "Not Found"}, status=404)
        return _error("Internal Server Error", "InternalServerError", self.fail_status)

    async def load(self, request: web.Request) -> web.Response:
        body = await request.json()
        name, path = body.get("lora_name"), body.get("lora_path")
        self.calls.append(("load", str(name)))
        if self.hang_loads:
            await self.hang.wait()
        failure = self._failure()
        if failure is not None:
            return failure
        if not name or not path:
            return _error("Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput", 400)
        if name in self.adapters:
            return _error(f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput", 400)
        self.adapters[name] = path
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def unload(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body.get("lora_name")
        self.calls.append(("unload", str(name)))
        failure = self._failure()
        if failure is not None:
            return failure
        if name not in self.adapters:
            return _error(f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404)
        del self.adapters[name]
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")


@pytest.fixture
async def vllm() -> AsyncIterator[FakeVllm]:
    server = FakeVllm()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def config_text(port: int, exist: list[str], not_exist: list[str] | None = None) -> str:
    def models(ids: list[str]) -> str:
        return "".join(f"\n    - id: {i}\n      source: hub/{i}" for i in ids) if ids else " []"

    return (
        f"vLLMLoRAConfig:\n  name: test\n  port: {port}\n  defaultBaseModel: {BASE}\n"
        f"  ensureExist:\n    models:{models(exist)}\n"
        f"  ensureNotExist:\n    models:{models(not_exist or [])}\n"
    )


def syncer_for(path: Path, port: int, **kw: Any) -> LoraSyncer:
    opts: dict[str, Any] = {"interval": 0.1, "health_interval": 0.02, "watch_interval": 0.02, "backoff": 0.02}
    opts.update(kw)
    return LoraSyncer(path, host="127.0.0.1", port=port, **opts)


async def run_until(syncer: LoraSyncer, cond: Any, what: str) -> int:
    """Run the syncer until ``cond()`` holds, then stop it and return its exit code."""
    stop = asyncio.Event()
    task = asyncio.create_task(syncer.run(stop))
    try:

        async def check() -> bool:
            if task.done():
                raise AssertionError(f"syncer exited early with {task.result()}")
            return bool(cond())

        await async_wait_for(check, timeout=10, what=what)
    finally:
        stop.set()
        code = await asyncio.wait_for(task, 60)
    return code


def test_config_parsing_defaults_and_errors() -> None:
    cfg = parse_config(config_text(8000, ["a"], ["b"]))
    assert cfg.ensure_exist == (Adapter("a", "hub/a", BASE),)
    assert cfg.ensure_not_exist == (Adapter("b", "hub/b", BASE),)
    assert (cfg.host, cfg.port) == ("localhost", 8000)
    minimal = parse_config(
        "vLLMLoRAConfig:\n  ensureExist:\n    models:\n    - {id: x, source: y, base-model: z}\n"
    )
    assert minimal.ensure_exist == (Adapter("x", "y", "z"),) and minimal.ensure_not_exist == ()
    with pytest.raises(
        ValueError, match=r"f.yaml: vLLMLoRAConfig.ensureExist.models\[0\].source: Field required"
    ):
        parse_config("vLLMLoRAConfig:\n  ensureExist:\n    models:\n    - id: x\n", source="f.yaml")
    with pytest.raises(ValueError, match="vLLMLoRAConfig: Field required"):
        parse_config("other: 1\n")


async def test_loads_ensure_exist_and_unloads_ensure_not_exist(vllm: FakeVllm, tmp_path: Path) -> None:
    vllm.adapters = {"old": "hub/old", "both-present": "hub/both-present"}
    path = tmp_path / "configmap.yaml"
    path.write_text(config_text(vllm.port, ["food-review", "cad-fabricator", "both-present", "both-absent"],
                                ["old", "never-loaded", "both-present", "both-absent"]))  # fmt: skip
    syncer = syncer_for(path, vllm.port)
    code = await run_until(
        syncer,
        lambda: (
            set(vllm.adapters) == {"food-review", "cad-fabricator", "both-present"} and syncer.rounds >= 3
        ),
        "adapters reconciled and periodic rounds",
    )
    assert code == 0
    # each action exactly once despite periodic rounds; adapters listed twice are left alone
    assert vllm.count("load", "food-review") == vllm.count("load", "cad-fabricator") == 1
    assert vllm.count("unload", "old") == 1
    assert vllm.count("load") == 2 and vllm.count("unload") == 1
    assert syncer.status == {"food-review": True, "cad-fabricator": True, "old": False, "never-loaded": False}


async def test_waits_for_health_before_acting(vllm: FakeVllm, tmp_path: Path) -> None:
    vllm.healthy = False
    path = tmp_path / "c.yaml"
    path.write_text(config_text(vllm.port, ["food-review"]))
    stop = asyncio.Event()
    task = asyncio.create_task(syncer_for(path, vllm.port).run(stop))

    async def probed_twice() -> bool:
        return vllm.count("health") >= 3

    await async_wait_for(probed_twice, what="health probes")
    assert vllm.calls == [("health", "")] * len(vllm.calls)  # nothing else while unhealthy
    vllm.healthy = True

    async def loaded() -> bool:
        return "food-review" in vllm.adapters

    await async_wait_for(loaded, what="adapter loaded after health")
    stop.set()
    assert await asyncio.wait_for(task, 60) == 0


async def test_gives_up_when_never_healthy(vllm: FakeVllm, tmp_path: Path) -> None:
    vllm.healthy = False
    path = tmp_path / "c.yaml"
    path.write_text(config_text(vllm.port, ["a"]))
    code = await asyncio.wait_for(syncer_for(path, vllm.port, health_timeout=0.2).run(asyncio.Event()), 60)
    assert code == 1 and vllm.count("load") == 0


@pytest.mark.parametrize("status", [500, 404])
async def test_retries_after_failures(vllm: FakeVllm, tmp_path: Path, status: int) -> None:
    vllm.fail_next, vllm.fail_status = 3, status
    path = tmp_path / "c.yaml"
    path.write_text(config_text(vllm.port, ["food-review"]))
    syncer = syncer_for(path, vllm.port, interval=60.0)  # only the retry back-off can re-try in time
    code = await run_until(syncer, lambda: "food-review" in vllm.adapters, "adapter loaded after failures")
    assert code == 0
    assert vllm.count("load", "food-review") == 4  # three failures, then success


async def test_retries_when_server_is_unreachable(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "c.yaml"
    path.write_text(config_text(port, ["food-review"]))
    syncer = syncer_for(path, port)
    result = await syncer.reconcile() if syncer.reload_config() else None
    await syncer.close()
    assert result is not None and not result.ok and "/v1/models" in result.failed


async def test_stop_does_not_wait_for_a_hanging_server(vllm: FakeVllm, tmp_path: Path) -> None:
    vllm.hang_loads = True
    path = tmp_path / "c.yaml"
    path.write_text(config_text(vllm.port, ["slow"]))
    stop = asyncio.Event()
    task = asyncio.create_task(syncer_for(path, vllm.port).run(stop, grace=0.1))

    async def loading() -> bool:
        return vllm.count("load") == 1

    await async_wait_for(loading, what="load request in flight")
    stop.set()
    try:
        assert await asyncio.wait_for(task, 60) == 0
    finally:
        vllm.hang.set()


async def test_reacts_to_configmap_symlink_swap(vllm: FakeVllm, tmp_path: Path) -> None:
    # The kubelet's ConfigMap layout: configmap.yaml -> ..data/configmap.yaml, ..data -> ..<timestamp>
    def version(name: str, text: str) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "configmap.yaml").write_text(text)
        os.symlink(name, tmp_path / "..data_tmp")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")

    version("..v1", config_text(vllm.port, ["food-review"]))
    os.symlink("..data/configmap.yaml", tmp_path / "configmap.yaml")
    syncer = syncer_for(tmp_path / "configmap.yaml", vllm.port, interval=60.0)
    stop = asyncio.Event()
    task = asyncio.create_task(syncer.run(stop))

    async def state(expected: set[str]) -> bool:
        assert not task.done(), "syncer exited"
        return set(vllm.adapters) == expected

    await async_wait_for(lambda: state({"food-review"}), what="first version applied")
    version("..v2", "vLLMLoRAConfig: [this is not valid")  # a bad edit is logged and ignored
    await async_wait_for(lambda: state({"food-review"}), what="still running")
    version("..v3", config_text(vllm.port, ["cad-fabricator"], ["food-review"]))
    await async_wait_for(lambda: state({"cad-fabricator"}), what="new version applied without waiting 60 s")
    stop.set()
    assert await asyncio.wait_for(task, 60) == 0


async def test_cli_once_and_bad_config(
    vllm: FakeVllm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(config_text(1, ["food-review"]))  # the port flag overrides the file's port
    args = ["--config", str(path), "--host", "127.0.0.1", "--port", str(vllm.port), "--once"]
    code = await asyncio.to_thread(main, args)
    assert code == 0 and set(vllm.adapters) == {"food-review"}
    path.write_text("vLLMLoRAConfig:\n  port: nope\n")
    assert await asyncio.to_thread(main, ["--config", str(path), "--once"]) == 2
    assert f"{path}: vLLMLoRAConfig.port: Input should be a valid integer" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["--interval", "0"]) == 2


async def test_cli_process_logs_actions_and_stops_on_sigterm(vllm: FakeVllm, tmp_path: Path) -> None:
    path = tmp_path / "configmap.yaml"
    path.write_text(config_text(vllm.port, ["food-review", "cad-fabricator"]))
    log = tmp_path / "syncer.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "infergate.lora", "--config", str(path), "--host", "127.0.0.1",
            "--interval", "0.2", "--health-interval", "0.05", stdout=out, stderr=out,
        )  # fmt: skip
    try:

        async def loaded() -> bool:
            assert proc.returncode is None, log.read_text()
            return set(vllm.adapters) == {"food-review", "cad-fabricator"}

        await async_wait_for(loaded, what="adapters loaded by the CLI process")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = log.read_text()
    assert "loaded adapter food-review from hub/food-review" in text
    assert "loaded adapter cad-fabricator" in text
    assert textwrap.dedent(text).count("Traceback") == 0
