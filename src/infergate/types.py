"""The shared vocabulary of the gateway: immutable value types that every layer passes around.

Everything here is a frozen dataclass so that a snapshot handed to the scheduler can never be
changed under its feet; the datastore swaps whole objects instead of mutating them. The ones
built for every request get a cheaper ``__init__`` (:func:`cheap_init`); values that only the
gateway's own modules pass each other are :func:`typed_frozen`.
This module imports nothing from infergate.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol, TypeVar, dataclass_transform

__all__ = [
    "CORE_METRICS_PRODUCER",
    "DECODE_ROLES",
    "H2C",
    "NO_ATTRIBUTES",
    "ROLE_LABEL",
    "ApiKind",
    "AttributeKey",
    "Attributes",
    "Clock",
    "ConcurrencyMode",
    "Endpoint",
    "EndpointMeta",
    "EndpointMetrics",
    "InferenceRequest",
    "ModelRewrite",
    "MonotonicClock",
    "Objective",
    "PoolSpec",
    "RewriteRule",
    "RewriteTarget",
    "SchedulingResult",
    "ScoredEndpoint",
    "concurrency_load",
]


class Clock(Protocol):
    """A source of monotonic time in seconds; injected so tests and the digital twin control time."""

    def now(self) -> float: ...


class MonotonicClock:
    """The wall clock used in production."""

    def now(self) -> float:
        return time.monotonic()


class ApiKind(StrEnum):
    """Which OpenAI API a request used; decides how its prompt and usage are read."""

    COMPLETIONS = "completions"
    CHAT = "chat"
    EMBEDDINGS = "embeddings"
    MESSAGES = "messages"
    """Anthropic Messages API (``/v1/messages``, ``/v1/messages/count_tokens``)."""
    OTHER = "other"
    PASSTHROUGH = "passthrough"
    """A path the ``passthrough-parser`` was configured for: the body is forwarded unread."""


_T = TypeVar("_T")


def cheap_init(cls: type[_T]) -> type[_T]:
    """Give a frozen, slotted dataclass an ``__init__`` that stores each field through its slot.

    The ``__init__`` that ``dataclass(frozen=True)`` writes stores every field with
    ``object.__setattr__``, which looks the attribute up on the type again each time: a frozen
    class with 14 fields takes about eight times as long to build as a plain one. The gateway
    builds several of these per request, so the ones on the request path get this ``__init__``
    instead: the same parameters, defaults and default factories, each value handed straight to
    its slot's descriptor. The class stays frozen (assignments after ``__init__`` still raise).
    Only for classes without ``__post_init__`` and ``init=False`` fields; checked here.
    """
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a frozen, slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has __post_init__")
    namespace: dict[str, Any] = {"_FACTORY": object()}
    args: list[str] = []
    body: list[str] = []
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    for f in fields:
        if not f.init:
            raise TypeError(f"{cls.__name__}.{f.name} is init=False")
        namespace[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        if f.default is not dataclasses.MISSING:
            namespace[f"_default_{f.name}"] = f.default
            args.append(f"{f.name}=_default_{f.name}")
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_factory_{f.name}"] = f.default_factory
            args.append(f"{f.name}=_FACTORY")
            body.append(f"    if {f.name} is _FACTORY: {f.name} = _factory_{f.name}()")
        else:
            args.append(f.name)
        body.append(f"    _set_{f.name}(self, {f.name})")
    kw_only = [f.kw_only for f in fields]
    if any(kw_only) and not all(kw_only):
        raise TypeError(f"{cls.__name__} mixes keyword-only and positional fields")
    signature = ", ".join(["self", "*", *args] if all(kw_only) and args else ["self", *args])
    exec(f"def __init__({signature}) -> None:\n" + "\n".join(body or ["    pass"]), namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    setattr(cls, "__init__", init)  # noqa: B010 - mypy refuses assigning a method
    return cls


@dataclass_transform(frozen_default=True)
def typed_frozen(cls: type[_T]) -> type[_T]:
    """A slotted dataclass that the type checker treats as frozen and that is plain at run time.

    For the small values the gateway's own modules hand each other within one request (a parsed
    body, an admission outcome, a latency prediction): mypy (strict, run on every change) rejects
    any assignment to their fields, as it would for ``frozen=True``, while building one costs what
    a plain dataclass costs, about an eighth of a frozen one with ``object.__setattr__`` per field
    (4 % of the built-in proxy's instructions per request for these alone, measured with
    ``bench/bench_proxy_hotpath.py --instructions``). Unlike a frozen dataclass it is not hashable.
    Types that plugins receive stay frozen at run time (:func:`cheap_init`): a plugin is not
    type-checked with the gateway.
    """
    return dataclass(slots=True)(cls)


#: The endpoint label naming a server's part in prefill/decode disaggregation (llm-d), and the
#: values of a server that decodes requests whose prefill may run on another server.
ROLE_LABEL = "llm-d.ai/role"
DECODE_ROLES = frozenset({"decode", "prefill-decode", "both", "encode-prefill-decode"})


AttributeKey = tuple[str, str]
"""An endpoint attribute's ``(name, producer)``: llm-d-router keys an attribute by both, so two
producers may publish the same name (``GPUUtilization`` of ``dcgm-extractor``)."""

CORE_METRICS_PRODUCER = "core-metrics-extractor"
"""The producer of the attributes read from the model server's own ``/metrics`` page (the custom
metrics of ``core-metrics-extractor``'s ``engineConfigs``)."""


