"""The ``pool:`` part of a workload file: the pool it is meant for, and how it changes during a run.

Flags of ``infergate bench`` override these defaults. Events that change the pool (replicas joining
or leaving, GPUs slowing down) happen at points of a measured window, so only steady-state twin runs
take them (:mod:`infergate.bench.steady`); the others refuse such a workload by name.
"""

from __future__ import annotations

import itertools

from pydantic import BaseModel, ConfigDict, Field, field_validator

from infergate.simulator.profile import get_profile

__all__ = ["PoolDefaults", "ScaleEvent", "SlowEvent"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ScaleEvent(_Model):
    """Replicas joining (``replicas`` > 0) or leaving (< 0) the pool during a run, as an
    autoscaler or a rollout changes an InferencePool's endpoints."""

    at: float = Field(ge=0.0, le=1.0)
    """When: a fraction of the measured window (a run without one refuses the workload)."""
    replicas: int
    """How many: a joining replica is a fresh server (empty caches, no adapter in a GPU slot);
    the last ones to join leave first, and finish what they run."""

    @field_validator("replicas")
    @classmethod
    def _nonzero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("a scale event's replicas must be non-zero (joining > 0, leaving < 0)")
        return value


class SlowEvent(_Model):
    """A replica's GPU slowing down or recovering during a run (thermal throttling, a neighbour
    sharing the GPU, a degraded card): the gateway is not told, it sees only the answers."""

    at: float = Field(ge=0.0, le=1.0)
    """When: a fraction of the measured window (a run without one refuses the workload)."""
    replica: int = Field(ge=0)
    """Which: the index of the replica, in the order replicas start and join."""
    factor: float = Field(gt=0.0)
    """Its engine steps take ``factor`` times what its profile says from then on (1 restores it);
    its API frontend keeps its pace."""


class PoolDefaults(_Model):
    """The pool a workload is meant for, used by ``--twin`` unless a flag says otherwise."""

    replicas: int | None = Field(default=None, ge=1)
    adapters: tuple[str, ...] | None = None
    max_loras: int | None = Field(default=None, ge=1)
    arrival: str | None = None
    rate_profile: tuple[float, ...] | None = None
    """Rate multipliers evenly spaced over the measured window, linear between, rescaled to mean 1
    (a diurnal ramp); see :class:`~infergate.bench.arrivals.RateProfile`."""
    profiles: tuple[str, ...] | None = Field(default=None, min_length=1)
    """Simulator timing profiles of a mixed pool, replica ``i`` running ``profiles[i % len]`` (e.g.
    H100s beside A100s); none: every replica runs the default profile."""

    scale: tuple[ScaleEvent, ...] = ()
    """Replicas joining or leaving during the run, in order of ``at`` (the twin only: ``replicas``
    is the count at the start)."""
    slow: tuple[SlowEvent, ...] = ()
    """Replicas whose GPUs slow down or recover during the run, in order of ``at`` (the twin only)."""

    @field_validator("scale", "slow")
    @classmethod
    def _in_order(cls, value: tuple[ScaleEvent | SlowEvent, ...]) -> tuple[ScaleEvent | SlowEvent, ...]:
        if any(b.at < a.at for a, b in itertools.pairwise(value)):
            raise ValueError("events must be in order of 'at'")
        return value

    @field_validator("profiles")
    @classmethod
    def _known_profiles(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for name in value or ():
            get_profile(name)  # ValueError naming the profile and the known ones
        return value
