"""The two ways the request path's value types are built cheaply (``infergate.types``).

``cheap_init`` replaces a frozen dataclass's ``__init__``: it must accept exactly what the
generated one accepts and build an equal, still frozen object. ``typed_frozen`` is frozen only
for the type checker: mypy must reject an assignment to its fields.
"""

from __future__ import annotations

import dataclasses
import inspect
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mypy import api as mypy_api

from infergate.types import (
    Endpoint,
    EndpointMeta,
    InferenceRequest,
    SchedulingResult,
    cheap_init,
    typed_frozen,
)


def _pair(*, kw_only: bool) -> tuple[type[Any], type[Any]]:
    """The same frozen dataclass twice: with its generated ``__init__`` and with ``cheap_init``'s."""

    def make() -> type[Any]:
        class Value:
            name: str
            size: int = 3
            tags: list[str] = field(default_factory=list, hash=False)
            note: str | None = None

        return dataclass(frozen=True, slots=True, kw_only=kw_only)(Value)

    return make(), cheap_init(make())


@pytest.mark.parametrize("kw_only", [False, True])
def test_cheap_init_accepts_what_the_generated_init_accepts(kw_only: bool) -> None:
    plain, cheap = _pair(kw_only=kw_only)
    generated, replaced = inspect.signature(plain.__init__), inspect.signature(cheap.__init__)
    assert [(p.name, p.kind) for p in replaced.parameters.values()] == [
        (p.name, p.kind) for p in generated.parameters.values()
    ]
    defaults = {p.name: p.default for p in replaced.parameters.values()}
    assert defaults["size"] == 3 and defaults["note"] is None
    assert defaults["name"] is inspect.Parameter.empty


@pytest.mark.parametrize("kw_only", [False, True])
def test_cheap_init_builds_what_the_generated_init_builds(kw_only: bool) -> None:
    plain, cheap = _pair(kw_only=kw_only)
    for kwargs in ({"name": "a"}, {"name": "b", "size": 7, "tags": ["x"], "note": "n"}):
        built, expected = cheap(**kwargs), plain(**kwargs)
        assert dataclasses.asdict(built) == dataclasses.asdict(expected)
        assert repr(built).partition("(")[2] == repr(expected).partition("(")[2]
    first, second = cheap(name="a"), cheap(name="a")
    assert first.tags == [] and first.tags is not second.tags  # a fresh default per object
    assert first == second and hash(first) == hash(second)
    with pytest.raises(TypeError):
        cheap(size=1)  # the required field stays required
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.size = 4


def test_cheap_init_refuses_what_it_cannot_reproduce() -> None:
    @dataclass(slots=True)
    class Mutable:
        a: int

    @dataclass(frozen=True, slots=True)
    class Computed:
        a: int
        b: int = field(init=False, default=0)

    @dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True)
    class Unslotted:
        a: int

    for cls in (Mutable, Computed, Checked, Unslotted):
        with pytest.raises(TypeError, match=cls.__name__):
            cheap_init(cls)


def test_the_types_plugins_receive_stay_frozen_at_run_time() -> None:
    endpoint = Endpoint(meta=EndpointMeta(name="p", address="10.0.0.1", port=8000))
    request = InferenceRequest(request_id="r", model="m", target_model="m")
    result = SchedulingResult(profile="default", targets=(endpoint,))
    for value, name in ((endpoint, "in_flight"), (request, "model"), (result, "profile")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, name, None)
    assert (
        request.headers == {}
        and request.headers is not InferenceRequest(request_id="r", model="m", target_model="m").headers
    )


def test_typed_frozen_is_plain_at_run_time() -> None:
    @typed_frozen
    class Value:
        a: int
        b: str = "x"

    value = Value(1)
    assert (value.a, value.b) == (1, "x") and value == Value(a=1)
    assert not hasattr(value, "__dict__")  # slotted


def test_mypy_rejects_assigning_a_typed_frozen_field(tmp_path: Path) -> None:
    module = tmp_path / "uses_value.py"
    module.write_text(
        textwrap.dedent(
            """
            from infergate.types import typed_frozen

            @typed_frozen
            class Value:
                a: int

            value = Value(1)
            value.a = 2
            """
        )
    )
    out, _, status = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(module)]
    )
    assert status == 1, out
    assert 'uses_value.py:9: error: Property "a" defined in "Value" is read-only' in out, out
