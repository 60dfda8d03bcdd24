"""Server certificates: the picker's gRPC port (a user-supplied pair or a self-signed one) and
the admin port's HTTPS (``--metrics-cert-dir``, optionally requiring client certificates).

The reference EPP serves TLS by default with a certificate it makes itself at start; Envoy's
ext_proc cluster accepts it because its validation context is empty. This module produces the
same thing without asking the user for anything: with the ``cryptography`` package when it is
installed, else with the ``openssl`` command line tool. Either listener reloads a pair rotated in
place (:class:`CertificateWatcher`).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path

from infergate.errors import ConfigError
from infergate.net.tls_options import GO_CIPHER_SUITES, TLS_VERSIONS

log = logging.getLogger("infergate.tls")

__all__ = [
    "CertificateWatcher",
    "https_context",
    "load_or_create_pair",
    "load_pair",
    "self_signed_pair",
    "server_context",
]


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


def server_context(
    cert: bytes, key: bytes, *, min_version: str | None = None, cipher_suites: tuple[str, ...] = ()
) -> ssl.SSLContext:
    """A TLS server context for HTTP/2 (ALPN ``h2``, TLS 1.2 or later, or ``min_version``)
    holding the PEM pair; ``cipher_suites`` (Go names) restrict TLS 1.2's suites."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[min_version] if min_version else ssl.TLSVersion.TLSv1_2
    if cipher_suites:
        ctx.set_ciphers(":".join(GO_CIPHER_SUITES[name] for name in cipher_suites))
    ctx.set_alpn_protocols(["h2"])
    load_pair(ctx, cert, key)
    return ctx


def https_context(cert_dir: Path, *, client_ca: Path | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ server context for HTTP/1.1 with ``cert_dir``'s ``tls.crt``/``tls.key``; with
    ``client_ca`` (PEM), a client must present a certificate one of its CAs signed (mTLS), as the
    reference's metrics endpoint asks with ``--metrics-client-ca-file``."""
    cert, key = load_or_create_pair(cert_dir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_pair(ctx, cert, key)
    if client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{client_ca}: no CA certificate loads from it: {exc}") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def load_pair(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """Put the PEM pair in ``ctx`` (again: later handshakes use the new one).

    ``ssl`` loads certificates from files only: the pair passes through a private temporary
    directory that is gone when this returns.
    """
    with tempfile.TemporaryDirectory(prefix="infergate-tls-") as tmp:
        crt_file, key_file = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        crt_file.write_bytes(cert)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        try:
            ctx.load_cert_chain(crt_file, key_file)
        except ssl.SSLError as exc:
            raise ConfigError(f"the TLS certificate and key do not load together: {exc}") from exc


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


class CertificateWatcher:
    """Loads ``cert_path``'s pair into a serving context again whenever ``tls.crt`` or ``tls.key``
    changes (cert-manager rotates them in place): new handshakes get the new certificate, open
    connections keep theirs (``--enable-cert-reload``). Polls the files' stamps every
    ``interval`` seconds; a half-written pair that does not load is tried again next round."""

    def __init__(
        self,
        context: ssl.SSLContext,
        cert_path: Path,
        *,
        host: str = "127.0.0.1",
        interval: float = 5.0,
        what: str = "picker",
    ) -> None:
        self.context = context
        self.cert_path = cert_path
        self.what = what
        self.host = host
        self.interval = interval
        self.reloads = 0
        self.certificate_pem: bytes | None = None
        self._seen = _stamp(cert_path)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check()

    def check(self) -> bool:
        """Reload if the files changed since the last load; True when it did."""
        now = _stamp(self.cert_path)
        if now == self._seen:
            return False
        try:
            cert, key = load_or_create_pair(self.cert_path, host=self.host)
            load_pair(self.context, cert, key)
        except (ConfigError, OSError) as exc:
            log.warning("%s certificate not reloaded: %s", self.what, exc)
            return False
        self._seen = now
        self.certificate_pem = cert
        self.reloads += 1
        log.info("%s certificate reloaded from %s", self.what, self.cert_path)
        return True


def _stamp(cert_path: Path) -> tuple[float, ...]:
    """What changes when the pair is replaced: each file's modification time, size and inode (a
    Kubernetes secret volume swaps the symlink they resolve through)."""
    out: list[float] = []
    for name in ("tls.crt", "tls.key"):
        try:
            st = (cert_path / name).stat()
        except OSError:
            out += [-1.0, -1.0, -1.0]
            continue
        out += [st.st_mtime, float(st.st_size), float(st.st_ino)]
    return tuple(out)
