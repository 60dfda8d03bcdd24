"""What infergate takes from the Gateway API kinds (Gateway, HTTPRoute), and what it leaves.

Locally (``up``, ``serve``) infergate is the Gateway implementation: it serves one listener of one
Gateway and sends the path prefixes an HTTPRoute gives an InferencePool to that pool. Everything
else those objects can say (TLS on a listener, host names, header or query matches, filters,
timeouts, backends that are not pools, a second listener) a Kubernetes Gateway would apply and
infergate does not, so each is named in a load-time warning rather than dropped without a word.
In a cluster (``epp``) the Gateway implementation in front reads these objects, not infergate.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from infergate.api.resources import GatewayResource, HTTPRouteResource

__all__ = ["chosen_listener", "unapplied"]

_SERVED_PROTOCOLS = {"HTTP", "HTTPS"}


def chosen_listener(
    gateways: Sequence[GatewayResource], routes: Sequence[HTTPRouteResource]
) -> tuple[GatewayResource, int] | None:
    """The Gateway and index of the listener infergate serves: the first HTTP(S) one, a Gateway an
    HTTPRoute names in ``parentRefs`` first; None when there is none."""
    referenced = {p.name for r in routes for p in r.spec.parent_refs}
    for gw in sorted(gateways, key=lambda g: g.name not in referenced):
        for i, listener in enumerate(gw.spec.listeners):
            if listener.protocol.upper() in _SERVED_PROTOCOLS:
                return gw, i
    return None


def unapplied(gateways: Sequence[GatewayResource], routes: Sequence[HTTPRouteResource]) -> list[str]:
    """One warning per part of the Gateways and HTTPRoutes that infergate does not apply."""
    out: list[str] = []
    chosen = chosen_listener(gateways, routes)
    for gw in gateways:
        out += _gateway(gw, chosen)
    for route in routes:
        out += _route(route)
    return out


def _gateway(gw: GatewayResource, chosen: tuple[GatewayResource, int] | None) -> list[str]:
    out: list[str] = []
    where = f"Gateway/{gw.name}"
    served = None if chosen is None else f"Gateway/{chosen[0].name} spec.listeners[{chosen[1]}]"
    for i, listener in enumerate(gw.spec.listeners):
        at = f"{where}: spec.listeners[{i}]"
        if chosen is not None and (chosen[0] is not gw or chosen[1] != i):
            out.append(f"{at} (port {listener.port}): not served; infergate serves one listener, {served}")
            continue
        if listener.protocol.upper() not in _SERVED_PROTOCOLS:
            out.append(f"{at}.protocol: {listener.protocol} is not served (HTTP only)")
        if listener.protocol.upper() == "HTTPS":
            out.append(f"{at}.protocol: HTTPS is served as plain HTTP: infergate does not terminate TLS")
        if listener.hostname:
            out.append(f"{at}.hostname: not applied; requests for every host name are served")
        out += [f"{at}.{key}: not applied" for key in _extra(listener)]
    return out


def _route(route: HTTPRouteResource) -> list[str]:
    out: list[str] = []
    where = f"HTTPRoute/{route.name}: spec"
    if route.spec.hostnames:
        out.append(f"{where}.hostnames: not applied; requests for every host name are routed")
    for i, rule in enumerate(route.spec.rules):
        at = f"{where}.rules[{i}]"
        for key in _extra(rule):
            hint = "; the gateway's proxy timeouts apply" if key == "timeouts" else ""
            out.append(f"{at}.{key}: not applied{hint}")
        for j, match in enumerate(rule.matches):
            for key in _extra(match):
                out.append(f"{at}.matches[{j}].{key}: not applied; routes match by path only")
        for j, b in enumerate(rule.backend_refs):
            if b.kind != "InferencePool":
                out.append(
                    f"{at}.backendRefs[{j}]: {b.kind}/{b.name} is not served; "
                    "infergate routes to InferencePools only"
                )
    return out


def _extra(obj: BaseModel) -> list[str]:
    """The fields an open model keeps without knowing them (their wire names), in the order given."""
    return list(obj.model_extra or {})
