"""Per-cycle score containers that cost O(1) to build and only turn into dicts when looked at.

A scheduling cycle over 1,000 endpoints must stay well under a millisecond in CPython, where
building a dict or an object per candidate per scorer dominated the cycle. These two read-only
views keep the public contracts unchanged (scorers return ``Mapping[str, float]``, pickers receive
``Sequence[ScoredEndpoint]``) while the hot path works on plain, position-aligned float lists:

* :class:`CandidateScores` is a ``Mapping[str, float]`` over the cycle's candidate keys backed by
  a list of floats in candidate order. Built-in scorers return it; the profile reads the list
  directly, and ``SchedulingResult.scores`` / ``plugin_scores`` hold it, so the dict a reader
  (the live view) sees is built only when somebody reads it.
* :class:`ScoredCandidates` is a ``Sequence[ScoredEndpoint]`` over the candidates and their
  weighted totals; built-in pickers read the two lists, other pickers index it as before and get
  :class:`ScoredEndpoint` objects made on demand.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Mapping, Sequence, ValuesView
from typing import overload

from infergate.types import Endpoint, ScoredEndpoint

__all__ = ["CandidateScores", "ScoredCandidates", "endpoint_keys", "split_scored"]


def endpoint_keys(candidates: Sequence[Endpoint]) -> list[str]:
    """``[e.key for e in candidates]`` without a Python-level property call per endpoint."""
    return [e.meta.key for e in candidates]


class CandidateScores(Mapping[str, float]):
    """Scores of one cycle's candidates: ``keys[i]`` scores ``values[i]``.

    ``keys`` is the cycle's candidate key tuple (shared by every scorer of the cycle, see
    ``framework.candidate_keys``) and ``values`` a sequence of the same length; neither is copied,
    and neither may be changed afterwards. ``bounded`` promises that every value is already in
    [0, 1] (no NaN), so the profile can skip its clamping check. As a mapping it behaves like
    ``dict(zip(keys, values))``, which it builds once, on first lookup.
    """

    __slots__ = ("_dict", "bounded", "key_seq", "value_seq")

    def __init__(self, keys: Sequence[str], values: Sequence[float], *, bounded: bool = False) -> None:
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys but {len(values)} values")
        self.key_seq = keys
        self.value_seq = values
        self.bounded = bounded
        self._dict: dict[str, float] | None = None

    def as_dict(self) -> dict[str, float]:
        d = self._dict
        if d is None:
            d = self._dict = dict(zip(self.key_seq, self.value_seq, strict=True))
        return d

    def __getitem__(self, key: str) -> float:
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())

    def __contains__(self, key: object) -> bool:
        return key in self.as_dict()

    def keys(self) -> KeysView[str]:
        return self.as_dict().keys()

    def values(self) -> ValuesView[float]:
        return self.as_dict().values()

    def items(self) -> ItemsView[str, float]:
        return self.as_dict().items()

    def get(self, key: str, default: float | None = None) -> float | None:  # type: ignore[override]
        return self.as_dict().get(key, default)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CandidateScores):
            return self.as_dict() == other.as_dict()
        if isinstance(other, Mapping):
            return self.as_dict() == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CandidateScores({self.as_dict()!r})"


class ScoredCandidates(Sequence[ScoredEndpoint]):
    """The candidates with their weighted totals, as the sequence of ``ScoredEndpoint`` pickers get.

    ``endpoints[i]`` has total ``scores[i]``. Indexing or iterating makes the
    :class:`ScoredEndpoint` objects on demand; pickers that know this type read the two lists.
    """

    __slots__ = ("endpoints", "scores")

    def __init__(self, endpoints: Sequence[Endpoint], scores: Sequence[float]) -> None:
        if len(endpoints) != len(scores):
            raise ValueError(f"{len(endpoints)} endpoints but {len(scores)} scores")
        self.endpoints = endpoints
        self.scores = scores

    def __len__(self) -> int:
        return len(self.scores)

    @overload
    def __getitem__(self, index: int) -> ScoredEndpoint: ...
    @overload
    def __getitem__(self, index: slice) -> list[ScoredEndpoint]: ...
    def __getitem__(self, index: int | slice) -> ScoredEndpoint | list[ScoredEndpoint]:
        if isinstance(index, slice):
            return list(map(ScoredEndpoint, self.endpoints[index], self.scores[index]))
        return ScoredEndpoint(self.endpoints[index], self.scores[index])

    def __iter__(self) -> Iterator[ScoredEndpoint]:
        return map(ScoredEndpoint, self.endpoints, self.scores)

    def __repr__(self) -> str:
        return f"ScoredCandidates({list(self)!r})"


def split_scored(scored: Sequence[ScoredEndpoint]) -> tuple[Sequence[Endpoint], Sequence[float]]:
    """The endpoints and totals of ``scored`` as two aligned sequences (free for the fast type)."""
    if isinstance(scored, ScoredCandidates):
        return scored.endpoints, scored.scores
    return [s.endpoint for s in scored], [s.score for s in scored]
