"""Typed, validated models of the Kubernetes resources infergate reads.

This module owns the *shape* of each resource kind (pydantic v2, camelCase aliases as on the wire)
and the per-kind invariants Kubernetes itself would enforce (CRD schema rules such as "targetPorts
has 1-8 unique ports"). It does not know about files or multi-document YAML (see ``loader``) nor
about Deployments and ConfigMaps (see ``workloads``).

Extra fields: the ``spec`` of the Inference Extension CRDs (and of our own EndpointList) is closed,
because a typo there (``targetPort:``) would otherwise silently change routing; everything else
(metadata, status, Gateway API objects, core kinds) accepts unknown fields, like a server that
prunes what it does not know.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

__all__ = [
    "API_VERSIONS",
    "DEPRECATED_API_VERSIONS",
    "UNSUPPORTED_API_VERSIONS",
    "Condition",
    "EndpointListResource",
    "EndpointPickerRef",
    "GatewayResource",
    "HTTPRouteResource",
    "HealthCheckPolicyResource",
    "InferenceModelRewriteResource",
    "InferenceObjectiveResource",
    "InferencePoolResource",
    "ObjectMeta",
    "PodResource",
    "PoolObjectReference",
    "StaticEndpoint",
    "split_host_port",
]


class _Open(BaseModel):
    """Base for wire objects that tolerate unknown fields (Kubernetes prunes, we ignore)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True)


class _Closed(BaseModel):
    """Base for wire objects whose schema we know completely: unknown fields are errors."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


PortNumber = Annotated[int, Field(ge=1, le=65535)]
NonEmpty = Annotated[str, Field(min_length=1)]


class ObjectMeta(_Open):
    """``metadata``: only name, namespace, labels, annotations and creation time matter here."""

    name: NonEmpty
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    creation_timestamp: dt.datetime | None = None


class _Object(_Open):
    """Common envelope: ``apiVersion``, ``kind``, ``metadata``."""

    api_version: str
    kind: str
    metadata: ObjectMeta

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace


# --------------------------------------------------------------------------- InferencePool (GA v1)


class Port(_Closed):
    number: PortNumber


class LabelSelector(_Closed):
    """Only ``matchLabels`` is supported, exactly as in the InferencePool CRD (1-64 pairs)."""

    match_labels: dict[str, str] = Field(min_length=1, max_length=64)


class EndpointPickerRef(_Closed):
    """Where the pool's endpoint picker listens and what the proxy does when it is down."""

    group: str = ""
    kind: str = "Service"
    name: NonEmpty
    port: Port | None = None
    failure_mode: Literal["FailOpen", "FailClose"] = "FailClose"

    @model_validator(mode="after")
    def _port_for_services(self) -> EndpointPickerRef:
        if self.kind == "Service" and self.port is None:
            raise ValueError("port is required when kind is 'Service' or unspecified (defaults to 'Service')")
        return self


class InferencePoolSpec(_Closed):
    selector: LabelSelector
    target_ports: list[Port] = Field(min_length=1, max_length=8)
    app_protocol: Literal["http", "kubernetes.io/h2c"] = "http"
    endpoint_picker_ref: EndpointPickerRef | None = None

    @field_validator("target_ports")
    @classmethod
    def _unique_ports(cls, ports: list[Port]) -> list[Port]:
        numbers = [p.number for p in ports]
        if len(set(numbers)) != len(numbers):
            raise ValueError("port number must be unique")
        return ports


class InferencePoolResource(_Object):
    """``inference.networking.k8s.io/v1`` InferencePool: which pods serve, on which ports."""

    spec: InferencePoolSpec

    @property
    def failure_mode(self) -> str:
        ref = self.spec.endpoint_picker_ref
        return ref.failure_mode if ref is not None else "FailClose"


# ------------------------------------------------------------------ InferenceObjective / Rewrite


class PoolObjectReference(_Closed):
    group: str = "inference.networking.k8s.io"
    kind: str = "InferencePool"
    name: NonEmpty


class InferenceObjectiveSpec(_Closed):
    priority: int | None = None
    pool_ref: PoolObjectReference


