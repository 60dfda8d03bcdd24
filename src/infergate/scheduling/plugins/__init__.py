"""The built-in scheduling plugins and ``registry.default_registry()``, which registers them by
their reference type names (filters, scorers, pickers, the header profile handler, accepted-inert
and refused reference types). Each plugin's docstring states its formula, inputs and parameters.

May import: ``scheduling.sdk`` and core types only: never the engine (an import-linter contract).
"""
