"""Local Envoy data plane: the bootstrap that puts Envoy in front of the picker.

This module owns what Envoy must be told so it asks the picker where every request goes: a listener
(from the Gateway), one route per HTTPRoute prefix, the ext_proc filter pointing at the picker
(request bodies BUFFERED; of a response only what the picker asks for, per request), and an
ORIGINAL_DST cluster that connects to whatever ``x-gateway-destination-endpoint`` names (the GIE
reference's test Envoy, §2.9). Two deliberate additions over the reference:

* the client's own ``x-gateway-destination-endpoint`` is removed before any filter runs (early
  header mutation), so a client can never choose the upstream address, even when the picker is
  down and the failure mode lets requests through;
* with ``failure_mode="FailOpen"`` and a list of fallback endpoints, a request that comes back from a
  failed picker without a destination goes to a plain least-request cluster of the pool instead of
  failing, which is what fail-open means for a user.

Pure data (no I/O): :mod:`infergate.dataplanes.extproc.process` runs Envoy with what this renders.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from infergate.api.loader import ManifestSet
from infergate.config.settings import Settings
from infergate.errors import ConfigError
from infergate.requestcontrol.headers import DESTINATION_ENDPOINT
from infergate.types import H2C

__all__ = [
    "LISTENER_NAME",
    "EnvoySettings",
    "envoy_settings",
    "render_bootstrap",
    "render_bootstrap_yaml",
    "settings_from_manifests",
]

_T = "type.googleapis.com/"
EXTPROC_CLUSTER = "ext_proc"
LISTENER_NAME = "infergate"
"""The inference listener's name (admin ``/listeners`` reports its bound port by it)."""
ORIGINAL_DST_CLUSTER = "original_destination_cluster"
FALLBACK_CLUSTER = "pool_fail_open"
LONG = "86400s"
_PREVIOUS_HOSTS = _T + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
_CONNECTION_LIMIT = _T + "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit"


@dataclass(frozen=True, kw_only=True)
class EnvoySettings:
    """Everything the bootstrap depends on. Defaults match the reference's test Envoy where it has one.

    ``route_prefixes`` are the HTTPRoute PathPrefix matches; ``fallback_endpoints`` (``host:port``)
    are used only when the picker fails and ``failure_mode`` is ``FailOpen``. ``request_body_mode``
    None means BUFFERED in both failure modes: Envoy can only let a request continue past a failed
    picker if it still holds the body (full-duplex hands it over), and Envoy applies
    ``message_timeout`` to no message of a FULL_DUPLEX_STREAMED request, so a frozen picker would
    hold FailClose requests until an idle timeout. The picker needs the whole body before it can
    route anyway; ``max_request_bytes`` bounds it (the gateway's ``max_body_bytes``).
    """

    listen_host: str = "0.0.0.0"
    listen_port: int = 8081
    route_prefixes: Sequence[str] = ("/",)
    picker_host: str = "127.0.0.1"
    picker_port: int = 9002
    picker_ports: Sequence[int] = ()
    """Every port the picker serves on when it runs in several worker processes (``proxy.workers``),
    one cluster endpoint each: Envoy keeps one or two HTTP/2 connections per endpoint and picks an
    endpoint per ext_proc stream (least request), so each request's stream can go to any worker.
    Empty: ``picker_port`` alone."""
    picker_tls: bool = False
    failure_mode: str = "FailClose"
    fallback_endpoints: Sequence[str] = ()
    admin_host: str = "127.0.0.1"
    admin_port: int = 0
    request_body_mode: str | None = None
    response_body_mode: str = "STREAMED"
    """What Envoy sends of a response unless the picker says otherwise for that request: with
    ``allow_mode_override`` the picker's response-headers reply picks per request (every chunk
    for event streams and model rewrites, the whole body in one message for a JSON answer, none
    for an error), which Envoy only honours when no body mode is ``FULL_DUPLEX_STREAMED``."""
    allow_mode_override: bool = True
    graceful_close: bool = True
    """Envoy half-closes a finished ext_proc stream (runtime ``ext_proc_graceful_grpc_close``)
    instead of resetting it, so the picker ends each stream with a read instead of a cancel."""
    remote_close_timeout_ms: int = 200
    """After the half-close Envoy waits this long for the picker to end the stream, then resets
    it. A picker that is not reading (the request waits in flow control while its client left)
    learns of the departure only by that reset, so this bounds how long the request stays
    queued; a picker that ends streams late only pays the reset it would have paid anyway."""
    max_request_bytes: int = 32 << 20
    """Largest request body Envoy buffers for the picker (413 above): ``max_body_bytes``."""
    message_timeout: str = "65s"
    """How long Envoy waits for one picker reply; bounds a frozen picker. The picker may hold the
    body reply while the request waits in flow control, so this is the queue TTL (``request_ttl``,
    60 s) plus a margin. Envoy ignores it in FULL_DUPLEX_STREAMED body mode."""
    grpc_timeout: str = "10s"
    picker_health_check: bool = True
    max_connections: int = 40000
    """Upstream circuit-breaker limits per cluster."""
    max_client_connections: int = 10000
    """Downstream connections the listener holds at once; more are closed at accept."""
    request_headers_timeout: str = "75s"
    """A client must complete its request head within this (the built-in proxy's ``idle_timeout``)."""
    request_timeout: str = "140s"
    """A client must complete its whole request (head and body) within this; the timer stops once the
    request went upstream, so it also covers the picker's flow-control wait (``idle_timeout`` +
    ``request_ttl`` + 5 s by default). Responses are not limited by it."""
    idle_timeout: str = "3600s"
    """Idle keep-alive client connections are closed after this."""
    retries: int = 1
    """Extra attempts of a request whose attempt failed before any byte of it reached the model
    server (connect failure, refused stream, reset before sending): it is resent to the same
    server (the picker chose it). An attempt the server received is never resent: it may be what
    stalls the server, and the next attempt would stall it again (``retries`` of the proxy)."""
    first_byte_timeout: str | None = "600s"
    """Per-attempt wait for the model server's response head (Envoy's ``per_try_timeout``: it stops
    once the head arrives, so streams are not cut by it); then 504. None: unbounded."""
    stream_idle_timeout: str = "600s"
    """No byte in either direction for this long fails the request (route ``idle_timeout``). Envoy
    runs this timer while it waits for the head too, so it is at least ``first_byte_timeout``."""
    connect_timeout: str = "5s"
    """TCP connect to a model server."""
    health_path: str = "/health"
    """Health-check path of the fail-open cluster (the InferencePool's model servers)."""
    upstream_h2c: bool = False
    """Envoy speaks HTTP/2 without TLS to the model servers (the pool's ``appProtocol:
    kubernetes.io/h2c``), on requests and the fail-open cluster's health checks; else HTTP/1.1."""


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"endpoint {address!r}: expected host:port")
    return host.strip("[]"), int(port)


