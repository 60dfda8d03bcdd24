"""The scheduling engine: turns an ``EndpointPickerConfig`` into a :class:`Scheduler` and runs cycles.

``scheduler`` loads plugins through a registry (two phases, errors name the plugin) and assembles
profiles from what each plugin type was registered for; ``profile`` runs filters, weighted and
clamped scorers, the picker and PostPick hooks, timing each; ``decisions`` keeps recent results for
the live view. The engine, not the plugins, owns weights, clamping, metrics and endpoint departure.

May import: ``scheduling.sdk``, ``scheduling.plugins`` (the default registry and picker), core types.
"""
