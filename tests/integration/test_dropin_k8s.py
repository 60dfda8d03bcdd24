"""The Kubernetes source reads InferenceObjective / InferenceModelRewrite under both API groups.

llm-d-router v0.10 moved both APIs to ``llm-d.ai/v1alpha2``; clusters migrating from GIE v1.5 hold
objects under ``inference.networking.x-k8s.io/v1alpha2`` too. The picker watches both, lets the
``llm-d.ai`` object win when both groups name the same object, and still starts when one group's
CRD is not installed (its collections answer 404).
"""

from __future__ import annotations

from pathlib import Path

from infergate.types import Objective
from tests.integration.test_kubernetes_source import apiserver, running
from tests.k8s_apiserver import LLMD_GROUP, X_GROUP, FakeApiServer, objective, pod, pool, rewrite

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


# ------------------------------------------------------------------ real API-server behaviours


async def test_restart_429_initializing_then_410_relist(apiserver: FakeApiServer, tmp_path: Path) -> None:
    apiserver.apply(pool())
    apiserver.apply(pod("a", "10.0.0.1"))
    async with running(apiserver, tmp_path) as h:
        assert h.endpoint_keys() == {"10.0.0.1:8000"}
        reflectors = h.source.reflectors.values()
        errors_before = sum(r.errors for r in reflectors)
        relists_before = sum(r.relists_gone for r in reflectors)
        apiserver.restart(initializing=4)
        apiserver.delete("Pod", "a")  # changes while the cache was warming
        apiserver.apply(pod("b", "10.0.0.2"))
        await h.until(lambda: h.endpoint_keys() == {"10.0.0.2:8000"}, "state after the restart")
        assert apiserver.initializing_answers == 4
        # the four 429s went to whichever watches asked first (on a loaded machine not always
        # the pods' or the pools'): each is counted as an error by the reflector it reached
        await h.until(lambda: sum(r.errors for r in reflectors) >= errors_before + 4, "the 429s counted")
        assert sum(r.relists_gone for r in reflectors) > relists_before


async def test_pod_deleted_without_terminating_phase(apiserver: FakeApiServer, tmp_path: Path) -> None:
    apiserver.apply(pool())
    apiserver.apply(pod("a", "10.0.0.1"))
    apiserver.apply(pod("b", "10.0.0.2"))
    async with running(apiserver, tmp_path) as h:
        apiserver.delete("Pod", "a")  # straight to DELETED, never Terminating
        await h.until(lambda: h.endpoint_keys() == {"10.0.0.2:8000"}, "pod gone at once")
        apiserver.delete_gracefully("Pod", "b")
        await h.until(lambda: h.endpoint_keys() == set(), "gracefully deleted pod gone")


async def test_silent_watches_are_abandoned_and_resumed(apiserver: FakeApiServer, tmp_path: Path) -> None:
    apiserver.bookmark_interval = 3600.0  # and bookmarks rarely come
    apiserver.apply(pool())
    async with running(apiserver, tmp_path, watch_timeout=1) as h:
        await h.until(lambda: apiserver.open_watches() == len(h.source.reflectors), "watches open")
        watches_before = h.source.reflectors["pods"].watches
        apiserver.stall_watches()  # connections survive a graceful shutdown but carry nothing
        apiserver.apply(pod("late", "10.0.0.7"))
        await h.until(lambda: h.endpoint_keys() == {"10.0.0.7:8000"}, "pod seen on a new watch", timeout=15)
        assert h.source.reflectors["pods"].watches > watches_before


async def test_rare_bookmarks_then_compaction_relists(apiserver: FakeApiServer, tmp_path: Path) -> None:
    apiserver.bookmark_interval = 3600.0
    apiserver.apply(pool())
    apiserver.apply(pod("a", "10.0.0.1"))
    async with running(apiserver, tmp_path) as h:
        for i in range(5):  # other kinds move the global resourceVersion; pods see no bookmark
            apiserver.apply(objective(f"o{i}", i))
        await h.until(lambda: len(h.ds.objectives()) == 5, "objectives")
        apiserver.drop_watches()
        apiserver.delete("Pod", "a")
        apiserver.compact()
        await h.until(lambda: h.endpoint_keys() == set(), "deletion seen after relist")
        assert h.source.reflectors["pods"].relists_gone >= 1


async def test_status_conflict_from_another_writer_is_retried(
    apiserver: FakeApiServer, tmp_path: Path
) -> None:
    apiserver.apply(pool())
    apiserver.apply(pod("a", "10.0.0.1"))
    apiserver.status_conflicts = 2
    async with running(apiserver, tmp_path) as h:

        def ready_message() -> str:
            obj = apiserver.get("InferencePool", "vllm-pool") or {}
            parents = (obj.get("status") or {}).get("parents") or [{}]
            conds = {c["type"]: c for c in parents[0].get("conditions", [])}
            return str(conds.get("ResolvedRefs", {}).get("message", ""))

        # The server holds the status once it handled the PUT; the source counts the write only when
        # the answer reached it, a moment later (seconds on a loaded machine): wait for both.
        await h.until(
            lambda: "1 ready endpoint" in ready_message() and h.source.status_writes >= 1,
            "status written after conflicts",
        )
        assert apiserver.conflicts_answered == 2


async def test_user_agent_names_infergate(apiserver: FakeApiServer, tmp_path: Path) -> None:
    from infergate.sources.kubernetes_client import user_agent

    apiserver.apply(pool())
    async with running(apiserver, tmp_path):
        pass
    assert user_agent().startswith("infergate/") and user_agent() != "infergate/"
    assert apiserver.user_agents and set(apiserver.user_agents) == {user_agent()}
