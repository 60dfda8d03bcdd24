"""The picker's plaintext gRPC health port (``--grpc-health-port``, 9003), what the kubelet probes.

The chart's probes are ``grpc: {port: 9003, service: liveness|readiness}``; the kubelet speaks
plaintext gRPC, so this server never uses TLS even when the ext_proc port does. It shares one
``HealthServicer`` with the ext_proc server, so Envoy's checks on the ext_proc port and the kubelet's
on this one always agree.

- ``liveness``: SERVING while the process runs (until shutdown);
- ``readiness``, ``""`` (overall) and the ExternalProcessor service name: SERVING only while the
  picker can route (pool synced and known), NOT_SERVING before that and from the first SIGTERM on,
  so the Service stops sending new streams before the picker drains;
- any other name (the reference charts' ``inference-extension``): as ``""``, as the reference
  picker answers without leader election.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2

from infergate.servers.grpc_http2 import GrpcMethod, GrpcServer

__all__ = [
    "EXTPROC_SERVICE",
    "HEALTH_SERVICES",
    "LIVENESS",
    "READINESS",
    "READY_NAMES",
    "HealthServer",
    "PickerHealthServicer",
    "health_methods",
]

log = logging.getLogger("infergate.health")

EXTPROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
LIVENESS = "liveness"
READINESS = "readiness"
# Names the health service answers for: overall, the k8s-style probes, and what Envoy checks.
HEALTH_SERVICES = ("", LIVENESS, READINESS, EXTPROC_SERVICE)
READY_NAMES = ("", READINESS, EXTPROC_SERVICE)

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class PickerHealthServicer(grpc_health.aio.HealthServicer):  # type: ignore[misc]
    """The health service, answering a service name it was never told of as the overall (``""``)
    status: SERVING while the picker can route.

    The reference picker without leader election does the same (its check ignores the name), and
    deployments written for it rely on that: the GIE ``inferencepool`` chart and llm-d-router's
    charts probe ``service: inference-extension`` when they run one replica. grpcio's servicer
    would answer NOT_FOUND, and the kubelet would never find such a picker ready.
    """

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in HEALTH_SERVICES:
            request = health_pb2.HealthCheckRequest(service="")
        return await super().Check(request, context)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        if request.service not in HEALTH_SERVICES:
            request = health_pb2.HealthCheckRequest(service="")
        async for reply in super().Watch(request, context):
            yield reply


def health_methods(servicer: grpc_health.aio.HealthServicer) -> dict[str, GrpcMethod]:
    """``grpc.health.v1.Health``'s Check and Watch served from ``servicer``'s statuses."""
    request = health_pb2.HealthCheckRequest.FromString
    reply = health_pb2.HealthCheckResponse.SerializeToString
    return {
        "/grpc.health.v1.Health/Check": GrpcMethod(servicer.Check, request, reply),
        "/grpc.health.v1.Health/Watch": GrpcMethod(servicer.Watch, request, reply),
    }


class HealthServer:
    """A gRPC server (``servers/grpc_http2.py``) hosting only the health service; ``port=0`` picks
    a free port."""

    def __init__(self, host: str, port: int, servicer: grpc_health.aio.HealthServicer | None = None) -> None:
        self.host = host
        self.port = port
        self.servicer = servicer or PickerHealthServicer()
        self.ready = False
        self._server: GrpcServer | None = None

    async def start(self) -> None:
        """Bind; liveness SERVING, readiness NOT_SERVING until :meth:`set_ready`."""
        server = GrpcServer(health_methods(self.servicer))
        self.port = await server.start(self.host, self.port)
        self._server = server
        await self.servicer.set(LIVENESS, _SERVING)
        await self.set_ready(False)
        log.info("gRPC health listening on %s:%d", self.host, self.port)

    async def set_ready(self, ready: bool) -> None:
        """Flip readiness (and the overall and ExternalProcessor names); liveness is untouched."""
        if ready != self.ready:
            log.info("readiness: %s", "SERVING" if ready else "NOT_SERVING")
        self.ready = ready
        status = _SERVING if ready else _NOT_SERVING
        for name in READY_NAMES:
            await self.servicer.set(name, status)

    async def stop(self, grace: float | None = 1.0) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        await self.servicer.enter_graceful_shutdown()
        await server.stop(grace)
