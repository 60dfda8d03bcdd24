"""Public helpers for tests, benchmarks and plugin authors: build endpoints and run plugins briefly.

Nothing here is used by the gateway itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from infergate.types import Endpoint, EndpointMeta, EndpointMetrics

__all__ = ["make_endpoint"]

_ADAPTER_FIELDS = ("running_adapters", "waiting_adapters")


def make_endpoint(
    name: str,
    *,
    address: str | None = None,
    port: int = 8000,
    healthy: bool = True,
    in_flight: int = 0,
    labels: Mapping[str, str] | None = None,
    namespace: str = "default",
    pool: str = "",
    **metrics: Any,
) -> Endpoint:
    """An :class:`Endpoint` named ``name`` (key ``"<address or name>:<port>"``) with the given metrics.

    ``metrics`` are :class:`EndpointMetrics` fields; adapter sets may be given as any iterable of
    names, e.g. ``make_endpoint("a", waiting_queue_size=3, running_adapters=["food-review"])``.
    ``updated_at`` defaults to 1.0 (scraped once) so the endpoint counts as scraped.
    """
    for f in _ADAPTER_FIELDS:
        if f in metrics and not isinstance(metrics[f], frozenset):
            metrics[f] = frozenset(_names(metrics[f]))
    metrics.setdefault("updated_at", 1.0)
    meta = EndpointMeta(
        name=name,
        address=address if address is not None else name,
        port=port,
        namespace=namespace,
        pool=pool,
        labels=dict(labels or {}),
    )
    return Endpoint(meta=meta, metrics=EndpointMetrics(**metrics), healthy=healthy, in_flight=in_flight)


def _names(value: Iterable[str] | str) -> Iterable[str]:
    return (value,) if isinstance(value, str) else value
