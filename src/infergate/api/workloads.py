"""Model-server workloads: the Deployment that runs vLLM and the ConfigMap of its LoRA sidecar.

This module owns reading a Deployment the way ``infergate up`` needs it (replicas, pod labels, the
vLLM command line reduced to vLLM's own flags, literal env values, container port, which ConfigMap
the LoRA syncer sidecar mounts) and parsing the sidecar's ``vLLMLoRAConfig`` document.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from typing import Annotated, Any, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field

from infergate.api.resources import _Object, _Open

__all__ = [
    "ConfigMapResource",
    "Container",
    "DeploymentResource",
    "LoraAdapterSpec",
    "LoraSyncConfig",
    "parse_lora_config",
]

_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_SHELLS = frozenset({"sh", "bash", "/bin/sh", "/bin/bash", "/usr/bin/sh", "/usr/bin/bash", "dash"})
_PYTHONS = re.compile(r"^(?:.*/)?python(?:3(?:\.\d+)?)?$")
_VLLM_MODULES = frozenset({"vllm.entrypoints.openai.api_server", "vllm.entrypoints.api_server", "vllm"})


class EnvVar(_Open):
    name: str
    value: str | None = None
    value_from: dict[str, Any] | None = None


class ContainerPort(_Open):
    container_port: Annotated[int, Field(ge=1, le=65535)]
    name: str | None = None
    protocol: str = "TCP"


class VolumeMount(_Open):
    name: str
    mount_path: str
    sub_path: str | None = None


class Container(_Open):
    name: str
    image: str = ""
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)
    ports: list[ContainerPort] = Field(default_factory=list)
    volume_mounts: list[VolumeMount] = Field(default_factory=list)

    @property
    def is_lora_syncer(self) -> bool:
        return "lora-syncer" in self.image or ("lora" in self.name and "sync" in self.name)

    @property
    def is_pd_sidecar(self) -> bool:
        """llm-d's P/D routing sidecar (``llm-d-routing-sidecar``) or ``infergate pd-sidecar``."""
        words = (self.image, self.name, *self.command, *self.args)
        return any("routing-sidecar" in w or "pd-sidecar" in w for w in words) or self.name == "routing-proxy"

    @property
    def runs_vllm(self) -> bool:
        return "vllm" in self.image or any("vllm" in part for part in (*self.command, *self.args))

    def env_value(self, name: str) -> str | None:
        for var in self.env:
            if var.name == name:
                return var.value
        return None


class ConfigMapRef(_Open):
    name: str


class Volume(_Open):
    name: str
    config_map: ConfigMapRef | None = None


class PodSpec(_Open):
    containers: list[Container] = Field(min_length=1)
    init_containers: list[Container] = Field(default_factory=list)
    volumes: list[Volume] = Field(default_factory=list)


class PodTemplateMeta(_Open):
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class PodTemplate(_Open):
    metadata: PodTemplateMeta = PodTemplateMeta()
    spec: PodSpec


class DeploymentSpec(_Open):
    replicas: Annotated[int, Field(ge=0)] = 1
    selector: dict[str, Any] = Field(default_factory=dict)
    template: PodTemplate


class DeploymentResource(_Object):
    """``apps/v1`` Deployment of a model server (vLLM container + optional LoRA syncer sidecar)."""

    spec: DeploymentSpec

    @property
    def replicas(self) -> int:
        return self.spec.replicas

    @property
    def pod_labels(self) -> dict[str, str]:
        return dict(self.spec.template.metadata.labels)

    def _all_containers(self) -> list[Container]:
        return [*self.spec.template.spec.containers, *self.spec.template.spec.init_containers]

    def vllm_container(self) -> Container:
        """The container that runs the model server: the first one mentioning vLLM, else the first."""
        containers = [
            c for c in self.spec.template.spec.containers if not c.is_lora_syncer and not c.is_pd_sidecar
        ]
        for c in containers:
            if c.runs_vllm:
                return c
        return containers[0] if containers else self.spec.template.spec.containers[0]

    def pd_sidecar_container(self) -> Container | None:
        """The P/D sidecar in front of the model server (decode pods), if the pod runs one."""
        for c in self._all_containers():
            if c.is_pd_sidecar:
                return c
        return None

    def lora_syncer_container(self) -> Container | None:
        for c in self._all_containers():
            if c.is_lora_syncer:
                return c
        return None

    def vllm_argv(self) -> list[str]:
        """vLLM's own flags from the container's command line (see :func:`vllm_flags`)."""
        c = self.vllm_container()
        return vllm_flags([*c.command, *c.args])

    def vllm_env(self) -> dict[str, str]:
        """Env vars with literal values; ``valueFrom`` (secrets, fields) cannot be resolved locally."""
        return {v.name: v.value for v in self.vllm_container().env if v.value is not None}

    @property
    def container_port(self) -> int:
        """The vLLM container's first declared port, else its ``--port`` flag, else vLLM's 8000."""
        c = self.vllm_container()
        if c.ports:
            return c.ports[0].container_port
        argv = self.vllm_argv()
        for i, arg in enumerate(argv):
            if arg == "--port" and i + 1 < len(argv) and argv[i + 1].isdigit():
                return int(argv[i + 1])
            if arg.startswith("--port=") and arg[7:].isdigit():
                return int(arg[7:])
        return 8000

    def lora_configmap(self) -> str | None:
        """Name of the ConfigMap mounted by the LoRA syncer sidecar, if there is one."""
        syncer = self.lora_syncer_container()
        if syncer is None:
            return None
        by_volume = {v.name: v.config_map.name for v in self.spec.template.spec.volumes if v.config_map}
        for mount in syncer.volume_mounts:
            if mount.name in by_volume:
                return by_volume[mount.name]
        return None

    def lora_config_key(self) -> str:
        """ConfigMap data key the sidecar reads (``DYNAMIC_LORA_ROLLOUT_CONFIG``, default as upstream)."""
        syncer = self.lora_syncer_container()
        path = (
            syncer.env_value("DYNAMIC_LORA_ROLLOUT_CONFIG") if syncer else None
        ) or "/config/configmap.yaml"
        return posixpath.basename(path) or "configmap.yaml"

    def lora_syncer_argv(
        self, config_file: str, *, host: str = "127.0.0.1", port: int | None = None
    ) -> list[str]:
        """Arguments of ``infergate`` that run this pod's LoRA sidecar locally against one replica.

        ``config_file`` holds the ConfigMap value (:attr:`LoraSyncConfig.text`); ``port`` defaults to
        the container port. Host and port are passed as flags so the file can stay verbatim.
        """
        return [
            "lora-syncer",
            "--config",
            str(config_file),
            "--host",
            host,
            "--port",
            str(port if port is not None else self.container_port),
        ]


