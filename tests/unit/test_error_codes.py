"""One table of the reference's error-code words serves the metrics' ``error_code`` label and the
ext_proc picker's error bodies (``inference error: <Code> - <message>``)."""

from __future__ import annotations

import pytest

from infergate.dataplanes.extproc import messages
from infergate.errors import (
    BadRequestError,
    ClientDisconnectedError,
    InternalError,
    NoCapacityError,
    RateLimitedError,
    RequestTimeoutError,
    UpstreamError,
    UpstreamTimeoutError,
)
from infergate.requestcontrol.context import error_code_for, error_code_name


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (BadRequestError("x"), "BadRequest"),
        (RateLimitedError("x"), "ResourceExhausted"),
        (NoCapacityError("x"), "ServiceUnavailable"),
        (ClientDisconnectedError("x"), "ClientDisconnected"),
        (RequestTimeoutError("x"), "Internal"),  # 408: no word of its own in the reference
        (InternalError("x"), "Internal"),
        (UpstreamError("x"), "ModelServerError"),
        (UpstreamTimeoutError("x"), "ModelServerError"),
        (ValueError("x"), "Internal"),
    ],
)
def test_metrics_label_each_error_by_its_status(exc: BaseException, code: str) -> None:
    assert error_code_for(exc) == code


def test_the_picker_words_statuses_from_the_same_table() -> None:
    assert messages.error_code_name is error_code_name
    assert [error_code_name(s) for s in (401, 403, 404, 413, 502, 504, 418)] == [
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "BadRequest",
        "ModelServerError",
        "ModelServerError",
        "Internal",
    ]