def _socket(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _thresholds(n: int, **extra: int) -> dict[str, Any]:
    return {"thresholds": [{"max_connections": n, "max_pending_requests": n, "max_requests": n, **extra}]}


def _request_mode(s: EnvoySettings) -> str:
    return s.request_body_mode or "BUFFERED"


def _ext_proc_filter(s: EnvoySettings) -> dict[str, Any]:
    req_mode = _request_mode(s)
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {
                "envoy_grpc": {
                    "cluster_name": EXTPROC_CLUSTER,
                    "authority": f"{s.picker_host}:{s.picker_port}",
                },
                "timeout": s.grpc_timeout,
            },
            "failure_mode_allow": s.failure_mode == "FailOpen",
            "processing_mode": {
                "request_header_mode": "SEND",
                "response_header_mode": "SEND",
                "request_body_mode": req_mode,
                "response_body_mode": s.response_body_mode,
                "request_trailer_mode": "SEND" if req_mode == "FULL_DUPLEX_STREAMED" else "SKIP",
                "response_trailer_mode": "SEND" if s.response_body_mode == "FULL_DUPLEX_STREAMED" else "SKIP",
            },
            "allow_mode_override": s.allow_mode_override,
            "message_timeout": s.message_timeout,
            # accept the picker's dynamic metadata: the routing decision, and the mark on its own
            # immediate replies that the local-reply mapper reads
            "metadata_options": {"receiving_namespaces": {"untyped": ["envoy.lb", "infergate"]}},
        },
    }