class Attributes(Mapping[AttributeKey, float]):
    """An endpoint's named scalar values, each with its producer: an immutable mapping.

    Not a ``MappingProxyType``: snapshots cross to gateway workers pickled, and a proxy does not
    pickle. ``get`` is the dict's own, so a plugin's lookup is one call. Most pools have no
    attributes at all; they share :data:`NO_ATTRIBUTES`, and nothing is built per scrape.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[AttributeKey, float] | None = None) -> None:
        self._values: dict[AttributeKey, float] = dict(values) if values else {}

    def __getitem__(self, key: AttributeKey) -> float:
        return self._values[key]

    def __iter__(self) -> Iterator[AttributeKey]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: AttributeKey, default: Any = None) -> Any:
        return self._values.get(key, default)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Attributes):
            return self._values == other._values
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._values.items()))

    def __repr__(self) -> str:
        return f"Attributes({self._values!r})"

    def __reduce__(
        self,
    ) -> tuple[Callable[[dict[AttributeKey, float]], Attributes], tuple[dict[AttributeKey, float]]]:
        return (_attributes, (self._values,))

    def of(self, producer: str) -> dict[str, float]:
        """The values ``producer`` published, by name."""
        return {name: v for (name, p), v in self._values.items() if p == producer}

    def with_producer(self, producer: str, values: Mapping[str, float]) -> Attributes:
        """These attributes with ``producer``'s replaced by ``values`` (empty: removed); the
        others kept. Returns ``self`` when nothing changes."""
        kept = {k: v for k, v in self._values.items() if k[1] != producer}
        kept.update(((name, producer), v) for name, v in values.items())
        if kept == self._values:
            return self
        return Attributes(kept) if kept else NO_ATTRIBUTES


NO_ATTRIBUTES = Attributes()
"""The attributes of an endpoint nothing publishes any for (shared)."""


def _attributes(values: dict[AttributeKey, float]) -> Attributes:
    """Unpickle: an empty mapping is the shared one again (a worker's copy keeps the fast path)."""
    return Attributes(values) if values else NO_ATTRIBUTES


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointMetrics:
    """What the scraper last read from one model server, already mapped from its engine's dialect.

    ``updated_at`` is the clock time of the scrape (0.0 means never scraped). Freshness is judged by
    whoever reads the snapshot, against its own clock.
    """

    waiting_queue_size: int = 0
    running_requests: int = 0
    kv_cache_usage: float = 0.0
    running_adapters: frozenset[str] = frozenset()
    waiting_adapters: frozenset[str] = frozenset()
    max_active_adapters: int = 0
    block_size: int | None = None
    num_gpu_blocks: int | None = None
    finished_requests: float | None = None
    """Requests the server has finished since it started (vLLM's ``request_success_total``, all
    finish reasons); None when the server does not export such a counter."""
    updated_at: float = 0.0
    attributes: Attributes = NO_ATTRIBUTES
    """Named scalar values with their producers (``GPUUtilization`` of ``dcgm-extractor``, the
    custom metrics of ``core-metrics-extractor``), read by ``endpoint-attribute-filter`` and
    ``endpoint-attribute-scorer``. Those of the core extractor come with each scrape; the others
    are kept across scrapes by the datastore (:meth:`Datastore.update_metrics`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointMeta:
    """Identity of one model-server endpoint (one pod and target port)."""

    name: str
    address: str
    port: int
    namespace: str = "default"
    pool: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    hostname: str = ""
    """The pod's ``spec.hostname`` (``topology-extractor``'s fallback for the host), if set."""
    pod: str = ""
    """The name of the pod the endpoint is a port of (``name`` is ``<pod>-rank-<i>`` where the pod
    serves on several target ports), which exporters label their samples with; empty where there
    is no pod (static endpoints)."""
    node_address: str = ""
    """The address of the pod's node (``status.hostIP``), where a DaemonSet exporter on that node
    answers (``dcgm-data-source``'s ``useNodeAddress``); empty when the source does not know it
    (manifest files, static endpoints)."""
    key: str = field(init=False, repr=False, compare=False)
    """``address:port``: the value Envoy receives in ``x-gateway-destination-endpoint``. Computed
    once, because the scheduler reads it for every candidate of every request."""

    def __post_init__(self) -> None:
        if ":" in self.address and not self.address.startswith("["):
            key = f"[{self.address}]:{self.port}"
        else:
            key = f"{self.address}:{self.port}"
        object.__setattr__(self, "key", key)


@cheap_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """A whole, immutable view of one endpoint as the scheduler sees it for one request.

    ``in_flight`` is the number of requests the gateway itself has sent there and not yet seen
    finish, so scheduling reacts between scrapes; ``in_flight_tokens`` their estimated prompt
    tokens still to prefill (released at the first streamed chunk, else at the end), what the
    reference's ``inflight-load-producer`` counts for ``token-load-scorer``; ``in_flight_started``
    those of them seen to start (a streamed token came back), which flow control reads between
    scrapes to see a server's queue drain as its requests start rather than only as they finish.
    """

    meta: EndpointMeta
    metrics: EndpointMetrics = EndpointMetrics()
    healthy: bool = True
    in_flight: int = 0
    in_flight_tokens: int = 0
    in_flight_started: int = 0

    @property
    def key(self) -> str:
        return self.meta.key

    def with_load(
        self, in_flight: int, in_flight_tokens: int, in_flight_started: int | None = None
    ) -> Endpoint:
        """This endpoint with other in-flight counts (``in_flight_started`` as before when not given).
        The gateway calls this two or three times per request (acquire, a streamed answer's
        start, release): an explicit constructor costs a fifth of
        ``dataclasses.replace``, which introspects the fields on every call (a test holds it to
        every field)."""
        return Endpoint(
            meta=self.meta,
            metrics=self.metrics,
            healthy=self.healthy,
            in_flight=in_flight,
            in_flight_tokens=in_flight_tokens,
            in_flight_started=self.in_flight_started if in_flight_started is None else in_flight_started,
        )


@cheap_init
@dataclass(frozen=True, slots=True, kw_only=True)
class InferenceRequest:
    """What scheduling and flow control know about one request, independent of the data plane.

    ``model`` is what the client asked for, ``target_model`` what the model server will be asked
    for after rewrites (a base model or a LoRA adapter name). ``prompt`` is the text used for
    prefix-cache affinity: the completion prompt, or the chat messages flattened in order.
    """

    request_id: str
    model: str
    target_model: str
    api: ApiKind = ApiKind.COMPLETIONS
    objective: str | None = None
    priority: int = 0
    fairness_id: str = "default-flow"
    prompt: str = ""
    stream: bool = False
    max_tokens: int | None = None
    body_size: int = 0
    arrived_at: float = 0.0
    ttft_slo: float | None = None
    """The request's own TTFT bound, seconds (``x-llm-d-slo-ttft-ms``); None: the pool's."""
    tpot_slo: float | None = None
    """The request's own TPOT bound, seconds (``x-llm-d-slo-tpot-ms``); None: the pool's."""
    headers: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    """Request headers (lower-case names, credentials removed) for header-driven plugins."""
    body: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)
    """The decoded JSON body, for plugins that need the request as the model server reads it
    (the precise prefix scorer applies the chat template to ``messages``); None when not parsed."""
    prompt_token_ids: tuple[int, ...] | None = field(default=None, compare=False, hash=False)
    """The prompt's token ids as the model server's renderer produced them (``token-producer``);
    None when no producer ran or it failed (the precise prefix scorer then tokenizes itself)."""


@dataclass(frozen=True, slots=True)
class ScoredEndpoint:
    """An endpoint with its weighted total score from one scheduling profile."""

    endpoint: Endpoint
    score: float


@cheap_init
@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulingResult:
    """The outcome of one scheduling cycle.

    ``targets`` is ordered: the first is the primary destination, the rest are fallbacks the data
    plane may try if the primary fails before the first response byte. ``scores`` holds each
    candidate's weighted total, ``plugin_scores`` the raw (clamped, unweighted) score per scorer,
    kept for the live view and debugging.
    """

    profile: str
    targets: tuple[Endpoint, ...]
    scores: Mapping[str, float] = field(default_factory=dict)
    plugin_scores: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    request_headers: Mapping[str, str] = field(default_factory=dict)
    """Headers the data plane adds to the request it forwards to ``primary`` (P/D disaggregation:
    ``x-prefiller-host-port`` names the prefill endpoint to the decode side's sidecar)."""

    @property
    def primary(self) -> Endpoint:
        return self.targets[0]


#: ``spec.appProtocol`` of an InferencePool whose model servers take HTTP/2 without TLS.
H2C = "kubernetes.io/h2c"


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSpec:
    """The parts of an InferencePool the gateway acts on.

    ``selector`` is a label match (all pairs must match). ``failure_mode`` is ``FailOpen`` or
    ``FailClose`` as in ``endpointPickerRef.failureMode``. ``app_protocol`` is how requests reach
    the model servers: ``http`` (HTTP/1.1) or ``kubernetes.io/h2c`` (HTTP/2 without TLS,
    :data:`H2C`).
    """

    name: str
    namespace: str = "default"
    selector: Mapping[str, str] = field(default_factory=dict)
    target_ports: tuple[int, ...] = (8000,)
    failure_mode: str = "FailClose"
    health_path: str = "/health"
    model_server_type: str = "vllm"
    app_protocol: str = "http"


@dataclass(frozen=True, slots=True, kw_only=True)
class Objective:
    """An InferenceObjective: a named priority. Negative priorities are sheddable."""

    name: str
    priority: int = 0
    pool: str = ""
    namespace: str = "default"


@dataclass(frozen=True, slots=True, kw_only=True)
class RewriteTarget:
    model: str
    weight: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class RewriteRule:
    """Requests whose model is in ``match_models`` (empty: any model) go to one of ``targets``,
    chosen at random in proportion to the weights."""

    match_models: tuple[str, ...] = ()
    targets: tuple[RewriteTarget, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRewrite:
    """An InferenceModelRewrite: ordered rules, first match wins."""

    name: str
    pool: str = ""
    namespace: str = "default"
    rules: tuple[RewriteRule, ...] = ()


ConcurrencyMode = Literal["requests", "tokens", "hybrid"]


def concurrency_load(endpoint: Endpoint, mode: ConcurrencyMode, max_requests: int, max_tokens: int) -> float:
    """The endpoint's share of a fixed capacity the gateway's in-flight counts fill
    (``concurrency-detector``): requests over ``max_requests``, estimated prompt tokens over
    ``max_tokens``, or (hybrid) the larger share."""
    requests = endpoint.in_flight / max_requests
    tokens = endpoint.in_flight_tokens / max_tokens
    if mode == "requests":
        return requests
    if mode == "tokens":
        return tokens
    return requests if requests > tokens else tokens
