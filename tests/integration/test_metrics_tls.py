"""The admin port over HTTPS (the reference's ``--metrics-cert-dir``) and with client certificates
(``--metrics-client-ca-file``): real TLS handshakes on 127.0.0.1 against the real admin server,
with a CA, a client certificate it signed and one it did not, all made here by ``openssl``."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from infergate.config.settings import Settings
from infergate.datastore.store import Datastore
from infergate.errors import ConfigError
from infergate.servers.admin import AdminServer
from infergate.servers.tls import self_signed_pair
from infergate.telemetry import GatewayMetrics


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def issue(directory: Path, name: str, ca: tuple[Path, Path] | None) -> tuple[Path, Path]:
    """(certificate, key) for ``name``: signed by ``ca`` (certificate, key), else self-signed."""
    crt, key = directory / f"{name}.crt", directory / f"{name}.key"
    subj = f"/CN={name}"
    if ca is None:
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", key, "-out", crt, "-days", "2", "-subj", subj)  # fmt: skip
        return crt, key
    csr = directory / f"{name}.csr"
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", csr, "-subj", subj)  # fmt: skip
    openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
            "-out", crt, "-days", "2")  # fmt: skip
    return crt, key


def write_server_pair(cert_dir: Path, common_name: str) -> bytes:
    cert, key = self_signed_pair(common_name, hosts=("127.0.0.1",))
    cert_dir.mkdir(exist_ok=True)
    (cert_dir / "tls.crt").write_bytes(cert)
    (cert_dir / "tls.key").write_bytes(key)
    return ssl.PEM_cert_to_DER_cert(cert.decode())


@contextlib.asynccontextmanager
async def admin(**auth: object) -> AsyncIterator[AdminServer]:
    server = AdminServer.from_settings(
        Settings(auth=auth),  # type: ignore[arg-type]
        Datastore(),
        GatewayMetrics(CollectorRegistry()),
    )
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()


def client_context(cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


async def get(url: str, ctx: ssl.SSLContext | None) -> int:
    async with aiohttp.ClientSession() as session, session.get(url, ssl=ctx if ctx else False) as r:
        await r.read()
        return r.status


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    ca = issue(tmp_path, "ca", None)
    return {
        "ca": ca,
        "signed": issue(tmp_path, "prometheus", ca),
        "stranger": issue(tmp_path, "stranger", None),
    }


async def test_client_certificates_signed_by_the_ca_only(
    tmp_path: Path, pki: dict[str, tuple[Path, Path]]
) -> None:
    write_server_pair(tmp_path / "certs", "metrics")
    async with admin(metrics_cert_dir=tmp_path / "certs", metrics_client_ca_file=pki["ca"][0]) as server:
        url = f"https://127.0.0.1:{server.port}/metrics"
        assert await get(url, client_context(pki["signed"])) == 200
        for refused in (client_context(pki["stranger"]), client_context()):
            with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
                await get(url, refused)
        with pytest.raises(aiohttp.ClientError):  # plain HTTP on the TLS port
            await get(f"http://127.0.0.1:{server.port}/metrics", None)


async def test_https_without_client_certificates_and_a_rotated_pair(tmp_path: Path) -> None:
    first = write_server_pair(tmp_path / "certs", "first")
    async with admin(metrics_cert_dir=tmp_path / "certs", metrics_auth="token") as server:
        url = f"https://127.0.0.1:{server.port}/healthz"
        assert await get(url, client_context()) == 200
        assert await served_certificate(server.port) == first
        second = write_server_pair(tmp_path / "certs", "second")
        assert server.cert_watcher is not None and server.cert_watcher.check()
        assert await served_certificate(server.port) == second


async def served_certificate(port: int) -> bytes:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context())
    try:
        return bytes(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
    finally:
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)


@pytest.mark.parametrize(
    ("auth", "named"),
    [
        ({"metrics_client_ca_file": "/ca.pem"}, "metrics_client_ca_file needs auth.metrics_cert_dir"),
        ({"metrics_cert_dir": "/certs"}, "without authentication; set auth.metrics_client_ca_file or"),
    ],
)
async def test_tls_that_would_leave_the_port_open_is_refused(auth: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        async with admin(**auth):
            pass


async def test_a_ca_file_with_no_certificate_is_named(tmp_path: Path) -> None:
    write_server_pair(tmp_path / "certs", "metrics")
    (tmp_path / "empty.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"empty\.pem: no CA certificate loads"):
        async with admin(metrics_cert_dir=tmp_path / "certs", metrics_client_ca_file=tmp_path / "empty.pem"):
            pass
