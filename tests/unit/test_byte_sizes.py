"""Sizes in the reference's spelling: Kubernetes quantities with an optional ``B``, as llm-d-router's
``--grpc-max-*-msg-size`` take them (``10MiB``, ``25MB``); and gRPC status codes spelled as Go
prints them, the values of the ext_proc stream metrics' ``code`` label."""

from __future__ import annotations

import grpc
import pytest

from infergate.config.settings import Settings, parse_byte_size
from infergate.errors import ConfigError
from infergate.servers.grpc_headers import go_code_name


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("10MiB", 10 << 20),
        ("10Mi", 10 << 20),
        ("25MB", 25_000_000),
        ("4194304", 4 << 20),
        ("1e6", 1_000_000),
        ("1.5Ki", 1536),
        ("2Gi", 2 << 30),
        ("0", 0),
        (" 64b ", 64),
        ("1000m", 1),
    ],
)
def test_quantities_in_bytes(text: str, size: int) -> None:
    assert parse_byte_size(text) == size


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("-1", "negative"),
        ("1.5", "not a whole number"),
        ("1m", "not a whole number"),
        ("10 MiB", "invalid size"),
        ("ten", "invalid size"),
        ("10MiBB", "invalid size"),
    ],
)
def test_what_is_not_a_size_is_refused(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_byte_size(text)


def test_the_settings_take_quantities_and_name_a_bad_one() -> None:
    listeners = Settings(listeners={"grpc_max_recv_msg_size": "8MiB"}).listeners  # type: ignore[arg-type]
    assert listeners.grpc_max_recv_msg_size == 8 << 20 and listeners.grpc_max_send_msg_size == 0
    with pytest.raises((ConfigError, ValueError), match="grpc_max_send_msg_size"):
        Settings(listeners={"grpc_max_send_msg_size": "lots"})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (grpc.StatusCode.OK, "OK"),
        (grpc.StatusCode.CANCELLED, "Canceled"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "ResourceExhausted"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "DeadlineExceeded"),
        (grpc.StatusCode.UNKNOWN, "Unknown"),
    ],
)
def test_status_codes_as_go_spells_them(code: grpc.StatusCode, name: str) -> None:
    assert go_code_name(code) == name