def _routes(s: EnvoySettings) -> list[dict[str, Any]]:
    fail_open = s.failure_mode == "FailOpen" and bool(s.fallback_endpoints)
    action: dict[str, Any] = {
        "cluster": ORIGINAL_DST_CLUSTER,
        "timeout": LONG,
        "idle_timeout": s.stream_idle_timeout,
    }
    retry: dict[str, Any] = {}
    if s.retries > 0:
        # only failures before any request byte went out: never resend what a server received
        retry = {"retry_on": "connect-failure,refused-stream,reset-before-request", "num_retries": s.retries}
    if s.first_byte_timeout is not None:
        retry["per_try_timeout"] = s.first_byte_timeout
        retry.setdefault("num_retries", 0)
    if retry:
        action["retry_policy"] = retry
    routes: list[dict[str, Any]] = []
    for prefix in s.route_prefixes:
        match: dict[str, Any] = {"prefix": prefix}
        if fail_open:
            match["headers"] = [{"name": DESTINATION_ENDPOINT, "present_match": True}]
        routes.append({"match": match, "route": dict(action)})
        if fail_open:
            routes.append(
                {
                    "match": {"prefix": prefix},
                    "route": {
                        "cluster": FALLBACK_CLUSTER,
                        "timeout": LONG,
                        "idle_timeout": s.stream_idle_timeout,
                        # one retry on another replica before any response byte, as the built-in
                        # proxy's retry budget
                        "retry_policy": {
                            "retry_on": "connect-failure,refused-stream,reset,gateway-error",
                            "num_retries": 1,
                            **({"per_try_timeout": s.first_byte_timeout} if s.first_byte_timeout else {}),
                            "retry_host_predicate": [
                                {
                                    "name": "envoy.retry_host_predicates.previous_hosts",
                                    "typed_config": {"@type": _PREVIOUS_HOSTS},
                                }
                            ],
                            "host_selection_retry_max_attempts": 3,
                        },
                    },
                }
            )
    return routes


def _clusters(s: EnvoySettings) -> list[dict[str, Any]]:
    n = s.max_connections
    ext_proc: dict[str, Any] = {
        "name": EXTPROC_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "5s",
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": _thresholds(n, max_retries=1024),
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "initial_stream_window_size": 65536,
                        "initial_connection_window_size": 1048576,
                    }
                },
            }
        },
        "load_assignment": {
            "cluster_name": EXTPROC_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _socket(s.picker_host, p)}}
                        for p in (s.picker_ports or (s.picker_port,))
                    ]
                }
            ],
        },
    }
    if len(s.picker_ports) > 1:
        # A picker worker that died refuses connections until it is back on its port: eject it
        # at the first refused connection instead of after two failed health checks (~4 s), so
        # one request fails instead of every other one meanwhile. Only connection failures count
        # (split local origin): an ext_proc stream's own gRPC status never ejects a worker.
        ext_proc["outlier_detection"] = {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 1,
            "enforcing_consecutive_local_origin_failure": 100,
            "enforcing_consecutive_5xx": 0,
            "enforcing_consecutive_gateway_failure": 0,
            "enforcing_success_rate": 0,
            "interval": "1s",
            "base_ejection_time": "2s",
            "max_ejection_percent": 100,
        }
    if s.picker_health_check:
        hc: dict[str, Any] = {
            "timeout": "2s",
            "interval": "2s",
            "unhealthy_threshold": 2,
            "healthy_threshold": 1,
            "reuse_connection": True,
            "grpc_health_check": {"service_name": "envoy.service.ext_proc.v3.ExternalProcessor"},
        }
        if s.picker_tls:
            hc["tls_options"] = {"alpn_protocols": ["h2"]}
        ext_proc["health_checks"] = [hc]
    if s.picker_tls:
        # An empty validation context accepts the picker's self-signed certificate, as the reference.
        ext_proc["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {"validation_context": {}, "alpn_protocols": ["h2"]},
            },
        }
    # the model servers' protocol (appProtocol): HTTP/1.1 unless the pool says h2c
    upstream: dict[str, Any] = {}
    if s.upstream_h2c:
        upstream["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    clusters: list[dict[str, Any]] = [
        {
            "name": ORIGINAL_DST_CLUSTER,
            "type": "ORIGINAL_DST",
            "connect_timeout": s.connect_timeout,
            "lb_policy": "CLUSTER_PROVIDED",
            "circuit_breakers": _thresholds(n),
            "original_dst_lb_config": {"use_http_header": True, "http_header_name": DESTINATION_ENDPOINT},
            **upstream,
        },
        ext_proc,
    ]
    if s.failure_mode == "FailOpen" and s.fallback_endpoints:
        clusters.append(
            {
                "name": FALLBACK_CLUSTER,
                "type": "STATIC",
                "connect_timeout": "10s",
                "lb_policy": "LEAST_REQUEST",
                "circuit_breakers": _thresholds(n),
                # a dead replica leaves the fail-open cluster after two failed probes or three
                # 5xx/connect failures in a row, as it leaves the picker's rotation
                "health_checks": [
                    {
                        "timeout": "1s",
                        "interval": "1s",
                        "unhealthy_threshold": 2,
                        "healthy_threshold": 1,
                        "http_health_check": {
                            "path": s.health_path,
                            **({"codec_client_type": "HTTP2"} if s.upstream_h2c else {}),
                        },
                    }
                ],
                "outlier_detection": {
                    "consecutive_5xx": 3,
                    "consecutive_gateway_failure": 2,
                    "interval": "1s",
                    "base_ejection_time": "10s",
                    "max_ejection_percent": 100,
                },
                **upstream,
                "load_assignment": {
                    "cluster_name": FALLBACK_CLUSTER,
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {"endpoint": {"address": _socket(*_split(a))}} for a in s.fallback_endpoints
                            ]
                        }
                    ],
                },
            }
        )
    return clusters


