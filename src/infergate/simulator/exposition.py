"""The Prometheus text format (0.0.4) of a registry, byte for byte what ``generate_latest`` writes.

Why not ``generate_latest`` itself: it validates and escapes every label name of every sample on
every scrape, about 17 µs per sample line; a simulated vLLM exposes ~320 lines, so one scrape cost
5-8 ms of CPU, and a benchmark with several gateways scraping one replica every 50 ms left the
replica too busy to serve (`bench/bench_dataplane.py`). The label part of a line depends only on
the sample's name and labels, which repeat from scrape to scrape, so it is formatted once and
cached; values are formatted as ``generate_latest`` formats them. A test holds the two equal.

Only what the simulator's registry holds is supported: legacy-valid metric and label names (the
``vllm:`` colon is legacy-valid), no timestamps, no exemplars.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

_format_value = cast(Callable[[float], str], floatToGoString)  # Go's float formatting, as Prometheus

__all__ = ["render_text"]

_MUNGE = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}
_OM_SUFFIXES = ("_created", "_gsum", "_gcount")
# (sample name, its labels in collection order) -> "name{k="v",...}"; bounded by the label sets
# a registry holds, which for the simulator is fixed once its model and adapters are known
_PREFIXES: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
_MAX_PREFIXES = 65536


def _escape_value(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _prefix(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{_escape_value(v)}"' for k, v in sorted(labels))
    return f"{name}{{{inner}}}"


def render_text(registry: Collector) -> bytes:
    """``registry`` in the text format, as ``prometheus_client.generate_latest(registry)``."""
    out: list[str] = []
    cache = _PREFIXES
    if len(cache) > _MAX_PREFIXES:
        cache.clear()
    for metric in registry.collect():
        name, mtype = metric.name, metric.type
        if mtype == "counter":
            exposed = name + "_total"
        elif mtype == "info":
            exposed = name + "_info"
        else:
            exposed = name
        mtype = _MUNGE.get(mtype, mtype)
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {exposed} {doc}\n# TYPE {exposed} {mtype}\n")
        om: dict[str, list[str]] = {}
        om_names = {name + suffix: suffix for suffix in _OM_SUFFIXES}
        for s in metric.samples:
            if s.timestamp is not None or s.exemplar is not None:
                raise ValueError(f"sample {s.name} has a timestamp or exemplar: not supported here")
            key = (s.name, tuple(s.labels.items()))
            prefix = cache.get(key)
            if prefix is None:
                prefix = cache[key] = _prefix(s.name, key[1])
            line = f"{prefix} {_format_value(s.value)}\n"
            suffix = om_names.get(s.name)
            if suffix is None:
                out.append(line)
            else:
                om.setdefault(suffix, []).append(line)
        for suffix, lines in sorted(om.items()):
            out.append(f"# HELP {name}{suffix} {doc}\n# TYPE {name}{suffix} gauge\n")
            out.extend(lines)
    return "".join(out).encode("utf-8")
