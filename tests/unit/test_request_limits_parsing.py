"""Parsing and judging the limits of the request policy (``n``, token-id prompts, context)."""

from __future__ import annotations

import json

import pytest

from infergate.errors import BadRequestError
from infergate.requestcontrol.access import TOKEN_ID_BOUND, RequestLimits
from infergate.requestcontrol.parsing import TokenIds, parse_body


def body(**fields: object) -> bytes:
    return json.dumps({"model": "m", **fields}).encode()


def test_token_id_prompts_are_summed_up_and_text_prompts_are_not() -> None:
    assert parse_body("/v1/completions", body(prompt=[3, 1, 9])).token_ids == TokenIds(3, 1, 9)
    batch = parse_body("/v1/completions", body(prompt=[[5, 6], [0, 7, 8, 2]]))
    assert batch.token_ids == TokenIds(4, 0, 8)
    assert parse_body("/v1/embeddings", body(input=[4, 2])).token_ids == TokenIds(2, 2, 4)
    assert parse_body("/v1/completions", body(prompt="3 1 9")).token_ids is None
    assert parse_body("/v1/completions", body(prompt=["a", "b"])).token_ids is None
    with pytest.raises(BadRequestError):  # booleans are not token ids
        parse_body("/v1/completions", body(prompt=[True, 1]))


@pytest.mark.parametrize("n", [0, -1, True, 1.5, "2"])
def test_n_must_be_a_positive_integer(n: object) -> None:
    with pytest.raises(BadRequestError) as err:
        parse_body("/v1/completions", body(prompt="x", n=n))
    assert err.value.param == "n"


def test_an_over_long_id_prompt_is_refused_while_parsing() -> None:
    with pytest.raises(BadRequestError) as err:
        parse_body("/v1/completions", body(prompt=[1] * 9), max_prompt_ids=8)
    assert (err.value.param, err.value.code) == ("prompt", "context_length_exceeded")
    assert parse_body("/v1/completions", body(prompt=[1] * 8), max_prompt_ids=8).token_ids == TokenIds(
        8, 1, 1
    )


@pytest.mark.parametrize(
    ("fields", "limits", "context", "code"),
    [
        ({"prompt": "x", "n": 129}, RequestLimits(), None, "n_exceeded"),
        ({"prompt": [TOKEN_ID_BOUND]}, RequestLimits(), None, "invalid_token_id"),
        ({"prompt": [-1]}, RequestLimits(), None, "invalid_token_id"),
        ({"prompt": [999]}, RequestLimits(vocab_size=999), None, "invalid_token_id"),
        ({"prompt": [1] * 5}, RequestLimits(), 4, "context_length_exceeded"),
        ({"prompt": [1] * 5}, RequestLimits(max_model_len=4), 100, "context_length_exceeded"),
        ({"prompt": "x", "max_tokens": 5}, RequestLimits(), 4, "max_tokens_exceeded"),
        (
            {"prompt": "x", "max_completion_tokens": 5},
            RequestLimits(max_model_len=4),
            None,
            "max_tokens_exceeded",
        ),
    ],
)
def test_limits_refuse_what_is_beyond_them(
    fields: dict[str, object], limits: RequestLimits, context: int | None, code: str
) -> None:
    parsed = parse_body("/v1/completions", body(**fields))
    with pytest.raises(BadRequestError) as err:
        limits.check_body(parsed, "m", context=context)
    assert err.value.code == code


def test_limits_at_their_edge_pass() -> None:
    parsed = parse_body("/v1/completions", body(prompt=[0, TOKEN_ID_BOUND - 1, 5, 5], n=128, max_tokens=4))
    RequestLimits().check_body(parsed, "m", context=4)
    RequestLimits(max_n=None).check_body(
        parse_body("/v1/completions", body(prompt="x", n=10**6)), "m", context=None
    )
