"""An endpoint that leaves the pool leaves every plugin that keeps state per endpoint.

The gateway's core subscribes ``Scheduler.forget_endpoint`` to the datastore's departures, so it
does not matter who removes the endpoint (the manifests re-applied, a pod deleted in the cluster).
"""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry

from infergate.app.core import build_core
from infergate.config.picker import parse_picker_config
from infergate.config.settings import Settings
from infergate.datastore.store import Datastore
from infergate.scheduling.plugins.latency import PredictedLatencyScorer
from infergate.scheduling.plugins.prefix import PrefixCacheScorer
from infergate.scheduling.plugins.upstream_plugins import NoHitLRUScorer
from infergate.scheduling.sdk.framework import EndpointStateHolder
from infergate.sources.manifests import sync_endpoints
from infergate.telemetry import GatewayMetrics
from infergate.types import EndpointMeta, EndpointMetrics, InferenceRequest, PoolSpec

CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefix-cache-scorer
  parameters: {blockSizeTokens: 4, autoTune: false}
- type: predicted-latency-scorer
- type: no-hit-lru-scorer
- type: max-score-picker
"""


class FakeClock:
    def __init__(self) -> None:
        self.t = 10.0

    def now(self) -> float:
        return self.t


def _holders_know(
    key: str, prefix: PrefixCacheScorer, latency: PredictedLatencyScorer, lru: NoHitLRUScorer
) -> dict[str, bool]:
    return {
        "prefix-cache-scorer": key in prefix.index.servers(),
        "predicted-latency-scorer": key in latency._state or key in latency.index.servers(),
        "no-hit-lru-scorer": key in lru._lru,
    }


def test_a_departed_endpoint_is_forgotten_by_every_stateful_plugin() -> None:
    clock = FakeClock()
    ds = Datastore(clock, staleness=5.0)
    pool = PoolSpec(name="pool")
    metas = [EndpointMeta(name=f"e{i}", address="10.0.0.1", port=8000 + i, pool="pool") for i in range(2)]
    ds.set_pool(pool)
    sync_endpoints(ds, metas)
    for m in metas:
        ds.update_metrics(m.key, EndpointMetrics(updated_at=clock.t))
    core = build_core(
        ds,
        pool,
        picker=parse_picker_config(CONFIG),
        settings=Settings(),
        metrics=GatewayMetrics(CollectorRegistry()),
        clock=clock,
        rng=random.Random(1),
    )
    sched = core.scheduler
    prefix, latency, lru = (
        sched.plugin(n) for n in ("prefix-cache-scorer", "predicted-latency-scorer", "no-hit-lru-scorer")
    )
    assert isinstance(prefix, PrefixCacheScorer) and isinstance(latency, PredictedLatencyScorer)
    assert isinstance(lru, NoHitLRUScorer)
    holders = [p for p in (prefix, latency, lru) if isinstance(p, EndpointStateHolder)]
    assert len(holders) == 3

    # every endpoint serves requests until each plugin holds state for both
    for i in range(8):
        prompt = f"request {i} with a prompt long enough to fill several prefix blocks"
        req = InferenceRequest(request_id=f"r{i}", model="m", target_model="m", prompt=prompt)
        result = sched.schedule(req, ds.candidates())
        ds.update_metrics(result.primary.key, EndpointMetrics(waiting_queue_size=i + 1, updated_at=clock.t))
    gone, kept = metas[0].key, metas[1].key
    before = _holders_know(gone, prefix, latency, lru)
    assert all(before.values()), before

    sync_endpoints(ds, [metas[1]])  # what re-applied manifests (or a deleted pod) do

    assert not any(_holders_know(gone, prefix, latency, lru).values())
    assert ds.endpoint(gone) is None and ds.endpoint(kept) is not None
