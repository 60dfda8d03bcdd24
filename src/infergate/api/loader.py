"""Loading Kubernetes manifests from files and folders into a typed, validated :class:`ManifestSet`.

This module owns: reading YAML (a file, a folder of ``*.yaml``/``*.yml`` in name order, multi-document
streams, empty documents skipped), dispatching each object by ``kind``/``apiVersion`` to its model,
turning validation failures into one :class:`~infergate.errors.ConfigError` whose every line reads
``<file>: <Kind>/<name>: <field.path>: <reason>``, and the queries the gateway asks of the result
(the pool, its endpoints, objectives, rewrites, listener, route prefixes).

Kinds the gateway does not use (RBAC, ServiceAccount, Secret, Service, anything unknown, or a known
kind name from another API group such as Istio's ``Gateway``) are listed in ``ignored``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from infergate.api.gateway_api import chosen_listener, unapplied
from infergate.api.resources import (
    API_VERSIONS,
    DEPRECATED_API_VERSIONS,
    UNSUPPORTED_API_VERSIONS,
    EndpointListResource,
    GatewayResource,
    HealthCheckPolicyResource,
    HTTPRouteResource,
    InferenceModelRewriteResource,
    InferenceObjectiveResource,
    InferencePoolResource,
    PodResource,
    split_host_port,
)
from infergate.api.workloads import (
    ConfigMapResource,
    DeploymentResource,
    LoraSyncConfig,
    is_lora_document,
    parse_lora_config,
)
from infergate.errors import ConfigError
from infergate.types import EndpointMeta, ModelRewrite, Objective, PoolSpec, RewriteRule, RewriteTarget

__all__ = [
    "MODEL_SERVER_TYPE_ANNOTATION",
    "ManifestSet",
    "expand_lists",
    "format_validation_error",
    "group_rank",
    "load_manifests",
    "newest_group_wins",
]

log = logging.getLogger(__name__)

_TWO_GROUP_KINDS = frozenset({"InferenceObjective", "InferenceModelRewrite"})
_R = TypeVar("_R", InferenceObjectiveResource, InferenceModelRewriteResource)

MODEL_SERVER_TYPE_ANNOTATION = "infergate.dev/model-server-type"
ACTIVE_PORTS_ANNOTATION = "inference.networking.k8s.io/active-ports"
MODEL_SERVER_TYPES = ("vllm", "sglang", "trtllm")
POOL_GROUP = "inference.networking.k8s.io"

_MODELS: dict[str, type[BaseModel]] = {
    "InferencePool": InferencePoolResource,
    "InferenceObjective": InferenceObjectiveResource,
    "InferenceModelRewrite": InferenceModelRewriteResource,
    "Gateway": GatewayResource,
    "HTTPRoute": HTTPRouteResource,
    "Deployment": DeploymentResource,
    "ConfigMap": ConfigMapResource,
    "HealthCheckPolicy": HealthCheckPolicyResource,
    "Pod": PodResource,
    "EndpointList": EndpointListResource,
}


def _format_loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(object)"


def format_validation_error(exc: ValidationError, prefix: str, loc_prefix: Sequence[int | str] = ()) -> str:
    """One line per pydantic error: ``<prefix>: <field.path>: <reason>``."""
    lines = []
    for err in exc.errors(include_url=False):
        reason = str(err["msg"]).removeprefix("Value error, ")
        value = err.get("input")
        if err["type"] not in {"missing", "extra_forbidden"} and isinstance(value, str | int | float | bool):
            reason += f" (got {value!r})"
        lines.append(f"{prefix}: {_format_loc([*loc_prefix, *err['loc']])}: {reason}")
    return "\n".join(lines)


@dataclass
class ManifestSet:
    """Everything read from a set of manifests, typed; helpers answer the gateway's questions."""

    pools: list[InferencePoolResource] = field(default_factory=list)
    objectives: list[InferenceObjectiveResource] = field(default_factory=list)
    rewrites: list[InferenceModelRewriteResource] = field(default_factory=list)
    gateways: list[GatewayResource] = field(default_factory=list)
    routes: list[HTTPRouteResource] = field(default_factory=list)
    deployments: list[DeploymentResource] = field(default_factory=list)
    config_maps: list[ConfigMapResource] = field(default_factory=list)
    lora_configs: dict[str, LoraSyncConfig] = field(default_factory=dict)
    health_policies: list[HealthCheckPolicyResource] = field(default_factory=list)
    pods: list[PodResource] = field(default_factory=list)
    static_endpoints: list[EndpointListResource] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    # ------------------------------------------------------------------ pool and endpoints

    def pool_spec(self, name: str | None = None) -> PoolSpec:
        """The named pool (or the only one) as a :class:`PoolSpec`; ConfigError if absent/ambiguous."""
        pools = [p for p in self.pools if name is None or p.name == name]
        if not pools:
            known = ", ".join(p.name for p in self.pools) or "none"
            what = f"InferencePool {name!r}" if name else "InferencePool"
            raise ConfigError(f"the manifests define no {what} (pools found: {known})")
        if len(pools) > 1:
            names = ", ".join(f"{p.namespace}/{p.name}" for p in pools)
            raise ConfigError(f"several InferencePools match ({names}); choose one by name")
        pool = pools[0]
        server_type = pool.metadata.annotations.get(MODEL_SERVER_TYPE_ANNOTATION, "vllm")
        if server_type not in MODEL_SERVER_TYPES:
            raise ConfigError(
                f"InferencePool/{pool.name}: metadata.annotations.{MODEL_SERVER_TYPE_ANNOTATION}: "
                f"must be one of {', '.join(MODEL_SERVER_TYPES)} (got {server_type!r})"
            )
        return PoolSpec(
            name=pool.name,
            namespace=pool.namespace,
            selector=dict(pool.spec.selector.match_labels),
            target_ports=tuple(p.number for p in pool.spec.target_ports),
            failure_mode=pool.failure_mode,
            health_path=self.health_path(pool.name, pool.namespace),
            model_server_type=server_type,
            app_protocol=pool.spec.app_protocol,
        )

    def health_path(self, pool_name: str, namespace: str = "default") -> str:
        """``requestPath`` of the HealthCheckPolicy targeting the pool, else vLLM's ``/health``."""
        for policy in self.health_policies:
            ref = policy.spec.target_ref
            if ref.kind == "InferencePool" and ref.name == pool_name and policy.namespace == namespace:
                path = policy.request_path
                if path is not None:
                    return path
        return "/health"

    def endpoints_for(self, pool: PoolSpec) -> list[EndpointMeta]:
        """Pods (Running, with an IP, Ready) and static endpoints whose labels match the selector.

        A static endpoint without labels in an EndpointList whose ``poolName`` names the pool is a
        member too. A pod or address without an explicit port gives one endpoint per target port
        (named ``<name>-rank-<i>`` when there are several, as the reference does).
        """
        out: dict[str, EndpointMeta] = {}

        def add(
            name: str,
            host: str,
            ports: Sequence[int],
            namespace: str,
            labels: dict[str, str],
            hostname: str = "",
            node_address: str = "",
            pod: str = "",
        ) -> None:
            for i, port in enumerate(ports):
                meta = EndpointMeta(
                    name=name if len(ports) == 1 else f"{name}-rank-{i}",
                    address=host,
                    port=port,
                    namespace=namespace,
                    pool=pool.name,
                    labels=dict(labels),
                    hostname=hostname,
                    node_address=node_address,
                    pod=pod,
                )
                if meta.key in out:
                    log.warning("endpoint %s is listed twice; keeping %s", meta.key, out[meta.key].name)
                    continue
                out[meta.key] = meta

        for pod in self.pods:
            if (
                pod.namespace != pool.namespace
                or not pod.ready
                or not _matches(pool.selector, pod.metadata.labels)
            ):
                continue
            ports: list[int] = list(pool.target_ports)
            active = pod.metadata.annotations.get(ACTIVE_PORTS_ANNOTATION)
            if active:
                wanted = {int(p) for p in active.split(",") if p.strip().isdigit()}
                ports = [p for p in ports if p in wanted]
            hostname = pod.spec.get("hostname")
            host_name = hostname if isinstance(hostname, str) else ""
            add(
                pod.name,
                pod.status.pod_ip or "",
                ports,
                pod.namespace,
                pod.metadata.labels,
                host_name,
                pod.status.host_ip or "",
                pod.name,
            )

        for lst in self.static_endpoints:
            if lst.namespace != pool.namespace:
                continue
            named = lst.spec.pool_name == pool.name
            if lst.spec.pool_name is not None and not named:
                continue
            for i, ep in enumerate(lst.spec.endpoints):
                labels = dict(ep.labels)
                if named and not labels:
                    labels = dict(pool.selector)
                if not _matches(pool.selector, labels):
                    continue
                host, port = split_host_port(ep.address)
                add(
                    ep.name or f"{lst.name}-{i}",
                    host,
                    [port] if port else list(pool.target_ports),
                    lst.namespace,
                    labels,
                )
        return list(out.values())

    # ------------------------------------------------------------------ objectives and rewrites

    def objective_values(self, pool: str | None = None) -> list[Objective]:
        """Objectives as value objects (of one pool when ``pool`` is given); unset priority = 0."""
        return [
            Objective(name=o.name, priority=o.priority, pool=o.spec.pool_ref.name, namespace=o.namespace)
            for o in self.objectives
            if pool is None or o.spec.pool_ref.name == pool
        ]

    def rewrite_values(self, pool: str | None = None) -> list[ModelRewrite]:
        """Rewrites oldest first (``creationTimestamp``, then file order), rules in list order.

        Unset target weights (all-or-none) become 1, i.e. an even split.
        """

        def age(r: InferenceModelRewriteResource) -> tuple[bool, dt.datetime]:
            ts = r.metadata.creation_timestamp
            if ts is not None and ts.tzinfo is None:
                ts = ts.replace(tzinfo=dt.UTC)
            return (ts is None, ts or dt.datetime.min.replace(tzinfo=dt.UTC))

        out = []
        for r in sorted(self.rewrites, key=age):
            if pool is not None and r.spec.pool_ref.name != pool:
                continue
            rules = tuple(
                RewriteRule(
                    match_models=tuple(m.model.value for m in rule.matches if m.model is not None),
                    targets=tuple(
                        RewriteTarget(model=t.model_rewrite, weight=t.weight or 1) for t in rule.targets
                    ),
                )
                for rule in r.spec.rules
            )
            out.append(
                ModelRewrite(name=r.name, pool=r.spec.pool_ref.name, namespace=r.namespace, rules=rules)
            )
        return out

    # ------------------------------------------------------------------ data plane

    def listener(self) -> tuple[str, int]:
        """Host and port of the Gateway's first HTTP(S) listener; ``("0.0.0.0", 80)`` without a Gateway.

        A Gateway named by an HTTPRoute's ``parentRefs`` is preferred over others.
        """
        chosen = chosen_listener(self.gateways, self.routes)
        if chosen is None:
            return ("0.0.0.0", 80)
        gw, index = chosen
        return ("0.0.0.0", gw.spec.listeners[index].port)

    def route_prefixes(self, pool_name: str) -> list[str]:
        """Path prefixes HTTPRoutes send to the pool, longest first; ``["/"]`` when no route names it.

        A rule without matches matches every path (``/``). ``Exact`` matches are served as prefixes
        and ``RegularExpression`` matches are skipped (both reported in ``warnings`` at load time).
        """
        prefixes: set[str] = set()
        for route in self.routes:
            for rule in route.spec.rules:
                if not any(_is_pool_ref(b.kind, b.group, b.name, pool_name) for b in rule.backend_refs):
                    continue
                if not rule.matches:
                    prefixes.add("/")
                for m in rule.matches:
                    path = m.path
                    if path is None:
                        prefixes.add("/")
                    elif path.type != "RegularExpression":
                        prefixes.add(path.value or "/")
        if not prefixes:
            return ["/"]
        return sorted(prefixes, key=lambda p: (-len(p), p))


