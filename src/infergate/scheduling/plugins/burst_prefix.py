"""``burst-prefix-cache-producer`` (llm-d-router v0.10): requests that arrive together and share a
prompt are sent to the same replica, so the prompt is prefilled once.

The problem it solves: when the samples of one prompt (an RL rollout group) arrive in the same
instant, no replica holds the prompt yet, so a cache-state scorer sees nothing and load balancing
scatters the samples; each replica then prefills the same prompt. Upstream's answer, reproduced
here, is to hold requests for a short window and assign the window's requests jointly.

This module is the pure part: a request's prefix block hashes, the joint assignment of a sealed
window (:func:`assign`, upstream's ``assign.go``), the producer plugin that carries the
parameters and the window's results, and the scorer that reads them (what the reference's
``prefix-cache-scorer`` does when its ``prefixMatchInfoProducerName`` names this producer:
1.0 on the assigned endpoint, 0 elsewhere). The window itself, which waits on the event loop,
is :mod:`infergate.requestcontrol.burst`.

Assignment, as upstream: requests with identical block-hash sequences form a group; a group of
two or more is a placement unit, and with ``minColocateBlocks > 0`` so is a single request that
shares at least that many leading blocks with another request of the window. Units are placed
groups first, then such singles, each tier longest prefix first; a unit fills one replica up to
``maxPerReplica`` before spilling to the least-loaded one. With ``minColocateBlocks > 0`` a unit
first prefers the replica already holding the longest shared prefix (at least that many blocks)
among those still under their fair share of the window. Requests in no unit get no affinity.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import Field, field_validator, model_validator

from infergate.scheduling.sdk.framework import CycleState, Params, candidate_keys
from infergate.types import Endpoint, InferenceRequest

__all__ = [
    "UNLIMITED",
    "BurstAssignments",
    "BurstPrefixParams",
    "BurstPrefixProducer",
    "BurstPrefixScorer",
    "BurstScorerParams",
    "assign",
    "prefix_hashes",
]

log = logging.getLogger(__name__)

UNLIMITED = -1
"""``maxPerReplica`` / ``maxBatchSize`` value that lifts the limit."""

DEFAULT_MAX_PREFIX_BLOCKS = 2048
"""Leading blocks hashed when ``maxPrefixTokensToMatch`` is 0 (upstream's cap)."""

CHARS_PER_TOKEN = 4
"""UTF-8 bytes per token when a request has no token ids and its text is hashed instead."""


class BurstPrefixParams(Params):
    """Upstream's parameters, names, defaults and bounds (its constructor's checks)."""

    window_duration_ms: int = Field(default=100, ge=1, le=10_000)
    max_per_replica: int = UNLIMITED
    block_size_tokens: int = Field(default=64, gt=0)
    max_prefix_tokens_to_match: int = Field(default=0, ge=0)
    min_colocate_blocks: int = Field(default=0, ge=0)
    max_batch_size: int = 1000
    balance_by: Literal["", "requests", "tokens"] = "requests"

    @field_validator("max_per_replica", "max_batch_size")
    @classmethod
    def _limit(cls, value: int) -> int:
        if value != UNLIMITED and value < 1:
            raise ValueError(f"must be -1 (unlimited) or >= 1 (got {value})")
        return value

    @model_validator(mode="after")
    def _match_cap(self) -> BurstPrefixParams:
        if 0 < self.max_prefix_tokens_to_match < self.block_size_tokens:
            raise ValueError(
                f"maxPrefixTokensToMatch ({self.max_prefix_tokens_to_match}) must be 0 or >= "
                f"blockSizeTokens ({self.block_size_tokens}): a smaller value hashes no block"
            )
        return self

    @property
    def max_blocks(self) -> int:
        if self.max_prefix_tokens_to_match > 0:
            return self.max_prefix_tokens_to_match // self.block_size_tokens
        return DEFAULT_MAX_PREFIX_BLOCKS

    @property
    def by_tokens(self) -> bool:
        return self.balance_by == "tokens"


def prefix_hashes(request: InferenceRequest, block_size_tokens: int, max_blocks: int) -> list[int]:
    """The request's chained prefix block hashes: of its token ids (``token-producer``) when it has
    them, else of its prompt text in blocks of ``block_size_tokens × 4`` bytes.

    As upstream, a trailing partial block counts (two identical short prompts still group), the
    chain is seeded with the target model (and the body's ``cache_salt``, if any) so the same text
    for another model never groups, and each hash stands for the whole prefix up to its block.
    Token ids and text are seeded apart, so a request whose render failed never groups with one
    that was rendered. Python's ``hash`` suffices: hashes are compared within one process only.
    """
    body = request.body
    salt = body.get("cache_salt") if body is not None else None
    ids = request.prompt_token_ids
    data: Sequence[object]
    if ids:
        data, step, kind = ids, block_size_tokens, "tokens"
    else:
        data, step, kind = request.prompt.encode(), block_size_tokens * CHARS_PER_TOKEN, "text"
    h = hash(("burst-prefix", kind, request.target_model, salt if isinstance(salt, str) else None))
    out: list[int] = []
    for start in range(0, min(len(data), max_blocks * step), step):
        h = hash((h, data[start : start + step]))
        out.append(h)
    return out


class _Holders:
    """Which replicas hold each block placed so far in this window (upstream's ``batchIndex``).

    A unit's whole prefix is added at once and hashes are chained, so holding block ``i`` means
    holding blocks ``0..i``: walking a prefix until a block nobody holds counts, per replica, the
    leading blocks it shares with the units already placed there.
    """

    def __init__(self) -> None:
        self._by_block: dict[int, set[str]] = {}

    def add(self, hashes: Sequence[int], replica: str) -> None:
        for h in hashes:
            self._by_block.setdefault(h, set()).add(replica)

    def shared(self, hashes: Sequence[int]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for h in hashes:
            holders = self._by_block.get(h)
            if not holders:
                break
            for name in holders:
                counts[name] = counts.get(name, 0) + 1
        return counts


def _requests(e: Endpoint) -> int:
    """A replica's requests, to break ties between replicas equally loaded by this window."""
    running = e.metrics.running_requests
    return e.in_flight if e.in_flight > running else running


class _Placer:
    """One window's placement state: load per replica (requests, or prefix blocks under
    ``balanceBy: tokens``), the blocks placed so far, and the fair share bounding co-location."""

    def __init__(
        self, replicas: Sequence[Endpoint], k: int, min_colocate: int, by_tokens: bool, fair_share: int
    ) -> None:
        self.replicas = replicas
        self.k = k
        self.min_colocate = min_colocate
        self.by_tokens = by_tokens
        self.fair_share = fair_share
        self.load: dict[str, int] = {}
        self.holders = _Holders()

    def _before(self, a: Endpoint, b: Endpoint) -> bool:
        """Prefer ``a`` over ``b``: less load in this window, then fewer requests, then lower key."""
        la, lb = self.load.get(a.key, 0), self.load.get(b.key, 0)
        if la != lb:
            return la < lb
        ra, rb = _requests(a), _requests(b)
        if ra != rb:
            return ra < rb
        return a.key < b.key

    def _least_loaded(self, mine: Mapping[str, int]) -> Endpoint:
        """The least-loaded replica with room for this unit under ``k``; when every one is at
        ``k`` (more members than ``k × replicas``), the least-loaded of all."""
        best: Endpoint | None = None
        for r in self.replicas:
            if self.k != UNLIMITED and mine.get(r.key, 0) >= self.k:
                continue
            if best is None or self._before(r, best):
                best = r
        if best is None:
            for r in self.replicas:
                if best is None or self._before(r, best):
                    best = r
        assert best is not None  # replicas is never empty here
        return best

    def _sharing(self, mine: Mapping[str, int], shared: Mapping[str, int]) -> Endpoint | None:
        """The replica sharing the longest prefix (at least ``minColocateBlocks``) that has room
        under ``k`` and is below its fair share of the window; None when there is none."""
        best: Endpoint | None = None
        best_match = 0
        for r in self.replicas:
            if self.k != UNLIMITED and mine.get(r.key, 0) >= self.k:
                continue
            if self.load.get(r.key, 0) >= self.fair_share:
                continue  # co-locating here would unbalance the window
            m = shared.get(r.key, 0)
            if m < self.min_colocate:
                continue
            if best is None or m > best_match or (m == best_match and self._before(r, best)):
                best, best_match = r, m
        return best

    def place(self, members: Sequence[int], hashes: Sequence[int], out: list[str | None]) -> None:
        """Place one unit (request indices ``members``, all with ``hashes``) into ``out``.

        Only the first replica gets the shared-prefix preference; when ``k`` caps the unit, the
        rest spills run by run to the least-loaded replicas. Under token balancing a replica is
        charged the unit's blocks once, less the leading blocks it already holds.
        """
        prefer = self.min_colocate > 0
        shared = self.holders.shared(hashes) if prefer or self.by_tokens else {}
        mine: dict[str, int] = {}
        i = 0
        while i < len(members):
            target = (self._sharing(mine, shared) if prefer else None) or self._least_loaded(mine)
            key = target.key
            run = len(members) - i
            if self.k != UNLIMITED:
                run = min(run, max(1, self.k - mine.get(key, 0)))
            for j in range(i, i + run):
                out[members[j]] = key
            first_here = key not in mine
            mine[key] = mine.get(key, 0) + run
            if not self.by_tokens:
                self.load[key] = self.load.get(key, 0) + run
            elif first_here:
                self.load[key] = self.load.get(key, 0) + max(0, len(hashes) - shared.get(key, 0))
            i += run
            prefer = False
        for key in mine:
            self.holders.add(hashes, key)


def assign(
    hashes: Sequence[Sequence[int]],
    replicas: Sequence[Endpoint],
    *,
    max_per_replica: int = UNLIMITED,
    min_colocate_blocks: int = 0,
    by_tokens: bool = False,
) -> list[str | None]:
    """The endpoint key each request of a sealed window goes to (None: no affinity).

    ``hashes`` holds each request's prefix block hashes, in arrival order; ``replicas`` are the
    candidates (upstream takes the first request's). See the module docstring for the rules.
    """
    out: list[str | None] = [None] * len(hashes)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, h in enumerate(hashes):
        if h:
            groups.setdefault(tuple(h), []).append(i)
    if not replicas or not groups:
        return out
    shared_singles: set[tuple[int, ...]] = set()
    n = min_colocate_blocks
    if n > 0:
        # a single request is placed only if its first n blocks are some other request's too
        by_lead: dict[int, int] = {}
        for key, members in groups.items():
            if len(key) >= n:
                by_lead[key[n - 1]] = by_lead.get(key[n - 1], 0) + len(members)
        shared_singles = {key for key in groups if len(key) >= n and by_lead[key[n - 1]] >= 2}
    units = [key for key, members in groups.items() if len(members) >= 2]
    singles = [key for key, members in groups.items() if len(members) == 1 and key in shared_singles]
    if not units and not singles:
        return out
    # longest prefix first in each tier (stable): it leaves the most blocks for shorter ones to match
    units.sort(key=len, reverse=True)
    singles.sort(key=len, reverse=True)
    placed = units + singles
    total = sum(len(key) if by_tokens else len(groups[key]) for key in placed)
    fair_share = -(-total // len(replicas))
    placer = _Placer(replicas, max_per_replica, min_colocate_blocks, by_tokens, fair_share)
    for key in placed:
        placer.place(groups[key], key, out)
    return out


class BurstAssignments:
    """Where the last two windows sent their requests, for the scorer to read.

    Keyed by request id and checked against the request object itself, so a client reusing an
    ``x-request-id`` cannot take another request's assignment. Each sealed window starts a new
    generation and drops the one before the last: its requests were scheduled as soon as the
    window released them, so nothing is kept per request beyond two windows.
    """

    def __init__(self) -> None:
        self._current: dict[str, tuple[InferenceRequest, str]] = {}
        self._previous: dict[str, tuple[InferenceRequest, str]] = {}

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def start_window(self) -> None:
        self._previous, self._current = self._current, {}

    def record(self, request: InferenceRequest, key: str) -> None:
        self._current[request.request_id] = (request, key)

    def target(self, request: InferenceRequest) -> str | None:
        """The endpoint key ``request``'s window assigned it; None: no affinity (or not batched)."""
        found = self._current.get(request.request_id) or self._previous.get(request.request_id)
        return found[1] if found is not None and found[0] is request else None


class BurstPrefixProducer:
    """``burst-prefix-cache-producer``: the window's parameters and its results.

    A plugin the scorer finds by name; it is not a profile stage. The request path's window
    (:class:`infergate.requestcontrol.burst.BurstWindow`) hashes and assigns with it and records
    each request's endpoint in :attr:`assignments`.
    """

    def __init__(self, params: BurstPrefixParams | None = None) -> None:
        self.params = params or BurstPrefixParams()
        self.assignments = BurstAssignments()

    @property
    def window_seconds(self) -> float:
        return self.params.window_duration_ms / 1000

    def hashes(self, request: InferenceRequest) -> list[int]:
        p = self.params
        return prefix_hashes(request, p.block_size_tokens, p.max_blocks)

    def assign(self, hashes: Sequence[Sequence[int]], replicas: Sequence[Endpoint]) -> list[str | None]:
        p = self.params
        return assign(
            hashes,
            replicas,
            max_per_replica=p.max_per_replica,
            min_colocate_blocks=p.min_colocate_blocks,
            by_tokens=p.by_tokens,
        )


class BurstScorerParams(Params):
    """The form ``prefix-cache-scorer`` takes when it names a ``burst-prefix-cache-producer``
    (``config.picker_folds`` rewrites it): only the producer's name."""

    prefix_match_info_producer_name: str = Field(min_length=1)


class BurstPrefixScorer:
    """``prefix-cache-scorer`` reading a ``burst-prefix-cache-producer``: 1.0 on the endpoint the
    request's window assigned it, 0 on every other; 0 everywhere without an assignment.

    Upstream's producer reports a full prefix match on the assigned endpoint and none elsewhere,
    which its scorer turns into exactly these scores. An assigned endpoint that is no longer a
    candidate (it left the pool, or a filter removed it) scores 0 everywhere, logged at debug.
    """

    def __init__(self, params: BurstScorerParams) -> None:
        self._name = params.prefix_match_info_producer_name
        self._producer: BurstPrefixProducer | None = None

    def bind_plugins(self, plugins: Mapping[str, tuple[object, str]]) -> None:
        """Find the producer ``prefixMatchInfoProducerName`` names."""
        found = plugins.get(self._name)
        if found is None or not isinstance(found[0], BurstPrefixProducer):
            raise ValueError(
                f"prefixMatchInfoProducerName {self._name!r} names no burst-prefix-cache-producer"
            )
        self._producer = found[0]

    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Mapping[str, float]:
        producer = self._producer
        target = producer.assignments.target(request) if producer is not None else None
        if target is None:
            return {}
        if target in candidate_keys(candidates, state):
            return {target: 1.0}
        log.debug(
            "burst-prefix: request %s was assigned %s, which is not a candidate; no affinity",
            request.request_id,
            target,
        )
        return {}
