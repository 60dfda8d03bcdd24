"""Reference configurations folded into infergate's plugins before they are checked.

The reference splits work between producers (which compute or index something) and the scorers
that read it; infergate's scorers do both. These functions rewrite a parsed configuration so that
each producer's parameters land on the scorer that reads it, refusing, by name, what would
otherwise be dropped or change nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from infergate.errors import ConfigError

if TYPE_CHECKING:
    from infergate.config.picker import EndpointPickerConfig

__all__ = ["fold_burst_producer", "fold_precise_producer", "fold_prefix_producer"]

PREFIX_PRODUCER = "approx-prefix-cache-producer"
PREFIX_SCORER = "prefix-cache-scorer"


def fold_prefix_producer(config: EndpointPickerConfig) -> EndpointPickerConfig:
    """Give the ``approx-prefix-cache-producer``'s parameters to the ``prefix-cache-scorer``.

    The reference splits hashing (producer) from scoring; infergate hashes inside the scorer, so the
    producer's parameters (block size, LRU capacity, ...) are the scorer's. A scorer with parameters
    of its own that differ is refused rather than one set being silently dropped.
    """
    producers = [p for p in config.plugins if p.type == PREFIX_PRODUCER]
    if len(producers) > 1:
        names = ", ".join(p.ref for p in producers)
        raise ConfigError(f"plugins: several {PREFIX_PRODUCER} plugins ({names}); infergate keeps one index")
    if not producers or not producers[0].parameters:
        return config
    wanted = dict(producers[0].parameters)
    plugins = []
    for p in config.plugins:
        if p.type == PREFIX_SCORER:
            if p.parameters and dict(p.parameters) != wanted:
                raise ConfigError(
                    f"plugins[{p.ref}].parameters: differ from {PREFIX_PRODUCER} {producers[0].ref!r}'s; "
                    "infergate hashes prompts inside prefix-cache-scorer, so give the parameters once"
                )
            p = p.model_copy(update={"parameters": wanted})
        plugins.append(p)
    return config.model_copy(update={"plugins": plugins})


BURST_PRODUCER = "burst-prefix-cache-producer"
BURST_SCORER = "burst-prefix-cache-scorer"
PRODUCER_NAME = "prefixMatchInfoProducerName"


def fold_burst_producer(config: EndpointPickerConfig) -> EndpointPickerConfig:
    """llm-d-router v0.10's burst pipeline: a ``prefix-cache-scorer`` naming a
    ``burst-prefix-cache-producer`` in ``prefixMatchInfoProducerName`` becomes infergate's
    ``burst-prefix-cache-scorer`` (same name, so profiles still refer to it), which scores the
    producer's window assignment. Runs before :func:`fold_prefix_producer`, so an approximate
    producer's parameters never land on it.

    Refused by name: such a scorer with parameters of its own (they would be ignored: it scores
    the assignment, not a prefix index), a producer no scorer names (its window would delay every
    request for nothing), and several producers (the Director holds one window).
    """
    producers = [p.ref for p in config.plugins if p.type == BURST_PRODUCER]
    if not producers:
        return config
    if len(producers) > 1:
        raise ConfigError(
            f"plugins: several {BURST_PRODUCER} plugins ({', '.join(producers)}); infergate holds "
            "requests in one window"
        )
    plugins = []
    named = False
    for p in config.plugins:
        if p.type == PREFIX_SCORER and p.parameters.get(PRODUCER_NAME) == producers[0]:
            other = sorted(k for k in p.parameters if k != PRODUCER_NAME)
            if other:
                raise ConfigError(
                    f"plugins[{p.ref}].parameters.{other[0]}: a {PREFIX_SCORER} reading the "
                    f"{BURST_PRODUCER} scores its window's assignment only; remove it"
                )
            p = p.model_copy(update={"type": BURST_SCORER, "name": p.ref})
            named = True
        plugins.append(p)
    if not named:
        raise ConfigError(
            f"plugins[{producers[0]}]: a {BURST_PRODUCER} no {PREFIX_SCORER} names in "
            f"{PRODUCER_NAME} would hold requests for nothing; name it there or remove it"
        )
    return config.model_copy(update={"plugins": plugins})


PRECISE_PRODUCER = "precise-prefix-cache-producer"
PRECISE_SCORER = "precise-prefix-cache-scorer"
EVENT_SOURCE = "endpoint-notification-source"
TOKEN_PRODUCER = "token-producer"


def fold_precise_producer(config: EndpointPickerConfig) -> EndpointPickerConfig:
    """llm-d-router v0.10's split precise pipeline as infergate's one plugin.

    Upstream, ``precise-prefix-cache-producer`` keeps the KV-event index (fed by an
    ``endpoint-notification-source`` in ``dataLayer``) and a ``prefix-cache-scorer`` naming it in
    ``prefixMatchInfoProducerName`` scores from it; infergate's ``precise-prefix-cache-scorer``
    does both. So each scorer naming a producer becomes a ``precise-prefix-cache-scorer`` with
    the producer's parameters (plus its own, which must not contradict them), the producer
    leaves ``plugins``, and the event source leaves ``dataLayer``. A producer no scorer names,
    and an event source or ``token-producer`` with no precise scorer to feed, are refused: they
    would change nothing. A ``token-producer`` also feeds a ``burst-prefix-cache-scorer``'s
    producer (:func:`fold_burst_producer` ran first), which hashes the rendered ids.
    """
    producers = {p.ref: p for p in config.plugins if p.type == PRECISE_PRODUCER}
    plugins = []
    used: set[str] = set()
    for p in config.plugins:
        if p.type == PRECISE_PRODUCER:
            continue
        wanted = p.parameters.get("prefixMatchInfoProducerName") if p.type == PREFIX_SCORER else None
        if wanted is not None and wanted in producers:
            own = {k: v for k, v in p.parameters.items() if k != "prefixMatchInfoProducerName"}
            given = dict(producers[wanted].parameters)
            clash = sorted(k for k in own if k in given and own[k] != given[k])
            if clash:
                raise ConfigError(
                    f"plugins[{p.ref}].parameters.{clash[0]}: differs from {PRECISE_PRODUCER} "
                    f"{wanted!r}'s; infergate's {PRECISE_SCORER} takes one set of parameters"
                )
            # the scorer keeps its name: profiles refer to it by that
            p = p.model_copy(update={"type": PRECISE_SCORER, "name": p.ref, "parameters": {**given, **own}})
            used.add(wanted)
        plugins.append(p)
    for name in producers.keys() - used:
        raise ConfigError(
            f"plugins[{name}]: a {PRECISE_PRODUCER} no prefix-cache-scorer names in "
            "prefixMatchInfoProducerName would score nothing; name it there or remove it"
        )
    precise = any(p.type == PRECISE_SCORER for p in plugins)
    burst = any(p.type == BURST_SCORER for p in plugins)
    for p in plugins:
        if p.type == EVENT_SOURCE and not precise:
            raise ConfigError(
                f"plugins[{p.ref}]: a {p.type} feeds only {PRECISE_SCORER} (or a prefix-cache-scorer "
                f"reading a {PRECISE_PRODUCER}), which this config does not have; remove it"
            )
        if p.type == TOKEN_PRODUCER and not (precise or burst):
            raise ConfigError(
                f"plugins[{p.ref}]: a {p.type} feeds only {PRECISE_SCORER} (or a prefix-cache-scorer "
                f"reading a {PRECISE_PRODUCER} or a {BURST_PRODUCER}), which this config does not "
                "have; remove it"
            )
    if len([p for p in plugins if p.type == TOKEN_PRODUCER]) > 1:
        raise ConfigError(f"plugins: several {TOKEN_PRODUCER} plugins; infergate renders with one")
    data_layer = config.data_layer
    if data_layer is not None and isinstance(data_layer.get("sources"), list):
        events = {p.ref for p in plugins if p.type == EVENT_SOURCE}
        kept = []
        for i, source in enumerate(data_layer["sources"]):
            if isinstance(source, Mapping) and source.get("pluginRef") in events:
                for j, extractor in enumerate(source.get("extractors") or []):
                    ref = extractor.get("pluginRef") if isinstance(extractor, Mapping) else None
                    if ref not in producers:
                        raise ConfigError(
                            f"dataLayer.sources[{i}].extractors[{j}].pluginRef: {ref!r}: an "
                            f"{EVENT_SOURCE} feeds only a {PRECISE_PRODUCER} here"
                        )
                continue  # the precise scorer subscribes to the events itself
            kept.append(source)
        data_layer = {**data_layer, "sources": kept}
    return config.model_copy(update={"plugins": plugins, "data_layer": data_layer})