def _matches(selector: Any, labels: dict[str, str]) -> bool:
    """Kubernetes ``matchLabels`` semantics: every selector pair present in the labels."""
    return all(labels.get(k) == v for k, v in dict(selector).items())


def _is_pool_ref(kind: str, group: str, name: str, pool_name: str) -> bool:
    return kind == "InferencePool" and group in {POOL_GROUP, ""} and name == pool_name


# ---------------------------------------------------------------------------------- loading


def _expand(paths: Sequence[Path]) -> Iterator[Path]:
    """Files to read, in order; a file named twice (directly and through its folder) is read once."""
    seen: set[Path] = set()
    for path in _expand_all(paths):
        real = path.resolve()
        if real not in seen:
            seen.add(real)
            yield path


def _expand_all(paths: Sequence[Path]) -> Iterator[Path]:
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in {".yaml", ".yml"} and p.is_file())
            if not files:
                raise ConfigError(f"{path}: no *.yaml or *.yml files in this directory")
            yield from files
        elif path.is_file():
            yield path
        else:
            raise ConfigError(f"{path}: no such file or directory")


def expand_lists(doc: Any) -> list[Any]:
    """The objects of one YAML document: a ``kind: List`` (what ``kubectl get -o yaml`` writes) or a
    typed ``<Kind>List`` (what the API returns) gives its ``items``, any other document itself.

    Items of typed lists may omit ``apiVersion``/``kind``; they inherit the list's. Our own
    ``EndpointList`` is an object with a ``spec``, not a list.
    """
    if not isinstance(doc, dict):
        return [doc]
    kind = doc.get("kind")
    if not isinstance(kind, str) or not kind.endswith("List") or kind == "EndpointList":
        return [doc]
    items = doc.get("items")
    if items is None:
        items = []
    if not isinstance(items, list):
        return [doc]  # not a list after all; the loader reports it as what it claims to be
    out: list[Any] = []
    item_kind = kind.removesuffix("List")
    for item in items:
        if isinstance(item, dict) and item_kind and doc.get("apiVersion"):
            item = {"apiVersion": doc["apiVersion"], "kind": item_kind, **item}
        out.extend(expand_lists(item))
    return out


