"""The Kubernetes source: keeps the datastore equal to what the cluster says about one pool.

``infergate epp --pool-name NAME --pool-namespace NS`` runs one :class:`KubernetesSource`. It
watches, in the pool's namespace, four resources through :class:`Reflector` (list + watch with
bookmarks, resume after dropped connections, relist after 410 Gone):

- the ``InferencePool`` named ``NAME`` (``inference.networking.k8s.io/v1``): selector, target ports,
  failure mode, model-server type;
- the Pods: an endpoint per target port of every pod that matches the selector, is Ready
  (condition ``Ready=True``), has a pod IP and is not terminating (``deletionTimestamp`` unset, so
  a pod being deleted leaves rotation at once); named ``<pod>-rank-<i>`` when there are several
  ports; the ``inference.networking.k8s.io/active-ports`` annotation restricts the ports;
- the ``InferenceObjective`` and ``InferenceModelRewrite`` objects whose ``poolRef`` names the pool,
  under both API groups: ``llm-d.ai/v1alpha2`` (llm-d-router v0.10) and
  ``inference.networking.x-k8s.io/v1alpha2`` (GIE v1.5). When both groups hold an object of the same
  name, the ``llm-d.ai`` one wins. Either group's CRD may be absent (404): it then counts as empty.

Every change recomputes the wanted state from the reflectors' maps and *diffs* it into the
datastore, so a relist after a gap removes what was deleted meanwhile and keeps the live state
(metrics, health, in-flight counts) of endpoints that stayed. The mapping from resources to value
objects is the manifest loader's (:class:`~infergate.api.loader.ManifestSet`), so files and the
cluster mean the same thing.

Optionally it also writes the pool's ``status.parents`` default entry (see ``kubernetes_status``).

Standalone mode (``epp --endpoint-selector SEL --endpoint-target-ports P,...``, the reference's
way to run without the CRDs): no InferencePool, objective or rewrite is watched; the endpoints are
the Ready pods of the namespace that ``SEL`` (Kubernetes selector syntax, set-based included)
selects, on the given ports, served under the picker Deployment's name.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from typing import Any

import aiohttp
from pydantic import ValidationError

from infergate.api.loader import ManifestSet, newest_group_wins
from infergate.api.resources import (
    InferenceModelRewriteResource,
    InferenceObjectiveResource,
    InferencePoolResource,
    PodResource,
)
from infergate.config.settings import Settings
from infergate.datastore.store import Datastore
from infergate.errors import ConfigError
from infergate.sources.kubernetes_client import (
    INFERENCE_MODEL_REWRITES,
    INFERENCE_OBJECTIVES,
    INFERENCE_POOLS,
    LLMD_INFERENCE_MODEL_REWRITES,
    LLMD_INFERENCE_OBJECTIVES,
    PODS,
    Resource,
    k8s_client,
    make_api_client,
)
from infergate.sources.kubernetes_reflector import Reflector
from infergate.sources.kubernetes_status import CONTROLLER_NAME, PoolHealth, desired_status
from infergate.sources.label_selector import LabelSelector
from infergate.sources.manifests import sync_endpoints
from infergate.types import EndpointMeta, PoolSpec

__all__ = ["WATCHED_RESOURCES", "KubernetesSource", "reflector_key", "standalone_pool_name"]

log = logging.getLogger("infergate.kubernetes")

POOL_GROUP = "inference.networking.k8s.io"

_OBJECTIVE_RESOURCES = (LLMD_INFERENCE_OBJECTIVES, INFERENCE_OBJECTIVES)
_REWRITE_RESOURCES = (LLMD_INFERENCE_MODEL_REWRITES, INFERENCE_MODEL_REWRITES)
_OPTIONAL_RESOURCES = (*_OBJECTIVE_RESOURCES, *_REWRITE_RESOURCES)
#: Everything the source lists and watches (the chart's Role must grant get/list/watch on each).
WATCHED_RESOURCES: tuple[Resource, ...] = (INFERENCE_POOLS, PODS, *_OPTIONAL_RESOURCES)


def reflector_key(resource: Resource) -> str:
    """Key of a resource's reflector: the plural for core and pool resources, ``plural.group`` for
    the objective and rewrite APIs, which exist under two groups with the same plural."""
    if resource.group in ("", POOL_GROUP):
        return resource.plural
    return f"{resource.plural}.{resource.group}"


def _pod_ready(pod: PodResource) -> bool:
    """Ready=True condition, Running with an IP, not terminating (stricter than hand-written pods)."""
    return pod.ready and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)


class KubernetesSource:
    """Watches one InferencePool and what belongs to it, writing the datastore.

    Args:
        datastore: the picker's datastore; this source owns its pool, endpoints, objectives and
            rewrites (nothing else should write them in ``epp`` mode).
        pool_name, pool_namespace: the pool to serve (``--pool-name``, ``--pool-namespace``).
        api_client: a ``kubernetes_asyncio`` ``ApiClient``; when ``None`` one is built from
            ``kubeconfig`` or in-cluster credentials and closed when :meth:`run` ends.
        pool_group: the pool's API group (``--pool-group``); objectives and rewrites must name it.
        write_status: keep the pool's default ``status.parents`` entry up to date.
        watch_timeout: ``timeoutSeconds`` of each watch request.
    """

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        datastore: Datastore,
        *,
        api_client: Any | None = None,
        rng: random.Random | None = None,
    ) -> KubernetesSource:
        """The source of ``settings.pool`` with the ``kubernetes`` settings group (namespace, API
        kubeconfig, status writing)."""
        from infergate.sources.kubernetes_client import default_pool_namespace

        k = settings.kubernetes
        selector: LabelSelector | None = None
        if k.endpoint_selector is not None:
            if settings.pool is not None:
                raise ConfigError("settings: give either pool (--pool-name) or kubernetes.endpoint_selector")
            try:
                selector = LabelSelector.parse(k.endpoint_selector)
            except ValueError as exc:
                raise ConfigError(f"kubernetes.endpoint_selector: {exc}") from None
            ports = k.endpoint_target_ports
            if not 1 <= len(ports) <= 8 or any(not 1 <= p <= 65535 for p in ports):
                raise ConfigError(
                    "kubernetes.endpoint_target_ports: 1 to 8 ports in 1..65535 are required with "
                    f"an endpoint selector (--endpoint-target-ports; got {list(ports)})"
                )
            name = standalone_pool_name(os.environ.get("POD_NAME"))
        elif settings.pool is None:
            raise ConfigError("settings: pool: the InferencePool to watch is required (--pool-name)")
        else:
            name = settings.pool
        return cls(
            datastore,
            pool_name=name,
            pool_namespace=k.pool_namespace or default_pool_namespace(),
            api_client=api_client,
            kubeconfig=str(k.kubeconfig) if k.kubeconfig is not None else None,
            write_status=k.write_status and selector is None,
            rng=rng,
            endpoint_selector=selector,
            endpoint_target_ports=tuple(dict.fromkeys(k.endpoint_target_ports)),
        )

    def __init__(
        self,
        datastore: Datastore,
        *,
        pool_name: str,
        pool_namespace: str = "default",
        api_client: Any | None = None,
        kubeconfig: str | None = None,
        pool_group: str = POOL_GROUP,
        write_status: bool = True,
        controller_name: str = CONTROLLER_NAME,
        watch_timeout: int = 300,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        status_interval: float = 1.0,
        rng: random.Random | None = None,
        endpoint_selector: LabelSelector | None = None,
        endpoint_target_ports: tuple[int, ...] = (),
    ) -> None:
        self._ds = datastore
        self._selector = endpoint_selector
        self._standalone: PoolSpec | None = None
        if endpoint_selector is not None:
            # standalone: no InferencePool; the pods the selector picks, on the given ports
            self._standalone = PoolSpec(
                name=pool_name, namespace=pool_namespace, target_ports=endpoint_target_ports
            )
        self.pool_name = pool_name
        self.namespace = pool_namespace
        self._api_client = api_client
        self._kubeconfig = kubeconfig
        self._pool_group = pool_group
        self._write_status = write_status
        self._controller_name = controller_name
        self._status_interval = status_interval
        self._rng = rng or random.Random()
        self._reflector_args: dict[str, Any] = {
            "watch_timeout": watch_timeout,
            "backoff_initial": backoff_initial,
            "backoff_max": backoff_max,
            "rng": self._rng,
        }
        self.reflectors: dict[str, Reflector] = {}
        self.synced = asyncio.Event()
        self._pool_spec: PoolSpec | None = None
        self._pool_error: str | None = None
        self._pod_cache: dict[str, tuple[str, PoolSpec, tuple[EndpointMeta, ...]]] = {}
        # (spec, endpoints) last written to the datastore; None forces a full diff.
        self._applied: tuple[PoolSpec | None, dict[str, EndpointMeta]] | None = None
        self._pod_lists_seen = 0
        self._status_dirty = asyncio.Event()
        self.status_writes = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def pool_spec(self) -> PoolSpec | None:
        """The pool as last read, ``None`` before it is seen or after it is deleted."""
        return self._pool_spec

    async def run(self) -> None:
        """Watch until cancelled. Connection problems are retried inside; nothing here returns."""
        owns_client = self._api_client is None
        client = self._api_client
        if client is None:
            client = await make_api_client(kubeconfig=self._kubeconfig)
        self._applied = None  # a restarted run starts with a full diff
        self._pod_lists_seen = 0
        if self._standalone is not None and self._pool_spec is None:
            self._pool_spec = self._standalone
            self._ds.set_pool(self._standalone)
        watched = (PODS,) if self._standalone is not None else WATCHED_RESOURCES
        try:
            self.reflectors = {
                reflector_key(r): Reflector(
                    client,
                    r,
                    self.namespace,
                    self._on_change,
                    optional=r in _OPTIONAL_RESOURCES,
                    **self._reflector_args,
                )
                for r in watched
            }
            async with asyncio.TaskGroup() as tg:
                for name, reflector in self.reflectors.items():
                    tg.create_task(reflector.run(), name=f"k8s-reflector-{name}")
                tg.create_task(self._wait_synced(), name="k8s-synced")
                if self._write_status:
                    tg.create_task(self._status_loop(client), name="k8s-pool-status")
        finally:
            if owns_client:
                await client.close()

    async def _wait_synced(self) -> None:
        await asyncio.gather(*(r.synced.wait() for r in self.reflectors.values()))
        self.synced.set()
        log.info(
            "kubernetes: synced pool %s/%s (%s), %d endpoint(s)",
            self.namespace,
            self.pool_name,
            "found" if self._pool_spec is not None else "not found",
            len(self._ds.endpoints()),
        )

    # ------------------------------------------------------------------ change handling

    def _on_change(self, reflector: Reflector) -> None:
        resource = reflector.resource
        if resource == INFERENCE_POOLS:
            self._sync_pool()
            self._sync_endpoints()
        elif resource == PODS:
            if reflector.lists != self._pod_lists_seen:  # a (re)list: full diff against the datastore
                self._pod_lists_seen = reflector.lists
                self._applied = None
            self._sync_endpoints()
        elif resource in _OBJECTIVE_RESOURCES:
            self._sync_objectives()
        elif resource in _REWRITE_RESOURCES:
            self._sync_rewrites()

    def _items(self, *resources: Resource) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for resource in resources:
            r = self.reflectors.get(reflector_key(resource))
            if r is not None:
                out.extend(r.items.values())
        return out

    def _pool_object(self) -> dict[str, Any] | None:
        r = self.reflectors.get(INFERENCE_POOLS.plural)
        return r.items.get(self.pool_name) if r is not None else None

    def _sync_pool(self) -> None:
        obj = self._pool_object()
        if obj is None:
            if self._pool_spec is not None:
                log.warning("kubernetes: InferencePool %s/%s was deleted", self.namespace, self.pool_name)
            self._pool_spec = None
            self._pool_error = None
            self._status_dirty.set()
            return
        try:
            resource = InferencePoolResource.model_validate(obj)
            spec = ManifestSet(pools=[resource]).pool_spec(self.pool_name)
        except (ValidationError, ConfigError) as exc:
            # Keep serving the last good spec: the API server validated the object, so this is a
            # field we do not know yet, and dropping every endpoint would be worse.
            self._pool_error = f"InferencePool {self.namespace}/{self.pool_name}: {_short(exc)}"
            log.error("kubernetes: %s; keeping the previous pool spec", self._pool_error)
            self._status_dirty.set()
            return
        self._pool_error = None
        if spec != self._pool_spec:
            log.info(
                "kubernetes: pool %s selector=%s ports=%s", spec.name, dict(spec.selector), spec.target_ports
            )
            self._pool_spec = spec
            self._ds.set_pool(spec)
        self._status_dirty.set()

    def _endpoints_of(self, obj: dict[str, Any], spec: PoolSpec) -> tuple[EndpointMeta, ...]:
        """The endpoints one pod gives under ``spec`` (none unless it matches and is Ready)."""
        try:
            parsed = PodResource.model_validate(obj)
        except ValidationError as exc:
            log.warning("kubernetes: ignoring pod: %s", _short(exc))
            return ()
        if not _pod_ready(parsed):
            return ()
        if self._selector is not None and not self._selector.matches(parsed.metadata.labels):
            return ()  # standalone: the selector (the spec's is empty and matches every pod)
        return tuple(ManifestSet(pods=[parsed]).endpoints_for(spec))

    def _wanted_endpoints(self, spec: PoolSpec) -> dict[str, EndpointMeta]:
        """Every endpoint the pods give, by key; per-pod results cached by (resourceVersion, spec),
        so a pod event costs one pod's validation, not the whole namespace's."""
        out: dict[str, EndpointMeta] = {}
        live: set[str] = set()
        for obj in self._items(PODS):
            meta = obj.get("metadata") or {}
            name = str(meta.get("name", ""))
            rv = str(meta.get("resourceVersion", ""))
            live.add(name)
            cached = self._pod_cache.get(name)
            if cached is None or cached[0] != rv or cached[1] is not spec:
                cached = (rv, spec, self._endpoints_of(obj, spec))
                self._pod_cache[name] = cached
            for ep in cached[2]:
                if ep.key in out:
                    log.warning("kubernetes: %s is claimed by %s and %s", ep.key, out[ep.key].name, ep.name)
                    continue
                out[ep.key] = ep
        if len(self._pod_cache) > len(live):
            for gone in set(self._pod_cache) - live:
                del self._pod_cache[gone]
        return out

    def _sync_endpoints(self) -> None:
        spec = self._pool_spec
        wanted = self._wanted_endpoints(spec) if spec is not None else {}
        if self._applied is None or self._applied[0] is not spec:
            sync_endpoints(self._ds, list(wanted.values()))  # full diff against the datastore
        else:
            previous = self._applied[1]
            for key in previous.keys() - wanted.keys():
                self._ds.remove_endpoint(key)
            for key, meta in wanted.items():
                if previous.get(key) is not meta:
                    self._ds.upsert_endpoint(meta)
        self._applied = (spec, wanted)
        self._status_dirty.set()

    def _refs_pool(self, group: str, kind: str, name: str) -> bool:
        return name == self.pool_name and kind == "InferencePool" and group in (self._pool_group, "")

    def _sync_objectives(self) -> None:
        parsed: list[InferenceObjectiveResource] = []
        for obj in self._items(*_OBJECTIVE_RESOURCES):
            try:
                parsed.append(InferenceObjectiveResource.model_validate(obj))
            except ValidationError as exc:
                log.warning("kubernetes: ignoring InferenceObjective: %s", _short(exc))
        wanted = [
            o
            for o in newest_group_wins(parsed)
            if self._refs_pool(o.spec.pool_ref.group, o.spec.pool_ref.kind, o.spec.pool_ref.name)
        ]
        values = ManifestSet(objectives=wanted).objective_values()
        names = {v.name for v in values}
        for old in self._ds.objectives():
            if old.name not in names:
                self._ds.remove_objective(old.name)
        for v in values:
            if self._ds.objective(v.name) != v:
                self._ds.upsert_objective(v)

    def _sync_rewrites(self) -> None:
        parsed: list[InferenceModelRewriteResource] = []
        for obj in self._items(*_REWRITE_RESOURCES):
            try:
                parsed.append(InferenceModelRewriteResource.model_validate(obj))
            except ValidationError as exc:
                log.warning("kubernetes: ignoring InferenceModelRewrite: %s", _short(exc))
        wanted = [
            r
            for r in newest_group_wins(parsed)
            if self._refs_pool(r.spec.pool_ref.group, r.spec.pool_ref.kind, r.spec.pool_ref.name)
        ]
        values = ManifestSet(rewrites=wanted).rewrite_values()  # oldest first: precedence order
        current = self._ds.rewrites()
        if [r.name for r in current] != [r.name for r in values]:
            for old in current:  # order changed: rebuild (no await in between, so atomic)
                self._ds.remove_rewrite(old.name)
        for value in values:
            self._ds.upsert_rewrite(value)

    # ------------------------------------------------------------------ pool status

    def health(self) -> PoolHealth:
        if self._pool_error is not None:
            return PoolHealth(valid=False, ready_endpoints=0, message=self._pool_error)
        return PoolHealth(valid=self._pool_spec is not None, ready_endpoints=len(self._ds.endpoints()))

    async def _status_loop(self, client: Any) -> None:
        """Write the default parent entry when it differs from what it should be; rate-limited."""
        api = k8s_client.CustomObjectsApi(client)
        backoff = 0.5
        await self.synced.wait()  # judge the pool only once pods are known too
        while True:
            await self._status_dirty.wait()
            self._status_dirty.clear()
            obj = self._pool_object()
            if obj is None:
                continue
            status = desired_status(obj, self.health(), controller_name=self._controller_name)
            if status is None:
                continue
            body = {**obj, "status": status}
            try:
                await api.replace_namespaced_custom_object_status(
                    INFERENCE_POOLS.group,
                    INFERENCE_POOLS.version,
                    self.namespace,
                    INFERENCE_POOLS.plural,
                    self.pool_name,
                    body,
                    _request_timeout=aiohttp.ClientTimeout(total=30),
                )
                self.status_writes += 1
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # 409: another replica or a Gateway wrote first; the watch brings the new object,
                # then we recompute. Anything else: retry later.
                code = getattr(exc, "status", None)
                if code != 409:
                    log.warning("kubernetes: writing pool status failed: %s", _short(exc))
                await asyncio.sleep(backoff * (0.5 + self._rng.random()))
                backoff = min(backoff * 2, 30.0)
                self._status_dirty.set()
                continue
            await asyncio.sleep(self._status_interval)


def standalone_pool_name(pod_name: str | None) -> str:
    """The name standalone mode serves the pods under (metrics, logs): the picker's Deployment,
    from its pod's name (``<deployment>-<replica set>-<pod>``), as the reference names it; the
    pod's own name when it has no such suffixes, ``standalone`` outside a pod."""
    if not pod_name:
        return "standalone"
    parts = pod_name.split("-")
    return "-".join(parts[:-2]) if len(parts) >= 3 else pod_name


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if len(text) == 1 else "; ".join(line.strip() for line in text[:4])
