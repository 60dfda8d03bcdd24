"""Kubernetes resources the gateway reads: typed models, manifest loading and validation."""

from infergate.api.loader import ManifestSet, load_manifests
from infergate.api.workloads import DeploymentResource, LoraAdapterSpec, LoraSyncConfig, parse_lora_config

__all__ = [
    "DeploymentResource",
    "LoraAdapterSpec",
    "LoraSyncConfig",
    "ManifestSet",
    "load_manifests",
    "parse_lora_config",
]