def group_rank(kind: str, api_version: str) -> int:
    """Precedence of an apiVersion among those accepted for ``kind``: the newest group ranks highest
    (``llm-d.ai`` over ``inference.networking.x-k8s.io`` over ``inference.networking.k8s.io``)."""
    supported = API_VERSIONS.get(kind, ())
    return len(supported) - supported.index(api_version) if api_version in supported else 0


def newest_group_wins(objects: Sequence[_R]) -> list[_R]:
    """One object per (namespace, name): the one under the newest API group, as the reference picker
    does when an InferenceObjective or InferenceModelRewrite exists under both groups."""
    best: dict[tuple[str, str], _R] = {}
    for obj in objects:
        key = (obj.namespace, obj.name)
        old = best.get(key)
        if old is None or group_rank(obj.kind, obj.api_version) > group_rank(old.kind, old.api_version):
            best[key] = obj
    return [o for o in objects if best[(o.namespace, o.name)] is o]


def _documents(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    try:
        for index, doc in enumerate(yaml.safe_load_all(text), start=1):
            for obj in expand_lists(doc):
                if obj is not None:
                    yield index, obj
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: {where}invalid YAML: {problem}") from exc


def load_manifests(paths: Sequence[Path]) -> ManifestSet:
    """Read, validate and collect every manifest in ``paths`` (files and directories).

    Raises :class:`ConfigError` listing every invalid object, one line each, naming file, object and
    field. Nothing is returned unless everything known is valid.
    """
    out = ManifestSet()
    errors: list[str] = []
    seen: dict[tuple[str, str, str], tuple[str, str]] = {}
    for path in _expand(paths):
        out.files.append(path)
        for index, doc in _documents(path):
            try:
                _load_object(out, path, index, doc, seen)
            except _ObjectError as exc:
                errors.append(str(exc))
    if errors:
        raise ConfigError("\n".join(errors))
    _cross_check(out)
    return out


class _ObjectError(Exception):
    """One invalid object; collected so that all problems are reported at once."""


def _load_object(
    out: ManifestSet, path: Path, index: int, doc: Any, seen: dict[tuple[str, str, str], tuple[str, str]]
) -> None:
    if not isinstance(doc, dict):
        raise _ObjectError(f"{path}: document {index}: expected a mapping with apiVersion and kind")
    kind = doc.get("kind")
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    label = f"{kind or '(no kind)'}/{name or f'(document {index})'}"
    if not isinstance(kind, str) or not kind:
        raise _ObjectError(f"{path}: {label}: kind: Field required")
    api_version = doc.get("apiVersion")
    hint = UNSUPPORTED_API_VERSIONS.get((kind, str(api_version)))
    if hint is not None:
        raise _ObjectError(f"{path}: {label}: apiVersion: {api_version} {kind} is not supported: {hint}")
    model = _MODELS.get(kind)
    if model is None:
        out.ignored.append(f"{path}: {kind}/{name or f'(document {index})'}")
        return
    supported = API_VERSIONS[kind]
    if api_version not in supported:
        group = str(api_version).rpartition("/")[0]
        if api_version is not None and group not in {v.rpartition("/")[0] for v in supported}:
            out.ignored.append(f"{path}: {kind}/{name or f'(document {index})'}")  # another API's kind
            return
        raise _ObjectError(
            f"{path}: {label}: apiVersion: {api_version!r} is not supported for {kind} "
            f"(use {' or '.join(supported)})"
        )
    try:
        obj = model.model_validate(doc)
    except ValidationError as exc:
        raise _ObjectError(format_validation_error(exc, f"{path}: {label}")) from exc

    namespace = meta.get("namespace", "default") if isinstance(meta, dict) else "default"
    ident = (kind, str(namespace), str(name))
    if ident in seen:
        where, other_version = seen[ident]
        if other_version == api_version or kind not in _TWO_GROUP_KINDS:
            raise _ObjectError(f"{path}: {label}: metadata.name: duplicate {kind} (also defined in {where})")
        # The same object under two API groups (migrating to llm-d.ai): the newest group wins.
        winner, loser = (api_version, other_version)
        if group_rank(kind, other_version) > group_rank(kind, str(api_version)):
            winner, loser = loser, winner
        out.warnings.append(
            f"{path}: {label}: defined under both {loser} and {winner} (also in {where}); using {winner}"
        )
        if winner == other_version:
            return
        _forget(out, kind, str(namespace), str(name))
    seen[ident] = (str(path), str(api_version))

    replacement = DEPRECATED_API_VERSIONS.get((kind, str(api_version)))
    if replacement is not None:
        out.warnings.append(f"{path}: {label}: apiVersion {api_version} is deprecated; use {replacement}")
    _store(out, path, label, obj)


def _forget(out: ManifestSet, kind: str, namespace: str, name: str) -> None:
    """Drop an objective or rewrite already loaded (superseded by the same object in a newer group)."""
    if kind == "InferenceObjective":
        out.objectives = [o for o in out.objectives if (o.namespace, o.name) != (namespace, name)]
    elif kind == "InferenceModelRewrite":
        out.rewrites = [r for r in out.rewrites if (r.namespace, r.name) != (namespace, name)]


def _store(out: ManifestSet, path: Path, label: str, obj: BaseModel) -> None:
    if isinstance(obj, InferencePoolResource):
        out.pools.append(obj)
    elif isinstance(obj, InferenceObjectiveResource):
        out.objectives.append(obj)
    elif isinstance(obj, InferenceModelRewriteResource):
        out.rewrites.append(obj)
    elif isinstance(obj, GatewayResource):
        out.gateways.append(obj)
    elif isinstance(obj, HTTPRouteResource):
        out.routes.append(obj)
    elif isinstance(obj, DeploymentResource):
        out.deployments.append(obj)
    elif isinstance(obj, HealthCheckPolicyResource):
        out.health_policies.append(obj)
    elif isinstance(obj, PodResource):
        out.pods.append(obj)
    elif isinstance(obj, EndpointListResource):
        out.static_endpoints.append(obj)
    elif isinstance(obj, ConfigMapResource):
        out.config_maps.append(obj)
        for key, text in obj.data.items():
            if not is_lora_document(text):
                continue
            try:
                out.lora_configs[obj.name] = parse_lora_config(text, key=key)
            except ValidationError as exc:
                raise _ObjectError(format_validation_error(exc, f"{path}: {label}", ("data", key))) from exc
            except yaml.YAMLError as exc:
                reason = " ".join(str(exc).split())
                raise _ObjectError(f"{path}: {label}: data.{key}: invalid YAML: {reason}") from exc
            break


def _cross_check(out: ManifestSet) -> None:
    """Dangling references are warnings, not errors: in a cluster the target may exist elsewhere."""
    pools = {(p.namespace, p.name) for p in out.pools}
    if not pools:
        return
    for o in out.objectives:
        if (o.namespace, o.spec.pool_ref.name) not in pools:
            out.warnings.append(
                f"InferenceObjective/{o.name}: spec.poolRef.name: no InferencePool "
                f"{o.spec.pool_ref.name!r} in the manifests"
            )
    for r in out.rewrites:
        if (r.namespace, r.spec.pool_ref.name) not in pools:
            out.warnings.append(
                f"InferenceModelRewrite/{r.name}: spec.poolRef.name: no InferencePool "
                f"{r.spec.pool_ref.name!r} in the manifests"
            )
    for route in out.routes:
        for i, rule in enumerate(route.spec.rules):
            for j, b in enumerate(rule.backend_refs):
                if b.kind == "InferencePool" and (b.namespace or route.namespace, b.name) not in pools:
                    out.warnings.append(
                        f"HTTPRoute/{route.name}: spec.rules[{i}].backendRefs[{j}]: "
                        f"no InferencePool {b.name!r} in the manifests"
                    )
            for j, m in enumerate(rule.matches):
                if m.path is not None and m.path.type != "PathPrefix":
                    how = "served as a prefix" if m.path.type == "Exact" else "not supported, skipped"
                    out.warnings.append(
                        f"HTTPRoute/{route.name}: spec.rules[{i}].matches[{j}].path.type: "
                        f"{m.path.type} is {how}"
                    )
    out.warnings += unapplied(out.gateways, out.routes)
    for d in out.deployments:
        cm = d.lora_configmap()
        if cm is not None and cm not in out.lora_configs:
            out.warnings.append(
                f"Deployment/{d.name}: LoRA syncer mounts ConfigMap {cm!r}, "
                "which is missing or has no vLLMLoRAConfig"
            )
