"""Server certificate for the picker's gRPC port: a user-supplied pair or a self-signed one.

The reference EPP serves TLS by default with a certificate it makes itself at start; Envoy's
ext_proc cluster accepts it because its validation context is empty. This module produces the
same thing without asking the user for anything: with the ``cryptography`` package when it is
installed, else with the ``openssl`` command line tool.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path

from infergate.errors import ConfigError

__all__ = ["load_or_create_pair", "self_signed_pair", "server_context"]


def load_or_create_pair(
    cert_path: Path | None, *, common_name: str = "infergate-epp", host: str = "127.0.0.1"
) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM): read ``cert_path/tls.crt`` and ``tls.key`` or make a pair."""
    if cert_path is not None:
        crt, key = cert_path / "tls.crt", cert_path / "tls.key"
        try:
            return crt.read_bytes(), key.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{cert_path}: cannot read tls.crt/tls.key: {exc}") from exc
    return self_signed_pair(common_name, hosts=(host, "127.0.0.1", "localhost"))


def server_context(cert: bytes, key: bytes) -> ssl.SSLContext:
    """A TLS server context for HTTP/2 (ALPN ``h2``, TLS 1.2 or later) holding the PEM pair.

    ``ssl`` loads certificates from files only: the pair passes through a private temporary
    directory that is gone when this returns.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory(prefix="infergate-tls-") as tmp:
        crt_file, key_file = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        crt_file.write_bytes(cert)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        try:
            ctx.load_cert_chain(crt_file, key_file)
        except ssl.SSLError as exc:
            raise ConfigError(f"the picker's TLS certificate and key do not load: {exc}") from exc
    return ctx


def self_signed_pair(common_name: str, *, hosts: tuple[str, ...] = ("localhost",)) -> tuple[bytes, bytes]:
    """A fresh EC P-256 key and a one-year self-signed certificate naming ``hosts``."""
    try:
        return _with_cryptography(common_name, hosts)
    except ImportError:
        return _with_openssl(common_name, hosts)


def _with_cryptography(common_name: str, hosts: tuple[str, ...]) -> tuple[bytes, bytes]:
    from cryptography import x509  # type: ignore[import-not-found, unused-ignore]
    from cryptography.hazmat.primitives import hashes, serialization  # type: ignore[import-not-found, unused-ignore]
    from cryptography.hazmat.primitives.asymmetric import ec  # type: ignore[import-not-found, unused-ignore]
    from cryptography.x509.oid import NameOID  # type: ignore[import-not-found, unused-ignore]

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    sans: list[object] = []
    for h in dict.fromkeys(hosts):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return bytes(cert.public_bytes(serialization.Encoding.PEM)), bytes(key_pem)


def _with_openssl(common_name: str, hosts: tuple[str, ...]) -> tuple[bytes, bytes]:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ConfigError("TLS for the picker needs the 'cryptography' package or the 'openssl' tool")
    sans = []
    for h in dict.fromkeys(hosts):
        try:
            ipaddress.ip_address(h)
            sans.append(f"IP:{h}")
        except ValueError:
            sans.append(f"DNS:{h}")
    with tempfile.TemporaryDirectory(prefix="infergate-tls-") as tmp:
        crt, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        cmd = [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "365",
            "-subj", f"/CN={common_name}", "-addext", f"subjectAltName={','.join(sans)}",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, check=False, timeout=30)
        if done.returncode != 0:
            raise ConfigError(f"openssl could not make a certificate: {done.stderr.decode(errors='replace')}")
        return crt.read_bytes(), key.read_bytes()