class InferenceObjectiveResource(_Object):
    """InferenceObjective: a named priority (header ``x-gateway-inference-objective``); unset = 0."""

    spec: InferenceObjectiveSpec

    @property
    def priority(self) -> int:
        return self.spec.priority if self.spec.priority is not None else 0


class ModelMatch(_Closed):
    type: Literal["Exact"] = "Exact"
    value: NonEmpty


class Match(_Closed):
    model: ModelMatch | None = None


class TargetModel(_Closed):
    model_rewrite: NonEmpty
    weight: Annotated[int, Field(ge=1, le=1_000_000)] | None = None


class InferenceModelRewriteRule(_Closed):
    matches: list[Match] = Field(default_factory=list)
    targets: list[TargetModel] = Field(min_length=1)

    @field_validator("targets")
    @classmethod
    def _weights_all_or_none(cls, targets: list[TargetModel]) -> list[TargetModel]:
        given = [t.weight is not None for t in targets]
        if any(given) and not all(given):
            raise ValueError("weights should be set for all targets, or for none of them")
        return targets


class InferenceModelRewriteSpec(_Closed):
    pool_ref: PoolObjectReference
    rules: list[InferenceModelRewriteRule] = Field(min_length=1)


class InferenceModelRewriteResource(_Object):
    """InferenceModelRewrite (v1alpha2): weighted rewrite of the request's model name."""

    spec: InferenceModelRewriteSpec


# ----------------------------------------------------------------------- Gateway API (v1)


class Listener(_Open):
    name: NonEmpty
    port: PortNumber
    protocol: str = "HTTP"
    hostname: str | None = None


class GatewaySpec(_Open):
    gateway_class_name: str = ""
    listeners: list[Listener] = Field(min_length=1)


class GatewayResource(_Object):
    """Gateway: only the listeners matter (the built-in proxy binds the first HTTP(S) one)."""

    spec: GatewaySpec


class PathMatch(_Open):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: str = "/"


class RouteMatch(_Open):
    path: PathMatch | None = None


class BackendRef(_Open):
    name: NonEmpty
    group: str = ""
    kind: str = "Service"
    namespace: str | None = None
    port: PortNumber | None = None
    weight: int = 1


class ParentRef(_Open):
    name: NonEmpty
    namespace: str | None = None
    section_name: str | None = None


class RouteRule(_Open):
    matches: list[RouteMatch] = Field(default_factory=list)
    backend_refs: list[BackendRef] = Field(default_factory=list)


class HTTPRouteSpec(_Open):
    parent_refs: list[ParentRef] = Field(default_factory=list)
    hostnames: list[str] = Field(default_factory=list)
    rules: list[RouteRule] = Field(default_factory=list)


class HTTPRouteResource(_Object):
    """HTTPRoute: which path prefixes lead to which InferencePool."""

    spec: HTTPRouteSpec


# ----------------------------------------------------------------------- HealthCheckPolicy


class PolicyTargetRef(_Open):
    group: str = ""
    kind: str = ""
    name: NonEmpty


