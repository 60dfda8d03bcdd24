"""The picker's reference options: over real TLS handshakes on 127.0.0.1, the oldest version it
accepts (``--tls-min-version``), the TLS 1.2 suites it offers (``--tls-cipher-suites``, Go's names)
and a rotated certificate loaded for the connections made after (``--enable-cert-reload``); the
candidates' scores in the routing metadata (``--emit-endpoint-scores``); over real gRPC streams,
the message size limits (``--grpc-max-recv-msg-size``, ``--grpc-max-send-msg-size``) and the
stream metrics (``--enable-grpc-stream-metrics``)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from infergate.config.settings import Settings
from infergate.dataplanes.extproc.server import ExtProcServer, TlsSettings, serve_extproc
from infergate.servers.tls import self_signed_pair
from tests.integration.test_extproc import (  # noqa: F401 (rig: a fixture)
    A,
    B,
    Rig,
    body_msg,
    chat_body,
    headers_msg,
    metric_value,
    read,
    rig,
)
from tests.support import async_wait_for


async def handshake(server: ExtProcServer, *, max_version: ssl.TLSVersion | None = None) -> tuple[bytes, str]:
    """(the server's certificate, DER; the negotiated cipher) of a fresh TLS connection."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    if max_version is not None:
        ctx.maximum_version = max_version
    _, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx)
    try:
        tls = writer.get_extra_info("ssl_object")
        return tls.getpeercert(binary_form=True), tls.cipher()[0]
    finally:
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)


@pytest.fixture
async def started(rig: Rig, request: pytest.FixtureRequest) -> AsyncIterator[ExtProcServer]:  # noqa: F811
    server = serve_extproc(rig.server.processor._director, "127.0.0.1", 0, tls=request.param)
    await server.start()
    yield server
    await server.stop(0)


@pytest.mark.parametrize("started", [TlsSettings(min_version="VersionTLS13")], indirect=True)
async def test_the_oldest_version_accepted(started: ExtProcServer) -> None:
    _, cipher = await handshake(started)
    assert cipher.startswith("TLS_")  # a TLS 1.3 suite
    with pytest.raises((ssl.SSLError, ConnectionError)):  # refused in the handshake, or reset
        await handshake(started, max_version=ssl.TLSVersion.TLSv1_2)


@pytest.mark.parametrize(
    "started", [TlsSettings(cipher_suites=("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",))], indirect=True
)
async def test_the_tls12_suites_offered(started: ExtProcServer) -> None:
    _, cipher = await handshake(started, max_version=ssl.TLSVersion.TLSv1_2)
    assert cipher == "ECDHE-ECDSA-CHACHA20-POLY1305"  # the one suite, though the client prefers AES


def write_pair(directory: Path, common_name: str) -> bytes:
    cert, key = self_signed_pair(common_name)
    (directory / "tls.crt").write_bytes(cert)
    (directory / "tls.key").write_bytes(key)
    return ssl.PEM_cert_to_DER_cert(cert.decode())


async def test_a_rotated_certificate_serves_the_next_connections(rig: Rig, tmp_path: Path) -> None:  # noqa: F811
    first = write_pair(tmp_path, "first")
    settings = TlsSettings(cert_path=tmp_path, reload=True, reload_interval=3600)  # checked by hand below
    server = serve_extproc(rig.server.processor._director, "127.0.0.1", 0, tls=settings)
    await server.start()
    try:
        watcher = server.cert_watcher
        assert watcher is not None
        assert (await handshake(server))[0] == first
        assert not watcher.check()  # nothing changed
        second = write_pair(tmp_path, "second")
        assert watcher.check() and watcher.reloads == 1
        assert (await handshake(server))[0] == second
        (tmp_path / "tls.key").write_bytes(b"half written")  # a rotation caught mid-way
        assert not watcher.check() and watcher.reloads == 1
        assert (await handshake(server))[0] == second  # the last good pair stays
    finally:
        await server.stop(0)
    assert watcher.reloads == 1


async def test_endpoint_scores_in_the_metadata_when_asked(rig: Rig) -> None:  # noqa: F811
    """``--emit-endpoint-scores``: every candidate's weighted total next to the destination in
    ``envoy.lb``, keyed by ``ip:port``, as llm-d-router emits them; absent by default."""
    for emit in (True, False):
        server = serve_extproc(
            rig.server.processor._director, "127.0.0.1", 0, endpoints=rig.ds, emit_scores=emit
        )
        async with serving(server) as stub:
            lb = await routed(stub, chat_body())
        assert lb["x-gateway-destination-endpoint"].string_value == A
        if not emit:
            assert "x-gateway-destination-endpoint-scores" not in lb
            continue
        scores = {
            k: v.number_value
            for k, v in lb["x-gateway-destination-endpoint-scores"].struct_value.fields.items()
        }
        assert set(scores) == {A, B} and scores[A] > scores[B]  # A is the idle endpoint the picker chose


