"""Gateway configuration: the scheduler's EndpointPickerConfig and the runtime settings."""

from infergate.config.picker import (
    EndpointPickerConfig,
    PluginRef,
    PluginSpec,
    ProfileSpec,
    default_picker_config,
    dump_picker_config,
    load_picker_config,
    parse_picker_config,
    reference_picker_config,
)
from infergate.config.settings import Settings

__all__ = [
    "EndpointPickerConfig",
    "PluginRef",
    "PluginSpec",
    "ProfileSpec",
    "Settings",
    "default_picker_config",
    "dump_picker_config",
    "load_picker_config",
    "parse_picker_config",
    "reference_picker_config",
]
