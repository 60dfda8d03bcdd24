"""The units the reference picker's config writes sizes and times in, read as numbers.

GIE's ``EndpointPickerConfig`` takes capacities as Kubernetes resource quantities
(``flowControl.maxBytes: 10Gi``) and times as Go duration strings (``defaultRequestTTL: 60s``,
``metricsStalenessThreshold: 200ms``). Parsing them knows nothing of the sections that hold them,
so it lives apart from ``picker_sections``, which maps those sections onto infergate's settings
and names the field when a value does not parse (these functions raise a plain ``ValueError``).
"""

from __future__ import annotations

import re

__all__ = ["parse_go_duration", "parse_metric_selector", "parse_quantity"]


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_FACTORS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_quantity(value: object) -> int:
    """A Kubernetes resource quantity (``500``, ``1k``, ``10Gi``) as a whole number; ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"expected a quantity such as 100, 1k or 10Gi (got {value!r})")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must be >= 0 (got {value!r})")
        return value
    m = _QUANTITY.match(str(value).strip())
    if m is None:
        raise ValueError(f"expected a quantity such as 100, 1k or 10Gi (got {value!r})")
    amount = float(m.group(1)) * _FACTORS[m.group(2)]
    if amount != int(amount):
        raise ValueError(f"must be a whole number (got {value!r})")
    return int(amount)


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(value: object) -> float:
    """Seconds of a Go duration string (``200ms``, ``60s``, ``1m30s``); ValueError."""
    text = str(value).strip()
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"expected a duration such as 200ms, 60s or 1m (got {value!r})")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_SELECTOR = re.compile(r"^\s*([^\s{}]+)\s*(?:\{([^}]*)\})?\s*$")
_LABEL_PAIR = re.compile(r'^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*(?:"([^"]*)"|([^",}\s]+))\s*$')


def parse_metric_selector(value: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A Prometheus instant-vector selector as ``core-metrics-extractor``'s specs write it
    (``family`` or ``family{label=value,label="value"}``, exact matches only): the family name
    and the sorted label pairs; ValueError for anything else."""
    m = _SELECTOR.match(value)
    if m is None or _METRIC_NAME.fullmatch(m.group(1)) is None:
        raise ValueError(f"not a metric selector such as name or name{{label=value}} (got {value!r})")
    labels: dict[str, str] = {}
    block = (m.group(2) or "").strip()
    for pair in block.split(",") if block else ():
        lm = _LABEL_PAIR.match(pair)
        if lm is None:
            raise ValueError(f"{value!r}: {pair.strip()!r} is not a label=value pair")
        labels[lm.group(1)] = lm.group(2) if lm.group(2) is not None else lm.group(3)
    return m.group(1), tuple(sorted(labels.items()))
