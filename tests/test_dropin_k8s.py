"""The Kubernetes source reads InferenceObjective / InferenceModelRewrite under both API groups.

llm-d-router v0.10 moved both APIs to ``llm-d.ai/v1alpha2``; clusters migrating from GIE v1.5 hold
objects under ``inference.networking.x-k8s.io/v1alpha2`` too. The picker watches both, lets the
``llm-d.ai`` object win when both groups name the same object, and still starts when one group's
CRD is not installed (its collections answer 404).
"""

from __future__ import annotations

from pathlib import Path

from infergate.types import Objective
from tests.k8s_apiserver import LLMD_GROUP, X_GROUP, FakeApiServer, objective, pool, rewrite
from tests.test_kubernetes_source import apiserver, running

__all__ = ["apiserver"]

LLMD = f"{LLMD_GROUP}/v1alpha2"


async def test_llmd_group_objectives_and_rewrites_win_over_the_gie_group(
    apiserver: FakeApiServer, tmp_path: Path
) -> None:
    apiserver.apply(pool())
    apiserver.apply(objective("only-llmd", 7, group=LLMD_GROUP))
    apiserver.apply(objective("both", 1))
    apiserver.apply(objective("both", 9, group=LLMD_GROUP))
    apiserver.apply(rewrite("rw", "food", {"food-v1": 1}))
    apiserver.apply(rewrite("rw", "food", {"food-v2": 1}, group=LLMD_GROUP))
    async with running(apiserver, tmp_path) as h:
        await h.until(lambda: len(h.ds.objectives()) == 2, "objectives from both groups")
        assert h.ds.objective("only-llmd") == Objective(name="only-llmd", priority=7, pool="vllm-pool")
        assert h.ds.objective("both") == Objective(name="both", priority=9, pool="vllm-pool")
        assert [r.rules[0].targets[0].model for r in h.ds.rewrites()] == ["food-v2"]

        # The llm-d.ai object goes: the GIE-group one with the same name takes over.
        apiserver.delete("InferenceObjective", "both", api_version=LLMD)
        await h.until(lambda: getattr(h.ds.objective("both"), "priority", None) == 1, "fallback to GIE")
        apiserver.delete("InferenceModelRewrite", "rw", api_version=LLMD)
        await h.until(
            lambda: [r.rules[0].targets[0].model for r in h.ds.rewrites()] == ["food-v1"], "rewrite fallback"
        )
        # And a change under llm-d.ai is seen through its watch.
        apiserver.apply(objective("only-llmd", 3, group=LLMD_GROUP))
        await h.until(lambda: getattr(h.ds.objective("only-llmd"), "priority", None) == 3, "llm-d change")


async def test_a_group_without_crds_counts_as_empty(apiserver: FakeApiServer, tmp_path: Path) -> None:
    apiserver.uninstalled_groups.add(X_GROUP)
    apiserver.apply(pool())
    apiserver.apply(objective("p", 4, group=LLMD_GROUP))
    async with running(apiserver, tmp_path) as h:  # synced despite the 404s of the GIE group
        await h.until(lambda: h.ds.objective("p") is not None, "llm-d objective")
        gie = h.source.reflectors[f"inferenceobjectives.{X_GROUP}"]
        assert gie.synced.is_set() and not gie.installed and gie.items == {}
        llmd = h.source.reflectors[f"inferenceobjectives.{LLMD_GROUP}"]
        assert llmd.installed
