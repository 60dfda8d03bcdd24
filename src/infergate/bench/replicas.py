"""Read what the model-server replicas themselves counted during a run.

The client cannot see prefix-cache hits or adapter loads; the replicas' ``/metrics`` can. We read
the counters before and after a run and report the difference, so numbers from earlier runs on the
same replicas do not leak in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["ReplicaCounters", "read_counters"]

_COUNTERS = {
    "vllm:prefix_cache_queries": "prefix_queries",
    "vllm:prefix_cache_hits": "prefix_hits",
    "vllm:request_success": "requests",
    "infergate_sim:lora_gpu_loads": "lora_loads",
}


@dataclass(frozen=True, slots=True)
class ReplicaCounters:
    prefix_queries: float = 0.0
    prefix_hits: float = 0.0
    requests: float = 0.0
    lora_loads: float = 0.0

    def __sub__(self, other: ReplicaCounters) -> ReplicaCounters:
        return ReplicaCounters(
            self.prefix_queries - other.prefix_queries,
            self.prefix_hits - other.prefix_hits,
            self.requests - other.requests,
            self.lora_loads - other.lora_loads,
        )


def parse_counters(text: str) -> ReplicaCounters:
    values = dict.fromkeys(_COUNTERS.values(), 0.0)
    for family in text_string_to_metric_families(text):
        field = _COUNTERS.get(family.name)
        if field is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                values[field] += sample.value
    return ReplicaCounters(**values)


async def read_counters(urls: Sequence[str]) -> dict[str, ReplicaCounters]:
    """Counters per replica base URL; a replica that does not answer reads as zeros."""

    async def one(session: aiohttp.ClientSession, url: str) -> tuple[str, ReplicaCounters]:
        try:
            async with session.get(url.rstrip("/") + "/metrics") as resp:
                return url, parse_counters(await resp.text())
        except (aiohttp.ClientError, TimeoutError):
            return url, ReplicaCounters()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        return dict(await asyncio.gather(*(one(session, u) for u in urls)))
