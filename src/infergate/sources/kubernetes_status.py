"""The InferencePool ``status.parents`` entry the endpoint picker owns, and how it is written.

Gateways (the parents) own their own entries in ``status.parents``; the picker never touches them.
The picker owns only the ``parentRef: {kind: Status, name: default}`` entry, which the CRD defines
as "this pool is not referenced by any Gateway yet". While that entry exists (or the list is empty)
the picker keeps two conditions on it:

- ``Accepted``: ``Unknown``/``Pending`` ("waiting for a Gateway"), never ``True``: accepting the
  pool is the parent's decision;
- ``ResolvedRefs``: ``True``/``ResolvedRefs`` when the picker could read the pool (with the number
  of ready endpoints in the message), ``False``/``InvalidExtensionRef`` when the pool's spec is
  unusable to it.

Once a Gateway controller has replaced the default entry with its own, the picker stops writing.
The computation is pure (:func:`desired_status`); the write goes through the status subresource
with the object's ``resourceVersion``, so a concurrent writer makes it fail with 409 instead of
being overwritten, and several picker replicas converge on the same content without a leader.
"""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass
from typing import Any

__all__ = ["CONTROLLER_NAME", "PoolHealth", "desired_status", "is_default_parent"]

CONTROLLER_NAME = "infergate.dev/endpoint-picker"


@dataclass(frozen=True, slots=True)
class PoolHealth:
    """What the picker knows about its pool, summarised for the status."""

    valid: bool
    ready_endpoints: int
    message: str = ""


def is_default_parent(entry: dict[str, Any]) -> bool:
    ref = entry.get("parentRef") or {}
    return ref.get("kind") == "Status" and ref.get("name") == "default"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(
    old: list[dict[str, Any]], type_: str, status: str, reason: str, message: str, generation: int | None
) -> dict[str, Any]:
    prev = next((c for c in old if c.get("type") == type_), None)
    changed = prev is None or prev.get("status") != status
    cond: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": _now() if changed or prev is None else prev.get("lastTransitionTime", _now()),
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def _same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    def strip(cs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted(
            (c.get("type"), c.get("status"), c.get("reason"), c.get("message"), c.get("observedGeneration"))
            for c in cs
        )

    return strip(a) == strip(b)


def desired_status(
    pool: dict[str, Any], health: PoolHealth, *, controller_name: str = CONTROLLER_NAME
) -> dict[str, Any] | None:
    """The pool's new ``status``, or ``None`` when the picker has nothing to change.

    Conditions other than ``Accepted``/``ResolvedRefs`` on the default entry, and every other
    parent's entry, are kept as they are.
    """
    status = copy.deepcopy(pool.get("status") or {})
    parents: list[dict[str, Any]] = list(status.get("parents") or [])
    index = next((i for i, p in enumerate(parents) if is_default_parent(p)), None)
    if index is None and parents:
        return None  # Gateways have taken over the status: not ours to write
    entry: dict[str, Any] = (
        parents[index] if index is not None else {"parentRef": {"kind": "Status", "name": "default"}}
    )
    old_conditions: list[dict[str, Any]] = list(entry.get("conditions") or [])
    generation = (pool.get("metadata") or {}).get("generation")
    gen = int(generation) if generation is not None else None
    accepted = _condition(
        old_conditions,
        "Accepted",
        "Unknown",
        "Pending",
        "Waiting for a Gateway to reference this InferencePool",
        gen,
    )
    if health.valid:
        resolved = _condition(
            old_conditions,
            "ResolvedRefs",
            "True",
            "ResolvedRefs",
            health.message or f"endpoint picker resolved {health.ready_endpoints} ready endpoint(s)",
            gen,
        )
    else:
        resolved = _condition(
            old_conditions,
            "ResolvedRefs",
            "False",
            "InvalidExtensionRef",
            health.message or "the endpoint picker cannot use this pool",
            gen,
        )
    others = [c for c in old_conditions if c.get("type") not in ("Accepted", "ResolvedRefs")]
    new_conditions = [accepted, resolved, *others][:8]
    if (
        index is not None
        and entry.get("controllerName") == controller_name
        and _same(old_conditions, new_conditions)
    ):
        return None
    new_entry = {**entry, "controllerName": controller_name, "conditions": new_conditions}
    if index is None:
        parents = [new_entry]
    else:
        parents[index] = new_entry
    status["parents"] = parents
    return status
