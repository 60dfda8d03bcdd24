"""``infergate bench --matrix``: real simulator replicas and routers, one strategy after another.

The end-to-end test starts 2 ``infergate simulate`` replicas per run (at ten times the modelled GPU
speed) and ``infergate serve`` with the strategy's picker config, sends 30 identical requests per
strategy, and checks what the replicas themselves counted. Peer routers are exercised only where
their virtualenvs exist (``bench/install_peers.sh``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infergate.bench import peers
from infergate.bench.matrix import MatrixConfig, MatrixOutcome, run_matrix
from infergate.bench.peers import PEERS, PeerRouter, available_peers, peer_venvs
from infergate.bench.workloads import BenchRequest, WorkloadSpec, generate
from tests.support import wait_for

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def tiny_workload(requests: int = 30) -> list[BenchRequest]:
    spec = WorkloadSpec.model_validate(
        {
            "name": "tiny",
            "seed": 5,
            "workload": {
                "type": "mix",
                "requests": requests,
                "prompt": {"mean": 48},
                "answer": {"mean": 12},
                "models": [{"name": MODEL}, {"name": "food-review"}, {"name": "cad-fabricator"}],
            },
        }
    )
    return generate(spec)


def small_config(tmp_path: Path, strategies: list[str]) -> MatrixConfig:
    return MatrixConfig(
        replicas=2,
        strategies=strategies,
        loads=[25.0],
        time_scale=0.1,
        workdir=tmp_path / "matrix",
        startup_timeout=30.0,
        sample_interval=0.1,
    )


def port_open(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


def check_run(outcome: MatrixOutcome, strategy: str, requests: int) -> dict[str, int]:
    runs = [r for r in outcome.results if r.strategy == strategy]
    assert len(runs) == 1, f"{strategy}: {len(runs)} results"
    run = runs[0]
    assert run.summary.requests == requests
    assert run.summary.succeeded == requests, run.summary.errors
    assert not run.summary.errors
    assert run.summary.ttft_p50 > 0
    # The replicas' own request counters saw every request exactly once, on both replicas together.
    assert sorted(run.per_endpoint_requests) == ["replica-0", "replica-1"]
    assert sum(run.per_endpoint_requests.values()) == requests, run.per_endpoint_requests
    assert run.prefix_hit_rate is not None
    return run.per_endpoint_requests


async def test_matrix_round_robin_and_default_end_to_end(tmp_path: Path) -> None:
    requests = tiny_workload(30)
    cfg = small_config(tmp_path, ["round-robin", "default"])
    outcome = await run_matrix(requests, workload="tiny", config=cfg)

    assert outcome.skipped == {}
    assert {r.strategy for r in outcome.results} == {"round-robin", "default"}
    spread = check_run(outcome, "round-robin", 30)
    assert max(spread.values()) - min(spread.values()) <= 1, f"round-robin not even: {spread}"
    check_run(outcome, "default", 30)

    # Per-replica load over time was sampled for the spread plot.
    for strategy in ("round-robin", "default"):
        series = outcome.load_series[strategy]
        assert set(series) == {"replica-0", "replica-1"}
        assert all(points for points in series.values())

    # Each run wrote its picker config and manifests, and stopped every process it started.
    for strategy in ("round-robin", "default"):
        folder = cfg.workdir / strategy / "25"
        assert (folder / "picker.yaml").read_text().startswith("apiVersion")
        docs = list(yaml.safe_load_all((folder / "pool.yaml").read_text()))
        lists = [d for d in docs if d["kind"] == "EndpointList"]
        addresses = [e["address"] for d in lists for e in d["spec"]["endpoints"]]
        assert len(addresses) == 2
        assert not any(port_open(a) for a in addresses), f"{strategy}: a replica still listens"
        # per-request records (for the twin agreement check) and where the CPU went
        rows = json.loads((folder / "records-25.json").read_text())
        assert sorted(r["index"] for r in rows) == list(range(30))
        assert all(r["status"] == 200 and r["ttft"] > 0 for r in rows)
        cpu = json.loads((folder / "cpu-25.json").read_text())
        assert set(cpu["cores_used"]) == {"client", "replica-0", "replica-1", "router"}
        assert cpu["wall_s"] > 0 and all(v is None or v >= 0 for v in cpu["cores_used"].values())


async def test_missing_peer_is_skipped_without_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peers, "DEFAULT_PEER_ROOT", tmp_path / "no-peers")
    monkeypatch.delenv(peers.ENV_VAR, raising=False)
    cfg = small_config(tmp_path, ["sglang-router:cache_aware"])
    outcome = await run_matrix(tiny_workload(3), workload="tiny", config=cfg)
    assert outcome.results == []
    assert "not installed" in outcome.skipped["sglang-router:cache_aware"]
    assert not (cfg.workdir / "sglang-router-cache_aware").exists()


async def test_unknown_strategy_fails_before_any_process(tmp_path: Path) -> None:
    cfg = small_config(tmp_path, ["round-robin", "no-such-strategy"])
    with pytest.raises(ValueError, match="no-such-strategy"):
        await run_matrix(tiny_workload(3), workload="tiny", config=cfg)
    assert not cfg.workdir.exists()


def fake_venv(root: Path, package: str) -> Path:
    site = root / package / "lib" / "python3.11" / "site-packages"
    (site / f"{package.replace('-', '_')}-0.0.0.dist-info").mkdir(parents=True)
    return root / package


def test_peer_discovery_and_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers, "DEFAULT_PEER_ROOT", tmp_path / "absent")
    sglang = fake_venv(tmp_path, "sglang-router")
    empty = tmp_path / "empty"
    empty.mkdir()
    venvs = peer_venvs([empty], env={peers.ENV_VAR: f"{sglang}:{sglang}"})
    assert venvs == [empty, sglang]

    found, missing = available_peers(venvs)
    assert [p.name for p in found] == ["sglang-router:cache_aware", "sglang-router:round_robin"]
    assert missing == ["vllm-router:cache_aware"]
    with pytest.raises(ValueError, match="unknown peer"):
        available_peers(venvs, ["nginx"])

    argv = found[0].command(host="127.0.0.1", port=1, metrics_port=2, workers=["http://a:1", "http://b:2"])
    assert argv[:3] == [str(sglang / "bin" / "python"), "-m", "sglang_router.launch_router"]
    assert argv[argv.index("--worker-urls") + 1 : argv.index("--policy")] == ["http://a:1", "http://b:2"]
    assert argv[argv.index("--policy") + 1] == "cache_aware"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"

    vllm = PeerRouter(PEERS[2], tmp_path / "v")
    vargv = vllm.command(host="127.0.0.1", port=1, metrics_port=2, workers=["http://a:1"])
    assert vargv[0] == str(tmp_path / "v" / "bin" / "vllm-router")
    assert "--worker-startup-timeout-secs" in vargv


async def test_installed_peer_round_robin_is_even(tmp_path: Path) -> None:
    found, _ = available_peers(peer_venvs(), ["sglang-router:round_robin"])
    if not found:
        pytest.skip("sglang-router is not installed (bash bench/install_peers.sh)")
    cfg = small_config(tmp_path, ["sglang-router:round_robin"])
    outcome = await run_matrix(tiny_workload(20), workload="tiny", config=cfg)
    assert outcome.skipped == {}
    spread = check_run(outcome, "sglang-router:round_robin", 20)
    assert max(spread.values()) - min(spread.values()) <= 1, spread


async def test_peer_that_cannot_start_is_skipped_and_the_matrix_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A venv that claims vllm-router but has no executable: the replicas start, the router cannot.
    monkeypatch.setattr(peers, "DEFAULT_PEER_ROOT", tmp_path / "absent")
    monkeypatch.delenv(peers.ENV_VAR, raising=False)
    broken = fake_venv(tmp_path, "vllm-router")
    cfg = MatrixConfig(
        replicas=1,
        strategies=["vllm-router:cache_aware", "round-robin"],
        loads=[25.0],
        time_scale=0.1,
        peer_venvs=[broken],
        workdir=tmp_path / "matrix",
        sample_interval=0,
    )
    outcome = await run_matrix(tiny_workload(4), workload="tiny", config=cfg)
    assert "cannot start" in outcome.skipped["vllm-router:cache_aware"]
    assert [r.strategy for r in outcome.results] == ["round-robin"]
    assert outcome.results[0].summary.succeeded == 4
    assert outcome.load_series == {}


def test_cli_matrix_writes_reports_and_load_plots(tmp_path: Path) -> None:
    from infergate.bench.cli import main

    workload = tmp_path / "tiny.yaml"
    workload.write_text(
        "name: tiny\nseed: 1\nworkload:\n  type: mix\n  requests: 6\n"
        "  prompt: {mean: 32}\n  answer: {mean: 8}\n  models: [{name: food-review}]\n"
    )
    out = tmp_path / "out"
    code = main(
        [
            "--matrix", "--workload", str(workload), "--replicas", "1", "--strategies", "round-robin",
            "--qps", "30", "--time-scale", "0.1", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    results = yaml.safe_load((out / "results.json").read_text())
    runs = [(r["strategy"], r["load"], r["summary"]["succeeded"]) for r in results]
    assert runs == [("round-robin", 30.0, 6)]
    assert "round-robin" in (out / "results.md").read_text()
    assert (out / "load_round-robin.png").stat().st_size > 0
    assert (out / "ttft_p90_vs_load.png").stat().st_size > 0
    assert (out / "matrix" / "round-robin" / "30" / "router.log").exists()


def _children(parent: int) -> dict[int, str]:
    """Live children of ``parent`` (pid -> command line), from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            found[int(entry)] = cmdline
    return found