def envoy_settings(
    settings: Settings,
    manifests: ManifestSet,
    *,
    pool_name: str,
    picker_port: int,
    fallback_endpoints: Sequence[str],
    listen: tuple[str, int],
    health_path: str,
    picker_ports: Sequence[int] = (),
) -> EnvoySettings:
    """The bootstrap settings of the local Envoy in front of the picker: the manifests' routes and
    failure mode, plus the gateway settings Envoy enforces itself (client idle and request timeouts,
    client connections, upstream connect, first-byte and idle timeouts, retries, body size). The
    picker may hold a request while it waits in flow control, so Envoy's per-message and request
    timeouts cover the longest queue wait (``flow_control.request_ttl``, or
    ``no_endpoint_request_ttl`` when longer)."""
    base = settings_from_manifests(
        manifests,
        picker_port=picker_port,
        picker_tls=False,
        pool_name=pool_name,
        fallback_endpoints=fallback_endpoints,
        listen=listen,
    )
    ttl, idle = settings.flow_control.longest_queue_wait, settings.listeners.idle_timeout
    proxy = settings.proxy
    first_byte = proxy.first_byte_timeout
    return dataclasses.replace(
        base,
        picker_ports=tuple(picker_ports),
        message_timeout=f"{ttl + 5:g}s",
        request_headers_timeout=f"{idle:g}s",
        request_timeout=f"{idle + ttl + 5:g}s",
        max_client_connections=settings.listeners.max_client_connections,
        health_path=health_path,
        retries=proxy.retries,
        first_byte_timeout=f"{first_byte:g}s" if first_byte is not None else None,
        # Envoy's idle timer also runs while the head is awaited
        stream_idle_timeout=f"{max(proxy.stream_idle_timeout, first_byte or proxy.request_timeout):g}s",
        connect_timeout=f"{proxy.connect_timeout:g}s",
        max_request_bytes=settings.limits.max_body_bytes,
    )


def settings_from_manifests(
    manifests: ManifestSet,
    *,
    picker_host: str = "127.0.0.1",
    picker_port: int = 9002,
    picker_tls: bool = False,
    pool_name: str | None = None,
    fallback_endpoints: Sequence[str] | None = None,
    listen: tuple[str, int] | None = None,
) -> EnvoySettings:
    """Envoy settings for one pool: Gateway listener, HTTPRoute prefixes, the pool's failure mode.

    ``fallback_endpoints`` defaults to the pool's endpoints known from the manifests (Pods and
    EndpointLists); pass the live addresses when the fleet is started at run time.
    """
    pool = manifests.pool_spec(pool_name)
    host, port = listen if listen is not None else manifests.listener()
    if fallback_endpoints is None:
        fallback_endpoints = [m.key for m in manifests.endpoints_for(pool)]
    return EnvoySettings(
        listen_host=host,
        listen_port=port,
        route_prefixes=tuple(manifests.route_prefixes(pool.name)),
        picker_host=picker_host,
        picker_port=picker_port,
        picker_tls=picker_tls,
        failure_mode=pool.failure_mode,
        fallback_endpoints=tuple(fallback_endpoints),
        upstream_h2c=pool.app_protocol == H2C,
    )


