"""Where settings come from: defaults < ``--settings FILE`` < ``INFERGATE_*`` env < command-line flags.

This module owns reading the layers (pydantic-settings' YAML and environment sources), merging them
in that order, validating the result once (every error names the setting and the layer it came
from) and remembering which layer gave each value, which ``--print-settings`` shows. Nothing here
knows about components: the composition root gets a finished :class:`Settings`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_settings import EnvSettingsSource, YamlConfigSettingsSource

from infergate.config.settings import ENV_PREFIX, Settings
from infergate.errors import ConfigError

__all__ = ["LoadedSettings", "field_paths", "load_settings", "merge", "nest", "validate"]

LAYERS = ("default", "file", "env", "flag")


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"scrape.interval": 1}`` -> ``{"scrape": {"interval": 1}}``."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        *groups, leaf = path.split(".")
        node = out
        for g in groups:
            node = node.setdefault(g, {})
        node[leaf] = value
    return out


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and _is_group(path):
            yield from _flatten(value, path + ".")
        else:
            yield path, value


def merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``top`` laid over it, group by group (a group is merged, a value replaced)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _groups() -> dict[str, type[BaseModel]]:
    groups: dict[str, type[BaseModel]] = {}
    for name, info in Settings.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            groups[name] = ann
    return groups


def _is_group(path: str) -> bool:
    return "." not in path and path in _groups()


def field_paths() -> list[str]:
    """Every setting as a dotted path (``data_plane``, ``scrape.interval``...), in model order."""
    groups = _groups()
    paths: list[str] = []
    for name in Settings.model_fields:
        if name in groups:
            paths.extend(f"{name}.{leaf}" for leaf in groups[name].model_fields)
        else:
            paths.append(name)
    return paths


@dataclass(frozen=True, slots=True)
class LoadedSettings:
    """The effective settings and, per dotted path, the layer that set it."""

    settings: Settings
    sources: Mapping[str, str]

    def describe(self) -> list[tuple[str, Any, str]]:
        """``(path, value, source)`` for every setting, in model order."""
        data = dict(_flatten(self.settings.model_dump(mode="json")))
        return [(p, data[p], self.sources.get(p, "default")) for p in field_paths()]

    def render(self) -> str:
        """The ``--print-settings`` text: one ``path = value  # source`` line per setting."""
        rows = self.describe()
        width = max(len(p) for p, _, _ in rows)
        lines = []
        for path, value, source in rows:
            shown = "null" if value is None else value
            lines.append(f"{path.ljust(width)} = {shown!s:<24} # {source}")
        return "\n".join(lines)


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"--settings {path}: no such file")
    try:
        data = YamlConfigSettingsSource(Settings, yaml_file=path)()
    except Exception as exc:  # yaml.YAMLError and friends: report, never a traceback
        raise ConfigError(f"--settings {path}: {exc}") from None
    return dict(data)


def _read_env(environ: Mapping[str, str] | None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    known_groups = _groups()
    for name in env:
        if not name.upper().startswith(ENV_PREFIX) or "__" not in name:
            continue
        group, _, leaf = name[len(ENV_PREFIX) :].lower().partition("__")
        model = known_groups.get(group)
        if model is None or leaf not in model.model_fields:
            raise ConfigError(f"environment: {name}: no such setting ({group}.{leaf})")
    source = EnvSettingsSource(Settings, case_sensitive=False)
    if environ is not None:
        source.env_vars = {k.lower(): v for k, v in environ.items()}
    return dict(source())


def load_settings(
    *,
    flags: Mapping[str, Any] | None = None,
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> LoadedSettings:
    """Merge the layers and validate once. ``flags`` and ``defaults`` (a command's own defaults, such
    as ``up`` binding 127.0.0.1) are dotted paths; ``None`` flag values mean "not given".

    Raises ConfigError naming each bad setting and the layer that set it.
    """
    layers: list[tuple[str, dict[str, Any]]] = [
        ("default", nest(defaults or {})),
        ("file", _read_file(file) if file is not None else {}),
        ("env", _read_env(environ)),
        ("flag", nest({k: v for k, v in (flags or {}).items() if v is not None})),
    ]
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, data in layers:
        merged = merge(merged, data)
        for path, _ in _flatten(data):
            sources[path] = name
    return LoadedSettings(settings=validate(merged, sources), sources=sources)


def validate(data: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> Settings:
    """``Settings`` from nested ``data``; raises ConfigError naming each bad setting (and its layer).

    A group's cross-field check names the field it refuses first in its message (``priority_bands:
    read only by ...``); the layer is that field's, not the group's (which no layer sets as such).
    """
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            path = ".".join(str(p) for p in err["loc"])
            reason = str(err["msg"]).removeprefix("Value error, ")
            where = ""
            if sources is not None:
                named = f"{path}.{reason.partition(':')[0]}"
                layer = sources.get(path) or sources.get(named) or sources.get(path.split(".")[0])
                where = f" ({layer or 'default'})"
            lines.append(f"settings: {path}{where}: {reason}")
        raise ConfigError("\n".join(lines)) from None