class HttpHealthCheck(_Open):
    request_path: str = "/"
    port: PortNumber | None = None

    @field_validator("request_path")
    @classmethod
    def _absolute(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError("must start with '/'")
        return path


class HealthCheckConfig(_Open):
    type: str = "HTTP"
    http_health_check: HttpHealthCheck | None = None


class HealthCheckDefault(_Open):
    config: HealthCheckConfig | None = None


class HealthCheckPolicySpec(_Open):
    target_ref: PolicyTargetRef
    default: HealthCheckDefault | None = None


class HealthCheckPolicyResource(_Object):
    """GKE HealthCheckPolicy: read for the health path of the pool it targets."""

    spec: HealthCheckPolicySpec

    @property
    def request_path(self) -> str | None:
        d = self.spec.default
        if d is None or d.config is None or d.config.http_health_check is None:
            return None
        return d.config.http_health_check.request_path


# --------------------------------------------------------------------------------- Pod (v1)


class Condition(_Open):
    type: str
    status: str


class PodStatus(_Open):
    phase: str = "Pending"
    pod_ip: str | None = Field(default=None, alias="podIP")
    host_ip: str | None = Field(default=None, alias="hostIP")
    """The node's address (``dcgm-data-source``'s ``useNodeAddress`` scrapes an exporter there)."""
    conditions: list[Condition] = Field(default_factory=list)


class PodResource(_Object):
    """Pod: a running pod with an IP whose labels match a pool's selector is an endpoint."""

    spec: dict[str, Any] = Field(default_factory=dict)
    status: PodStatus = PodStatus()

    @property
    def ready(self) -> bool:
        """Running with an IP, and not marked un-Ready (hand-written pods often omit conditions)."""
        if self.status.phase != "Running" or not self.status.pod_ip:
            return False
        if (self.metadata.model_extra or {}).get("deletionTimestamp"):
            return False  # terminating: leaves rotation before it stops
        return all(c.status == "True" for c in self.status.conditions if c.type == "Ready")


# ------------------------------------------------------------------ EndpointList (infergate)


def split_host_port(address: str) -> tuple[str, int | None]:
    """Split ``host:port`` / ``[v6]:port`` / bare ``host``; raise ``ValueError`` on a bad port."""
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep:
            raise ValueError(f"unterminated IPv6 address {address!r}")
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"expected ':port' after ']' in {address!r}")
        port_text = rest[1:]
    elif address.count(":") == 1:
        host, port_text = address.split(":")
    else:
        return address, None  # bare host name, IPv4 address or unbracketed IPv6 address
    if not host:
        raise ValueError(f"missing host in {address!r}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"invalid port {port_text!r} in {address!r}")
    return host, int(port_text)


class StaticEndpoint(_Closed):
    """One model server given by address; without a port, one endpoint per pool target port."""

    name: str | None = None
    address: NonEmpty
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("address")
    @classmethod
    def _valid_address(cls, address: str) -> str:
        split_host_port(address)
        return address


class EndpointListSpec(_Closed):
    pool_name: str | None = None
    endpoints: list[StaticEndpoint] = Field(min_length=1)


class EndpointListResource(_Object):
    """``infergate.dev/v1alpha1`` EndpointList: endpoints of a pool outside Kubernetes."""

    spec: EndpointListSpec


# apiVersions accepted per kind, and the ones accepted with a deprecation warning.
API_VERSIONS: dict[str, tuple[str, ...]] = {
    "InferencePool": ("inference.networking.k8s.io/v1",),
    "InferenceObjective": (
        "llm-d.ai/v1alpha2",
        "inference.networking.x-k8s.io/v1alpha2",
        "inference.networking.k8s.io/v1alpha1",
    ),
    "InferenceModelRewrite": ("llm-d.ai/v1alpha2", "inference.networking.x-k8s.io/v1alpha2"),
    "Gateway": ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"),
    "HTTPRoute": ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"),
    "Deployment": ("apps/v1",),
    "ConfigMap": ("v1",),
    "HealthCheckPolicy": ("networking.gke.io/v1",),
    "Pod": ("v1",),
    "EndpointList": ("infergate.dev/v1alpha1",),
}
# Older spellings that are refused with a hint rather than ignored (same project, other schema).
UNSUPPORTED_API_VERSIONS: dict[tuple[str, str], str] = {
    ("InferencePool", "inference.networking.x-k8s.io/v1alpha2"): "the v1alpha2 pool (flat selector, "
    "targetPortNumber, extensionRef) was replaced by inference.networking.k8s.io/v1 (selector.matchLabels, "
    "targetPorts, endpointPickerRef)",
    ("InferenceModel", "inference.networking.x-k8s.io/v1alpha2"): "InferenceModel was replaced by "
    "InferenceObjective (priority) and InferenceModelRewrite (model-name rewrites)",
}
DEPRECATED_API_VERSIONS: dict[tuple[str, str], str] = {
    ("InferenceObjective", "inference.networking.k8s.io/v1alpha1"): "inference.networking.x-k8s.io/v1alpha2",
}
