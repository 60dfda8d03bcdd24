"""Ports ``infergate up`` and ``bench --matrix`` give their children: outside the kernel's ephemeral range."""

from __future__ import annotations

import socket
from pathlib import Path

from infergate.app.fleet import free_port, quiet_ports
from tests.support import free_port as suite_port


def test_quiet_ports_run_from_20000_to_the_ephemeral_range(tmp_path: Path) -> None:
    proc = tmp_path / "ip_local_port_range"
    proc.write_text("32768\t60999\n")
    assert quiet_ports(proc) == range(20_000, 32_768)
    proc.write_text("15000 60999\n")  # no room below the kernel's range
    assert not quiet_ports(proc)
    assert not quiet_ports(tmp_path / "missing")
    proc.write_text("garbage\n")
    assert not quiet_ports(proc)


def test_a_port_is_drawn_from_the_quiet_range() -> None:
    port = suite_port()
    assert free_port(quiet=range(port, port + 1)) == port


def test_a_taken_quiet_port_is_not_given_out_and_the_kernel_chooses() -> None:
    port = suite_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", port))
        chosen = free_port(quiet=range(port, port + 1))
    assert chosen != port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", chosen))  # free a moment ago


def test_without_a_quiet_range_the_kernel_chooses() -> None:
    chosen = free_port(quiet=range(0))
    assert 0 < chosen < 65_536


def test_a_port_is_not_handed_out_twice_before_its_child_binds_it() -> None:
    port = suite_port()
    drawn = [free_port(quiet=range(port, port + 1)) for _ in range(2)]
    assert drawn[0] == port and drawn[1] != port  # the second call left it to the first caller