def _alive(pid: int, cmdline: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            same = f.read().replace(b"\0", b" ").decode(errors="replace") == cmdline
        with open(f"/proc/{pid}/stat") as f:
            return same and f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_killed_matrix_stops_its_replicas_and_router(tmp_path: Path, sig: signal.Signals) -> None:
    """``kill`` of a running ``infergate bench --matrix`` stops the replicas and the router it
    started (each runs in a session of its own, which a signal to the matrix does not reach): on
    SIGTERM the matrix stops them and exits 143; on SIGKILL, with no clean-up, the kernel does."""
    workload = tmp_path / "long.yaml"
    workload.write_text(
        "name: long\nseed: 1\nworkload:\n  type: mix\n  requests: 40\n"
        "  prompt: {mean: 32}\n  answer: {kind: fixed, mean: 2000}\n  models: [{name: food-review}]\n"
    )
    out = tmp_path / "out"
    argv = [
        sys.executable, "-m", "infergate", "bench", "--matrix", "--workload", str(workload),
        "--replicas", "2",
        "--strategies", "round-robin", "--qps", "2", "--time-scale", "1", "--no-plots", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    children: dict[int, str] = {}
    try:
        router_log = out / "matrix" / "round-robin" / "2" / "router.log"
        wait_for(
            lambda: router_log.exists() and "serving pool" in router_log.read_text(errors="replace"),
            timeout=60,
            what="the router serving",
        )
        children = _children(proc.pid)
        assert len(children) == 3, children  # two replicas and the router
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        wait_for(
            lambda: not any(_alive(pid, cmdline) for pid, cmdline in children.items()),
            timeout=30,
            what="the replicas and the router to stop",
        )
    finally:
        if proc.poll() is None:  # a failed check above: stop it as the test would have
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid, cmdline in children.items():  # and leave nothing behind
            if _alive(pid, cmdline):
                os.killpg(pid, signal.SIGKILL)
    expected = 128 + signal.SIGTERM if sig == signal.SIGTERM else -signal.SIGKILL
    assert proc.returncode == expected, err.decode(errors="replace")[-2000:]
