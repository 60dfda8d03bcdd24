"""``infergate epp --pool-name NAME``: the in-cluster endpoint picker, fed by the Kubernetes API.

The same :class:`~infergate.app.gateway.Gateway` as every other command, with a
:class:`~infergate.app.sources.KubernetesPoolSource` and the ``epp`` data plane (``infergate serve
--pool-name``/``--endpoint-selector`` runs the same with the built-in proxy instead: the picker and
the proxy in one process, no Gateway). Port for port it is the reference picker:

1. a ``kubernetes_asyncio`` API client (``--kubeconfig``, else in-cluster credentials, else
   ``$KUBECONFIG``/``~/.kube/config``);
2. the admin listener on ``--metrics-port`` (``/metrics`` behind the ``--metrics-auth`` check,
   ``/healthz``, ``/readyz``) and the plaintext gRPC health service on ``--grpc-health-port``, both
   up at once so the kubelet sees a live but not-ready pod while the picker syncs;
3. the Kubernetes source under the supervisor (restarted with back-off if it fails), writing pool,
   pods, objectives and rewrites into the datastore;
4. once the source has synced and the pool exists: the core (scheduler, flow control, Director,
   scraper speaking the pool's ``modelServerType`` dialect on its health path) and the ext_proc
   gRPC server on ``--grpc-port``; readiness turns SERVING;
5. readiness follows "pool known" from then on (a deleted pool makes the picker unready, not dead).

Shutdown (first SIGTERM): readiness NOT_SERVING first, so the Service stops sending new streams,
then open ext_proc streams drain for the grace period, then background work stops.
"""

from __future__ import annotations

import asyncio
import sys

from infergate.config.picker import EndpointPickerConfig
from infergate.config.settings import Settings, parse_duration
from infergate.errors import ConfigError

from .gateway import Gateway
from .process import configure_logging, run_async, stop_event, tune_gc_for_serving
from .sources import KubernetesPoolSource
from .workers import WorkerPool

__all__ = ["parse_duration", "run_epp"]


def run_epp(settings: Settings, *, picker: EndpointPickerConfig | None = None) -> int:
    """The process behind ``infergate epp --pool-name``: run until SIGTERM/SIGINT, then drain."""
    configure_logging(settings)
    s = settings

    async def main() -> int:
        stop = stop_event()
        try:
            gw = Gateway(KubernetesPoolSource(s), s, picker=picker)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        try:
            await gw.start()
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            await gw.stop()
            return 2
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            await gw.stop()
            return 1
        plane = gw.data_plane
        if gw.plane_factory.uses_listener:  # `serve` in a cluster: the built-in proxy
            host, port = gw.listen_address()
            serving = f"infergate serve: pool {gw.source.describe()}; proxy {host}:{port}"
        else:
            health = getattr(plane.front if isinstance(plane, WorkerPool) else plane, "health", None)
            serving = (
                f"infergate epp: pool {gw.source.describe()}; ext_proc :{s.listeners.grpc_port} "
                f"({'tls' if s.listeners.secure_serving else 'plaintext'}), "
                f"health :{health.port if health is not None else '-'}"
            )
        print(
            f"{serving}, metrics :{gw.admin.port} (auth {s.auth.metrics_auth}); waiting for the pool to sync",
            flush=True,
        )
        tune_gc_for_serving()
        try:
            stopped = asyncio.ensure_future(stop.wait())
            failed = asyncio.ensure_future(gw.failed.wait())
            await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
            for fut in (stopped, failed):
                fut.cancel()
        finally:
            await gw.stop()
        if gw.failure is not None:
            print(f"error: {gw.failure}", file=sys.stderr)
            return 1
        return 0

    return run_async(main)
