"""API keys for the inference listener: loading them (file or Kubernetes Secret) and checking them.

This module owns :class:`ApiKeyStore`, the concrete :class:`~infergate.requestcontrol.access.Authenticator`
the Director calls. Keys come from

* a key file (``--api-keys FILE``, YAML or JSON): a mapping ``key: "*"`` or ``key: [objective, ...]``
  (a comma-separated string works too), or ``key: {objectives: ..., control_headers: true}`` for a
  key that may also send the control headers (objective, model rewrite, fairness id);
* Kubernetes ``Secret`` manifests, either in that file or among the ``-f`` manifests when labelled
  ``infergate.dev/api-keys: "true"``: every ``data`` entry (base64) or ``stringData`` entry is one
  key, allowed the objectives in the annotation ``infergate.dev/objectives`` (default ``*``), or in
  ``infergate.dev/objectives.<entry>`` for that entry alone; likewise
  ``infergate.dev/control-headers[.<entry>]: "true"`` grants the control-headers permission.

Keys are stored only as SHA-256 digests and compared with :func:`hmac.compare_digest` against every
entry (no early exit), so neither timing nor logs reveal them; principals are named by the Secret
entry or file position, never by the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from infergate.api.loader import expand_lists
from infergate.errors import AuthenticationError, ConfigError
from infergate.requestcontrol.access import Principal, presented_key

__all__ = [
    "API_KEYS_LABEL",
    "CONTROL_HEADERS_ANNOTATION",
    "OBJECTIVES_ANNOTATION",
    "ApiKey",
    "ApiKeyStore",
    "api_keys_from_manifests",
    "load_api_keys",
]

API_KEYS_LABEL = "infergate.dev/api-keys"
OBJECTIVES_ANNOTATION = "infergate.dev/objectives"
CONTROL_HEADERS_ANNOTATION = "infergate.dev/control-headers"
_ANY = "*"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One accepted key: its digest, a loggable name and the objectives it may use (None: all)."""

    digest: bytes
    name: str
    objectives: frozenset[str] | None
    control_headers: bool = False

    def allows(self, objective: str) -> bool:
        return self.objectives is None or objective in self.objectives


@dataclass(frozen=True, slots=True)
class _Grant:
    """The Principal handed to the Director."""

    name: str
    objectives: frozenset[str] | None
    control_headers: bool = False

    def allows(self, objective: str) -> bool:
        return self.objectives is None or objective in self.objectives


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _objectives(value: object, where: str) -> frozenset[str] | None:
    """``"*"`` → None (all); a name, ``"a,b"`` or a list of names → that set."""
    if isinstance(value, str):
        names = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        names = [v.strip() for v in value if v.strip()]
    else:
        raise ConfigError(f'{where}: allowed objectives must be "*", a name or a list of names')
    if _ANY in names:
        return None
    if not names:
        raise ConfigError(f'{where}: no allowed objectives (use "*" for all)')
    return frozenset(names)


class ApiKeyStore:
    """The accepted keys; ``authenticate`` is the Director's 401 check."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = tuple(keys)
        if not self._keys:
            raise ConfigError("API keys: no keys configured (authentication would reject everything)")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, object], source: str = "API keys") -> ApiKeyStore:
        """Keys from ``{key: objectives}``; entries are named ``<source>#<n>``."""
        return cls(_mapping_keys(mapping, source))

    def __len__(self) -> int:
        return len(self._keys)

    def merged(self, other: ApiKeyStore) -> ApiKeyStore:
        return ApiKeyStore(self._keys + other._keys)

    def match(self, key: str) -> ApiKey | None:
        """The entry for ``key``; every entry is compared, in constant time each."""
        digest = _digest(key)
        found: ApiKey | None = None
        for entry in self._keys:
            if hmac.compare_digest(digest, entry.digest) and found is None:
                found = entry
        return found

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        key = presented_key(headers)
        if key is None:
            raise AuthenticationError(
                "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
                code="missing_api_key",
            )
        entry = self.match(key)
        if entry is None:
            raise AuthenticationError("invalid API key")
        return _Grant(entry.name, entry.objectives, entry.control_headers)


def _mapping_keys(mapping: Mapping[str, object], source: str) -> list[ApiKey]:
    out: list[ApiKey] = []
    for n, (key, allowed) in enumerate(mapping.items(), start=1):
        where = f"{source}: entry {n}"
        if not isinstance(key, str) or not key.strip():
            raise ConfigError(f"{where}: a key must be a non-empty string")
        if key != key.strip() or any(c.isspace() for c in key):
            raise ConfigError(f"{where}: a key must not contain whitespace")
        control = False
        if isinstance(allowed, dict):
            unknown = set(allowed) - {"objectives", "control_headers"}
            if unknown:
                raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
            control = _flag(allowed.get("control_headers", False), f"{where}: control_headers")
            allowed = allowed.get("objectives", _ANY)
        out.append(ApiKey(_digest(key), f"{source}#{n}", _objectives(allowed, where), control))
    return out


