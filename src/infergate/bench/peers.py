"""Peer routers the matrix compares infergate with: where they are installed and how to start them.

The peers (``sglang-router``, ``vllm-router``) are Rust routers shipped on PyPI. They are never
dependencies of infergate: each lives in its own virtualenv (both packages install a command named
``vllm-router``), created by ``bench/install_peers.sh``. This module only finds those virtualenvs
and builds the command line that starts a router in front of given worker URLs; the matrix owns
the processes. A peer whose virtualenv is missing is simply not available, never an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_PEER_ROOT",
    "PEERS",
    "PeerRouter",
    "PeerSpec",
    "available_peers",
    "is_peer",
    "peer_names",
    "peer_venvs",
]

DEFAULT_PEER_ROOT = Path("/tmp/peers")
"""Where ``bench/install_peers.sh`` puts the virtualenvs when given no folder."""

ENV_VAR = "INFERGATE_PEER_VENVS"


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """One peer strategy: a router package run with one routing policy."""

    name: str  # strategy name in reports, e.g. "sglang-router:cache_aware"
    package: str  # distribution name on PyPI, which also names its virtualenv folder
    policy: str


PEERS: tuple[PeerSpec, ...] = (
    PeerSpec("sglang-router:cache_aware", "sglang-router", "cache_aware"),
    PeerSpec("sglang-router:round_robin", "sglang-router", "round_robin"),
    PeerSpec("vllm-router:cache_aware", "vllm-router", "cache_aware"),
)


def peer_names() -> list[str]:
    return [p.name for p in PEERS]


def is_peer(strategy: str) -> bool:
    return any(p.name == strategy for p in PEERS)


def _module_dir(package: str) -> str:
    return package.replace("-", "_")


def _has_package(venv: Path, package: str) -> bool:
    """True if ``venv`` has ``package`` installed (looked up on disk, without running it)."""
    module = _module_dir(package)
    for site in venv.glob("lib/python3*/site-packages"):
        if any(site.glob(f"{module}-*.dist-info")) or (site / module).is_dir():
            return True
    return False


def peer_venvs(explicit: Sequence[Path | str] = (), *, env: dict[str, str] | None = None) -> list[Path]:
    """Virtualenvs to look in: ``explicit`` (``--peer-venv``), then ``$INFERGATE_PEER_VENVS``
    (``os.pathsep``-separated), then every folder under :data:`DEFAULT_PEER_ROOT`."""
    environ = os.environ if env is None else env
    out: list[Path] = [Path(p) for p in explicit]
    out += [Path(p) for p in environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    if DEFAULT_PEER_ROOT.is_dir():
        out += sorted(p for p in DEFAULT_PEER_ROOT.iterdir() if p.is_dir())
    seen: set[Path] = set()
    unique = []
    for p in out:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


@dataclass(frozen=True, slots=True)
class PeerRouter:
    """A peer strategy bound to the virtualenv that provides it."""

    spec: PeerSpec
    venv: Path

    @property
    def name(self) -> str:
        return self.spec.name

    def command(self, *, host: str, port: int, metrics_port: int, workers: Sequence[str]) -> list[str]:
        """The argv that starts this router on ``host:port`` in front of ``workers`` (base URLs)."""
        common = [
            "--host",
            host,
            "--port",
            str(port),
            "--prometheus-host",
            host,
            "--prometheus-port",
            str(metrics_port),
            "--worker-urls",
            *workers,
            "--policy",
            self.spec.policy,
        ]
        if self.spec.package == "sglang-router":
            return [str(self.venv / "bin" / "python"), "-m", "sglang_router.launch_router", *common]
        # vllm-router exits when a worker is not healthy within the startup timeout.
        return [str(self.venv / "bin" / "vllm-router"), *common, "--worker-startup-timeout-secs", "30"]


def available_peers(
    venvs: Iterable[Path], wanted: Sequence[str] | None = None
) -> tuple[list[PeerRouter], list[str]]:
    """Peers installed in ``venvs`` (first venv that has the package wins), and the names of
    ``wanted`` peers that are not installed (all known peers when ``wanted`` is None)."""
    venv_list = list(venvs)
    names = list(wanted) if wanted is not None else peer_names()
    found: list[PeerRouter] = []
    missing: list[str] = []
    for name in names:
        spec = next((p for p in PEERS if p.name == name), None)
        if spec is None:
            raise ValueError(f"unknown peer router {name!r}; known: {', '.join(peer_names())}")
        venv = next((v for v in venv_list if _has_package(v, spec.package)), None)
        if venv is None:
            missing.append(name)
        else:
            found.append(PeerRouter(spec, venv))
    return found, missing