@contextlib.asynccontextmanager
async def serving(server: ExtProcServer) -> AsyncIterator[pb_grpc.ExternalProcessorStub]:
    """``server`` started, a client of it on a fresh channel; stopped after."""
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as ch:
            yield pb_grpc.ExternalProcessorStub(ch)
    finally:
        await server.stop(0)


async def routed(stub: pb_grpc.ExternalProcessorStub, body: bytes) -> Mapping[str, Any]:
    """The ``envoy.lb`` metadata of the routing reply to one chat request with ``body``."""
    call = stub.Process()
    await call.write(headers_msg())
    await call.write(body_msg(body, eos=True))
    head, _ = await read(call, 2)
    call.cancel()
    fields: Mapping[str, Any] = head.dynamic_metadata.fields["envoy.lb"].struct_value.fields
    return fields


def from_listeners(rig: Rig, **listeners: object) -> ExtProcServer:  # noqa: F811
    """A plaintext picker built as the data planes build it, with these ``listeners`` settings."""
    return ExtProcServer.from_settings(
        Settings(listeners=listeners),  # type: ignore[arg-type]
        rig.server.processor._director,
        host="127.0.0.1",
        port=0,
        tls=False,
        endpoints=rig.ds,
        metrics=rig.metrics,
    )


async def test_a_message_above_the_receive_limit_ends_only_its_stream(rig: Rig) -> None:  # noqa: F811
    async with serving(from_listeners(rig, grpc_max_recv_msg_size="2KiB")) as stub:
        call = stub.Process()
        await call.write(headers_msg())
        await call.write(body_msg(chat_body(user="x" * 4096), eos=True))  # 4 KiB: above the limit
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await read(call, 1)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        lb = await routed(stub, chat_body(user="x" * 1024))  # the connection and the picker go on
    assert lb["x-gateway-destination-endpoint"].string_value == A


async def test_a_reply_above_the_send_limit_ends_its_stream_and_frees_the_endpoint(rig: Rig) -> None:  # noqa: F811
    async with serving(from_listeners(rig, grpc_max_send_msg_size="64B")) as stub:
        call = stub.Process()
        await call.write(headers_msg())
        await call.write(body_msg(chat_body(), eos=True))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await read(call, 1)  # the routing reply: destination, metadata, well above 64 bytes
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "trying to send message larger than max" in (refused.value.details() or "")
    assert all(e.in_flight == 0 for e in rig.ds.endpoints())  # the request was picked, then released


async def test_stream_metrics_count_streams_by_how_they_ended(rig: Rig) -> None:  # noqa: F811
    """Off: none of the three names on /metrics. On: open streams, their durations, and their end
    by Go's code name (``OK`` when Envoy closed it, ``Canceled`` when it reset it)."""
    inflight = "llm_d_epp_extproc_streams_inflight"
    ended = "llm_d_epp_extproc_streams_total"
    durations = "llm_d_epp_extproc_stream_duration_seconds_count"
    off = from_listeners(rig)
    assert off.stream_observer is None and b"llm_d_epp_extproc_stream" not in rig.metrics.render()

    async with serving(from_listeners(rig, grpc_stream_metrics=True)) as stub:
        reset = stub.Process()
        await reset.write(headers_msg("/v1/models", "GET", eos=True))
        await read(reset, 1)  # answered: the stream is open on the picker
        assert metric_value(rig.registry, inflight) == 1
        reset.cancel()

        closed = stub.Process()
        await closed.write(headers_msg("/v1/models", "GET", eos=True))
        await read(closed, 1)
        await closed.done_writing()
        assert await closed.read() is grpc.aio.EOF
        assert await closed.code() == grpc.StatusCode.OK

        async def both_ended() -> bool:
            return metric_value(rig.registry, durations) == 2

        await async_wait_for(both_ended, what="both streams recorded")
    assert metric_value(rig.registry, ended, code="OK") == 1
    assert metric_value(rig.registry, ended, code="Canceled") == 1
    assert metric_value(rig.registry, inflight) == 0