def vllm_flags(argv: list[str]) -> list[str]:
    """Reduce a container command line to vLLM's flags.

    Handles ``["sh", "-c", "VAR=x python3 -m vllm.entrypoints.openai.api_server --model M ..."]``
    (the tutorial), ``["vllm", "serve", "M", ...]`` (the model becomes ``--model M``), and bare flag
    lists given to the vllm-openai image's entrypoint. Leading ``VAR=value`` words, ``exec`` and the
    launcher are dropped; of ``a && b`` chains the part that starts vLLM is kept.
    """
    words = list(argv)
    if len(words) >= 2 and words[0] in _SHELLS and words[1] == "-c":
        script = " ".join(words[2:])
        words = shlex.split(script, comments=True)
        segments: list[list[str]] = [[]]
        for w in words:
            if w in {"&&", ";", "||"}:
                segments.append([])
            else:
                segments[-1].append(w)
        words = next((s for s in segments if any("vllm" in w for w in s)), segments[-1])
    while words and (_ENV_ASSIGNMENT.match(words[0]) or words[0] in {"exec", "env"}):
        words.pop(0)
    if len(words) >= 3 and _PYTHONS.match(words[0]) and words[1] == "-m" and words[2] in _VLLM_MODULES:
        words = words[3:]
        if words[:1] == ["serve"]:
            words = words[1:]
    elif words and posixpath.basename(words[0]) == "vllm":
        words = words[1:]
        if words[:1] == ["serve"]:
            words = words[1:]
    if words and not words[0].startswith("-"):
        words = ["--model", words[0], *words[1:]]
    return words


class ConfigMapResource(_Object):
    """``v1`` ConfigMap; of interest when one of its values is a ``vLLMLoRAConfig`` document."""

    data: dict[str, str] = Field(default_factory=dict)


# --------------------------------------------------------------------------- vLLMLoRAConfig


class LoraAdapterSpec(NamedTuple):
    """One adapter: the name clients use, where vLLM loads it from, and its base model."""

    id: str
    source: str
    base_model: str | None


class _LoraModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    id: Annotated[str, Field(min_length=1)]
    source: Annotated[str, Field(min_length=1)]
    base_model: str | None = Field(default=None, alias="base-model")


class _LoraModels(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[_LoraModel] = Field(default_factory=list)


class _LoraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str | None = None
    host: str = "localhost"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    default_base_model: str | None = Field(default=None, alias="defaultBaseModel")
    ensure_exist: _LoraModels = Field(default_factory=_LoraModels, alias="ensureExist")
    ensure_not_exist: _LoraModels = Field(default_factory=_LoraModels, alias="ensureNotExist")


class _LoraRoot(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vLLMLoRAConfig: _LoraConfig  # the wire name


class LoraSyncConfig(BaseModel):
    """A parsed ``vLLMLoRAConfig`` plus where it came from (``text`` is the document verbatim)."""

    model_config = ConfigDict(frozen=True)

    name: str | None
    host: str
    port: int
    default_base_model: str | None
    ensure_exist: list[LoraAdapterSpec]
    ensure_not_exist: list[LoraAdapterSpec]
    key: str = "configmap.yaml"
    text: str = ""


def is_lora_document(text: str) -> bool:
    """True when a ConfigMap value is YAML with a top-level ``vLLMLoRAConfig`` key."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return "vLLMLoRAConfig" in text
    return isinstance(doc, dict) and "vLLMLoRAConfig" in doc


def parse_lora_config(text: str, *, key: str = "configmap.yaml") -> LoraSyncConfig:
    """Parse and validate one ``vLLMLoRAConfig`` document.

    Raises ``ValueError`` (YAML errors) or pydantic's ``ValidationError`` (schema); the loader turns
    both into a ConfigError naming the ConfigMap and field.
    """
    doc = yaml.safe_load(text)
    root = _LoraRoot.model_validate(doc)
    cfg = root.vLLMLoRAConfig

    def specs(models: _LoraModels) -> list[LoraAdapterSpec]:
        return [
            LoraAdapterSpec(m.id, m.source, m.base_model or cfg.default_base_model) for m in models.models
        ]

    return LoraSyncConfig(
        name=cfg.name,
        host=cfg.host,
        port=cfg.port,
        default_base_model=cfg.default_base_model,
        ensure_exist=specs(cfg.ensure_exist),
        ensure_not_exist=specs(cfg.ensure_not_exist),
        key=key,
        text=text,
    )
