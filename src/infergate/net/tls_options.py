"""The reference picker's TLS option values (Go ``crypto/tls`` names) as Python's ``ssl`` knows them.

``--tls-min-version`` and ``--tls-cipher-suites`` take Go's names; the settings check them against
these tables before anything starts, and the picker's TLS context applies them.
"""

from __future__ import annotations

import ssl

__all__ = ["GO_CIPHER_SUITES", "TLS_VERSIONS"]

#: ``--tls-min-version`` values (Go's ``crypto/tls`` constant names, as the reference takes them).
TLS_VERSIONS = {
    "VersionTLS12": ssl.TLSVersion.TLSv1_2,
    "VersionTLS13": ssl.TLSVersion.TLSv1_3,
}
#: ``--tls-cipher-suites``: Go's names of the TLS 1.2 suites with forward secrecy and AEAD, as
#: OpenSSL names them (TLS 1.3's are not configurable, in Go as here).
GO_CIPHER_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
}
