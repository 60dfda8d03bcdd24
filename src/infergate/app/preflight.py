"""Startup checks for ``infergate up``, run before any child process starts.

A port that is already taken (9090, the admin port's default, is also Prometheus's) used to be found
only after the replicas had started, as a traceback from deep inside the server. Checking every port
the run will listen on first turns that into one line naming the port and the flag that sets it,
with nothing left to clean up.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from infergate.errors import ConfigError

__all__ = ["PortClaim", "check_ports", "parse_replica_ports", "replica_port_list"]


@dataclass(frozen=True)
class PortClaim:
    """A port this run will listen on, with the flag that chooses it (for the error message)."""

    host: str
    port: int
    flag: str


def parse_replica_ports(text: str | None) -> list[int]:
    """``--replica-ports``: ``8001,8002`` (one per replica) or ``8001`` (first of a run); [] if unset.

    Raises ValueError naming the flag for anything that is not a list of ports.
    """
    if text is None or not text.strip():
        return []
    ports: list[int] = []
    for part in text.split(","):
        try:
            port = int(part.strip())
        except ValueError:
            raise ValueError(f"--replica-ports: {part.strip()!r} is not a port number") from None
        if not 0 < port < 65536:
            raise ValueError(f"--replica-ports: {port} is not a port number (1-65535)")
        ports.append(port)
    if len(set(ports)) != len(ports):
        raise ValueError("--replica-ports: a port is given twice")
    return ports


def replica_port_list(ports: Sequence[int], count: int) -> list[int]:
    """The ``count`` replica ports ``--replica-ports`` asks for ([] when it is unset)."""
    if not ports:
        return []
    if len(ports) == 1:
        if ports[0] + count - 1 > 65535:
            raise ConfigError(f"--replica-ports: {count} ports from {ports[0]} run past 65535")
        return list(range(ports[0], ports[0] + count))
    if len(ports) != count:
        raise ConfigError(
            f"--replica-ports: {len(ports)} ports given for {count} replicas "
            "(give one per replica, or only the first)"
        )
    return list(ports)


def _bind_error(host: str, port: int) -> OSError | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # the same option the servers use, so a port in TIME_WAIT is not reported as busy
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host or "0.0.0.0", port))
    except OSError as exc:
        return exc
    return None


def check_ports(claims: Sequence[PortClaim]) -> None:
    """Raise ConfigError (one line) for the first claim that cannot be bound or repeats another.

    Port 0 (kernel-chosen) always passes.
    """
    seen: dict[int, str] = {}
    for claim in claims:
        if claim.port == 0:
            continue
        if claim.port in seen:
            raise ConfigError(f"port {claim.port} is given to both {seen[claim.port]} and {claim.flag}")
        seen[claim.port] = claim.flag
        exc = _bind_error(claim.host, claim.port)
        if exc is None:
            continue
        if exc.errno == errno.EADDRINUSE:
            why = "is already in use"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            why = "needs privileges this user does not have"
        else:
            why = f"cannot be bound ({exc.strerror})"
        raise ConfigError(f"port {claim.port} on {claim.host} {why}; choose another with {claim.flag}")