def _local_reply_config() -> dict[str, Any]:
    """Errors Envoy makes up itself (no healthy upstream, picker unreachable, bad request head,
    timeouts) get the OpenAI error JSON the picker and the built-in proxy answer with.

    The picker's own immediate replies are already that JSON; they carry the dynamic metadata
    ``infergate.answered`` and are left alone.
    """

    def mapper(low: int, high: int, error_type: str) -> dict[str, Any]:
        return {
            "filter": {
                "and_filter": {
                    "filters": [
                        {
                            "metadata_filter": {
                                "matcher": {
                                    "filter": "infergate",
                                    "path": [{"key": "answered"}],
                                    # present on the picker's replies: then this never matches
                                    "value": {"string_match": {"exact": "-"}},
                                },
                                "match_if_key_not_found": True,
                            }
                        },
                        {
                            "status_code_filter": {
                                "comparison": {
                                    "op": "GE",
                                    "value": {"default_value": low, "runtime_key": "infergate.none"},
                                }
                            }
                        },
                        {
                            "status_code_filter": {
                                "comparison": {
                                    "op": "LE",
                                    "value": {"default_value": high, "runtime_key": "infergate.none"},
                                }
                            }
                        },
                    ]
                }
            },
            "body_format_override": {
                "json_format": {
                    "error": {
                        "message": "%LOCAL_REPLY_BODY%",
                        "type": error_type,
                        "param": None,
                        "code": "%RESPONSE_CODE%",
                    }
                }
            },
        }

    too_large = mapper(413, 413, "invalid_request_error")  # a body over the buffer, as the picker's
    too_large["body_format_override"]["json_format"]["error"]["code"] = "request_too_large"
    return {
        "mappers": [too_large, mapper(400, 499, "invalid_request_error"), mapper(500, 599, "upstream_error")]
    }


def render_bootstrap(settings: EnvoySettings | None = None, **overrides: Any) -> dict[str, Any]:
    """The Envoy v3 bootstrap as a plain dict (``json.dumps``/``yaml.safe_dump`` it).

    Keyword ``overrides`` replace fields of ``settings`` (or of the defaults).
    """
    s = settings or EnvoySettings()
    if overrides:
        s = EnvoySettings(**{**s.__dict__, **overrides})
    if s.failure_mode not in ("FailOpen", "FailClose"):
        raise ConfigError(f"failureMode {s.failure_mode!r}: expected FailOpen or FailClose")
    hcm = {
        "@type": _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "http",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "normalize_path": True,
        "merge_slashes": True,
        "stream_idle_timeout": LONG,
        # slow clients: the head and the whole request are bounded, the response is not
        "request_headers_timeout": s.request_headers_timeout,
        "request_timeout": s.request_timeout,
        "common_http_protocol_options": {
            "headers_with_underscores_action": "REJECT_REQUEST",
            "idle_timeout": s.idle_timeout,
        },
        "local_reply_config": _local_reply_config(),
        "http2_protocol_options": {"max_concurrent_streams": 100},
        "early_header_mutation_extensions": [
            {
                "name": "envoy.http.early_header_mutation.header_mutation",
                "typed_config": {
                    "@type": _T
                    + "envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
                    "mutations": [{"remove": DESTINATION_ENDPOINT}],
                },
            }
        ],
        "route_config": {
            "name": "infergate",
            "virtual_hosts": [{"name": "infergate", "domains": ["*"], "routes": _routes(s)}],
        },
        "http_filters": [
            _ext_proc_filter(s),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": _T + "envoy.extensions.filters.http.router.v3.Router",
                    "suppress_envoy_headers": True,
                },
            },
        ],
    }
    runtime: dict[str, Any] = {
        "envoy.reloadable_features.ext_proc_graceful_grpc_close": s.graceful_close,
        # after its half-close Envoy resets a stream the picker has not ended: a picker busy
        # with a request whose client left (waiting in flow control) hears of it this soon
        "envoy.filters.http.ext_proc.remote_close_timeout_milliseconds": s.remote_close_timeout_ms,
    }
    return {
        "admin": {"address": _socket(s.admin_host, s.admin_port)},
        "layered_runtime": {"layers": [{"name": "infergate", "static_layer": runtime}]},
        "static_resources": {
            "listeners": [
                {
                    "name": LISTENER_NAME,
                    "address": _socket(s.listen_host, s.listen_port),
                    # BUFFERED mode holds whole request bodies in this buffer.
                    "per_connection_buffer_limit_bytes": 32768
                    if _request_mode(s) == "FULL_DUPLEX_STREAMED"
                    else s.max_request_bytes,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.connection_limit",
                                    "typed_config": {
                                        "@type": _CONNECTION_LIMIT,
                                        "stat_prefix": "listener_connections",
                                        "max_connections": s.max_client_connections,
                                    },
                                },
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                },
                            ]
                        }
                    ],
                }
            ],
            "clusters": _clusters(s),
        },
    }


def render_bootstrap_yaml(settings: EnvoySettings | None = None, **overrides: Any) -> str:
    """The bootstrap as YAML, for ``infergate envoy-config``."""
    import yaml

    return str(yaml.safe_dump(render_bootstrap(settings, **overrides), sort_keys=False))
