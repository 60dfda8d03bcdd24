"""Topology-aware prefill placement for P/D disaggregation (llm-d-router's ``topology-*`` plugins).

When ``disagg-profile-handler`` splits a request, the decode endpoint is picked first and the
prefill endpoint second; the prefill's KV cache then travels to the decoder. Over NVLink inside a
host that transfer is about a hundred times faster than across a NIC, and slower again across
switches, zones or regions, so the prefill pick should stay close to the decode pick:

* ``topology-extractor`` says where an endpoint is: its pod's labels (``hostname``:
  ``kubernetes.io/hostname``, ``rack``: ``topology.kubernetes.io/rack``, ``zone``:
  ``topology.kubernetes.io/zone``, ``region``: ``topology.kubernetes.io/region``; each label key
  settable), the host falling back to the pod's ``spec.hostname``;
* ``topology-affinity-filter`` (``minAffinity``: ``host``, ``rack``, ``zone`` or ``region``) keeps
  the prefill candidates sharing at least that level with the decode pick; it keeps everyone when
  the decode pick's place is unknown or no candidate qualifies (a preference, never a refusal);
* ``topology-affinity-scorer`` grades each candidate by the closest level it shares: host 1.0,
  rack 0.2, zone 0.05, region 0.02, none 0 (the transfer bandwidth's steps, as the reference).

A level is shared only when both sides name it and the names are equal (an empty name matches
nothing); a shared host implies the rest. Outside a prefill profile (no decode pick in the cycle)
the filter keeps every candidate and the scorer gives 0. The filter and the scorer read the
extractor named by ``topologyProducerName``, or the config's only one; a config without one is
refused, since they could only ever keep everyone and score 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from infergate.scheduling.sdk.framework import CycleState, Params, StateKey, candidate_keys
from infergate.scheduling.sdk.scores import CandidateScores
from infergate.types import Endpoint, InferenceRequest

__all__ = [
    "PEER_ENDPOINT",
    "Topology",
    "TopologyAffinityFilter",
    "TopologyAffinityParams",
    "TopologyAffinityScorer",
    "TopologyExtractor",
    "TopologyExtractorParams",
]

PEER_ENDPOINT: StateKey[Endpoint] = StateKey("peer-endpoint")
"""The decode endpoint already picked, in the cycle state of a P/D request's prefill profile."""

# shared level -> rank (higher is closer) and the scorer's grade
_RANK = {"none": 0, "region": 1, "zone": 2, "rack": 3, "host": 4}
_GRADE = (0.0, 0.02, 0.05, 0.2, 1.0)


@dataclass(frozen=True, slots=True)
class Topology:
    host: str = ""
    rack: str = ""
    zone: str = ""
    region: str = ""

    @property
    def known(self) -> bool:
        return bool(self.host or self.rack or self.zone or self.region)

    def shared_rank(self, other: Topology) -> int:
        """The closest level both name alike: 4 host, 3 rack, 2 zone, 1 region, 0 none."""
        if self.host and self.host == other.host:
            return 4
        if self.rack and self.rack == other.rack:
            return 3
        if self.zone and self.zone == other.zone:
            return 2
        if self.region and self.region == other.region:
            return 1
        return 0


class TopologyExtractorParams(Params):
    """Pod label keys (the reference's names and defaults)."""

    hostname: str = "kubernetes.io/hostname"
    rack: str = "topology.kubernetes.io/rack"
    zone: str = "topology.kubernetes.io/zone"
    region: str = "topology.kubernetes.io/region"


class TopologyExtractor:
    """``topology-extractor``: an endpoint's place, from its pod's labels (not a profile stage)."""

    def __init__(self, params: TopologyExtractorParams | None = None) -> None:
        p = params or TopologyExtractorParams()
        self._keys = (p.hostname, p.rack, p.zone, p.region)

    def topology(self, endpoint: Endpoint) -> Topology:
        meta = endpoint.meta
        labels = meta.labels
        host_key, rack_key, zone_key, region_key = self._keys
        return Topology(
            host=labels.get(host_key, "") or meta.hostname,
            rack=labels.get(rack_key, ""),
            zone=labels.get(zone_key, ""),
            region=labels.get(region_key, ""),
        )


class TopologyAffinityParams(Params):
    min_affinity: Literal["host", "rack", "zone", "region"] = "host"
    topology_producer_name: str = ""


class _PeerAffinity:
    """What the filter and the scorer share: the extractor they read and the decode pick's place."""

    def __init__(self, producer: str) -> None:
        self._producer = producer
        self._extractor: TopologyExtractor | None = None

    def bind_plugins(self, plugins: Mapping[str, tuple[object, str]]) -> None:
        """Find the ``topology-extractor`` (by ``topologyProducerName``, else the only one)."""
        found = [(n, inst) for n, (inst, _) in plugins.items() if isinstance(inst, TopologyExtractor)]
        if self._producer:
            found = [(n, inst) for n, inst in found if n == self._producer]
            if not found:
                raise ValueError(f"topologyProducerName {self._producer!r} names no topology-extractor")
        if len(found) != 1:
            raise ValueError(
                "needs a topology-extractor to read endpoints' places from "
                f"(found {len(found)}); declare one, or name one with topologyProducerName"
            )
        self._extractor = found[0][1]

    def _ranks(self, candidates: Sequence[Endpoint], state: CycleState) -> list[int] | None:
        """Each candidate's shared rank with the decode pick; None when its place is unknown."""
        peer = state.get(PEER_ENDPOINT)
        extractor = self._extractor
        if peer is None or extractor is None:
            return None
        home = extractor.topology(peer)
        if not home.known:
            return None
        return [extractor.topology(e).shared_rank(home) for e in candidates]


class TopologyAffinityFilter(_PeerAffinity):
    """``topology-affinity-filter``: prefill candidates at least ``minAffinity`` close to the decode
    pick; all of them when its place is unknown or none is that close."""

    def __init__(self, params: TopologyAffinityParams | None = None) -> None:
        p = params or TopologyAffinityParams()
        super().__init__(p.topology_producer_name)
        self._floor = _RANK[p.min_affinity]

    def filter(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> Sequence[Endpoint]:
        ranks = self._ranks(candidates, state)
        if ranks is None:
            return candidates
        kept = [e for e, r in zip(candidates, ranks, strict=True) if r >= self._floor]
        return kept or candidates


class TopologyScorerParams(Params):
    topology_producer_name: str = ""


class TopologyAffinityScorer(_PeerAffinity):
    """``topology-affinity-scorer``: 1.0 same host, 0.2 rack, 0.05 zone, 0.02 region, else 0."""

    def __init__(self, params: TopologyScorerParams | None = None) -> None:
        super().__init__((params or TopologyScorerParams()).topology_producer_name)

    def score(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], state: CycleState, /
    ) -> CandidateScores:
        keys = candidate_keys(candidates, state)
        ranks = self._ranks(candidates, state)
        values = [0.0] * len(keys) if ranks is None else [_GRADE[r] for r in ranks]
        return CandidateScores(keys, values, bounded=True)
