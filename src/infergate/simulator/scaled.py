"""Slowed engines: ``--time-scale`` for the simulator server and the digital twin alike.

Kept out of ``server`` so the twin can use it without importing aiohttp.
"""

from __future__ import annotations

from infergate.simulator.engine import Engine, EngineConfig

__all__ = ["ScaledEngine", "make_engine"]


class ScaledEngine(Engine):
    """An engine whose step durations are multiplied by ``time_scale`` (tests and demos run faster,
    two CPU cores can overload a slowed pool honestly)."""

    def __init__(self, config: EngineConfig, time_scale: float) -> None:
        super().__init__(config)
        self.time_scale = time_scale  # also scales the KV transfer times the engine computes

    def begin_step(self, now: float) -> float | None:
        duration = super().begin_step(now)
        return None if duration is None else duration * self.time_scale


def make_engine(config: EngineConfig, time_scale: float = 1.0) -> Engine:
    """A plain engine at time-scale 1, else a :class:`ScaledEngine`."""
    return Engine(config) if time_scale == 1.0 else ScaledEngine(config, time_scale)
