"""The LoRA syncer's configuration file: the ``vLLMLoRAConfig`` document of the reference sidecar.

This module owns reading and validating that file. It deliberately does not share code with the
gateway's manifest loader (``infergate.api``): the syncer is a stand-alone sidecar that talks to a
model server over HTTP only, so a format drift between the two shows up as a failing test.

Format (the ``configmap.yaml`` key of the tutorial's ConfigMap)::

    vLLMLoRAConfig:
      name: vllm-llama3.1-8b-instruct        # optional
      host: localhost                        # default localhost
      port: 8000                             # default 8000
      defaultBaseModel: meta-llama/Llama-3.1-8B-Instruct
      ensureExist:    {models: [{id: food-review, source: Kawon/llama3.1-food-finetune_v14_r8}]}
      ensureNotExist: {models: [{id: old-adapter, source: some/path, base-model: optional}]}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["Adapter", "SyncerConfig", "load_config", "parse_config"]


@dataclass(frozen=True, slots=True)
class Adapter:
    """An adapter as the sidecar sees it; two adapters are the same adapter when their ids are equal."""

    id: str
    source: str
    base_model: str | None = None


@dataclass(frozen=True, slots=True)
class SyncerConfig:
    name: str | None
    host: str
    port: int
    default_base_model: str | None
    ensure_exist: tuple[Adapter, ...]
    ensure_not_exist: tuple[Adapter, ...]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    id: Annotated[str, Field(min_length=1)]
    source: Annotated[str, Field(min_length=1)]
    base_model: str | None = Field(default=None, alias="base-model")


class _Models(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[_Model] | None = None


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str | None = None
    host: str = "localhost"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    default_base_model: str | None = Field(default=None, alias="defaultBaseModel")
    ensure_exist: _Models | None = Field(default=None, alias="ensureExist")
    ensure_not_exist: _Models | None = Field(default=None, alias="ensureNotExist")


class _Root(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vLLMLoRAConfig: _Config  # the wire name


def _loc(parts: tuple[int | str, ...]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(document)"


def parse_config(text: str, *, source: str = "<config>") -> SyncerConfig:
    """Parse the document; ``ValueError`` names the source, the field path and the reason."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: invalid YAML: {exc}") from exc
    try:
        cfg = _Root.model_validate(doc).vLLMLoRAConfig
    except ValidationError as exc:
        reasons = [f"{source}: {_loc(tuple(e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)]
        raise ValueError("\n".join(reasons)) from exc

    def adapters(group: _Models | None) -> tuple[Adapter, ...]:
        models = group.models if group is not None and group.models is not None else []
        return tuple(Adapter(m.id, m.source, m.base_model or cfg.default_base_model) for m in models)

    return SyncerConfig(
        name=cfg.name,
        host=cfg.host,
        port=cfg.port,
        default_base_model=cfg.default_base_model,
        ensure_exist=adapters(cfg.ensure_exist),
        ensure_not_exist=adapters(cfg.ensure_not_exist),
    )


def load_config(path: Path) -> SyncerConfig:
    """Read and parse the file; ``ValueError`` if it cannot be read or is invalid."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read: {exc}") from exc
    return parse_config(text, source=str(path))