def _flag(value: object, where: str) -> bool:
    """A boolean setting: YAML true/false, or the strings "true"/"false" (annotations)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"{where}: must be true or false (got {value!r})")


def _secret_keys(doc: Mapping[str, Any], source: str) -> list[ApiKey]:
    """The keys of one ``Secret``: ``data`` (base64) and ``stringData`` entries."""
    meta = doc.get("metadata") or {}
    name = meta.get("name", "(unnamed)") if isinstance(meta, dict) else "(unnamed)"
    where = f"{source}: Secret/{name}"
    annotations = meta.get("annotations") or {} if isinstance(meta, dict) else {}
    if not isinstance(annotations, dict):
        raise ConfigError(f"{where}: metadata.annotations must be a mapping")
    default = _objectives(annotations.get(OBJECTIVES_ANNOTATION, _ANY), f"{where}: {OBJECTIVES_ANNOTATION}")
    entries: dict[str, str] = {}
    for section, encoded in (("data", True), ("stringData", False)):
        values = doc.get(section) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: {section} must be a mapping")
        for entry, value in values.items():
            if not isinstance(value, str):
                raise ConfigError(f"{where}: {section}.{entry} must be a string")
            if encoded:
                try:
                    value = base64.b64decode(value, validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    raise ConfigError(f"{where}: data.{entry} is not base64-encoded UTF-8") from None
            entries[str(entry)] = value.strip()
    out: list[ApiKey] = []
    for entry, key in entries.items():
        if not key or any(c.isspace() for c in key):
            raise ConfigError(f"{where}: {entry}: a key must be non-empty and without whitespace")
        scoped = annotations.get(f"{OBJECTIVES_ANNOTATION}.{entry}")
        allowed = default if scoped is None else _objectives(scoped, f"{where}: {entry}")
        control = annotations.get(
            f"{CONTROL_HEADERS_ANNOTATION}.{entry}", annotations.get(CONTROL_HEADERS_ANNOTATION, "false")
        )
        flag = _flag(control, f"{where}: {entry}: {CONTROL_HEADERS_ANNOTATION}")
        out.append(ApiKey(_digest(key), f"{name}/{entry}", allowed, flag))
    return out


def _is_secret(doc: object) -> bool:
    return isinstance(doc, dict) and doc.get("kind") == "Secret"


def _load_documents(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            return [json.loads(text)]
        # `kind: List` (kubectl get -o yaml) is expanded as the manifest loader does.
        return [o for d in yaml.safe_load_all(text) if d is not None for o in expand_lists(d)]
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read API keys: {exc}") from None


def load_api_keys(path: Path) -> ApiKeyStore:
    """Keys from ``path``: a ``key: objectives`` mapping, or one or more ``Secret`` documents."""
    docs = _load_documents(path)
    if docs and all(_is_secret(d) for d in docs):
        return ApiKeyStore(k for d in docs for k in _secret_keys(d, str(path)))
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise ConfigError(f"{path}: expected a mapping of key → allowed objectives, or Secret manifests")
    return ApiKeyStore.from_mapping(docs[0], str(path))


def _manifest_files(paths: Sequence[Path]) -> Iterator[Path]:
    for p in paths:
        if p.is_dir():
            # as the manifest loader reads a directory: its own *.yaml / *.yml files
            yield from sorted(f for f in p.iterdir() if f.is_file() and f.suffix in {".yaml", ".yml"})
        elif p.is_file():
            yield p


def api_keys_from_manifests(paths: Sequence[Path]) -> ApiKeyStore | None:
    """Keys from the ``Secret`` manifests labelled ``infergate.dev/api-keys: "true"``; None if none."""
    keys: list[ApiKey] = []
    for f in _manifest_files(paths):
        for doc in _load_documents(f):
            if not _is_secret(doc):
                continue
            meta = doc.get("metadata") or {}
            labels = meta.get("labels") or {} if isinstance(meta, dict) else {}
            if isinstance(labels, dict) and str(labels.get(API_KEYS_LABEL, "")).lower() == "true":
                keys.extend(_secret_keys(doc, str(f)))
    return ApiKeyStore(keys) if keys else None
