"""The manifest source: makes the datastore hold exactly what a set of loaded manifests describes.

``infergate serve`` and ``infergate up`` have no Kubernetes API to watch; the manifests are the
whole truth. :func:`apply_manifests` is idempotent and can be called again after the files change:
it adds and updates what the manifests name and removes what they no longer name, leaving the
live state of endpoints that stay (metrics, health, in-flight counts) untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from infergate.datastore.store import Datastore
from infergate.types import EndpointMeta, ModelRewrite, Objective, PoolSpec

__all__ = ["ManifestSource", "apply_manifests"]


class ManifestSource(Protocol):
    """The part of ``infergate.api.loader.ManifestSet`` this module reads."""

    def endpoints_for(self, pool: PoolSpec) -> list[EndpointMeta]: ...
    def objective_values(self) -> list[Objective]: ...
    def rewrite_values(self) -> list[ModelRewrite]: ...


def _for_pool(pool_ref: str, pool: PoolSpec) -> bool:
    # An object naming no pool applies to the only pool the gateway serves.
    return pool_ref in ("", pool.name)


def apply_manifests(datastore: Datastore, manifests: ManifestSource, pool: PoolSpec) -> None:
    """Set the pool, then sync endpoints, objectives and rewrites to those of ``pool``."""
    datastore.set_pool(pool)
    sync_endpoints(datastore, manifests.endpoints_for(pool))

    objectives = [o for o in manifests.objective_values() if _for_pool(o.pool, pool)]
    wanted_objectives = {o.name for o in objectives}
    for old in datastore.objectives():
        if old.name not in wanted_objectives:
            datastore.remove_objective(old.name)
    for o in objectives:
        datastore.upsert_objective(o)

    rewrites = [r for r in manifests.rewrite_values() if _for_pool(r.pool, pool)]
    wanted_rewrites = {r.name for r in rewrites}
    for old_r in datastore.rewrites():
        if old_r.name not in wanted_rewrites:
            datastore.remove_rewrite(old_r.name)
    for r in rewrites:
        datastore.upsert_rewrite(r)


def sync_endpoints(datastore: Datastore, endpoints: Sequence[EndpointMeta]) -> None:
    """Upsert ``endpoints`` and remove every other endpoint from the datastore."""
    wanted = {e.key for e in endpoints}
    for existing in datastore.endpoints():
        if existing.key not in wanted:
            datastore.remove_endpoint(existing.key)
    for meta in endpoints:
        datastore.upsert_endpoint(meta)
