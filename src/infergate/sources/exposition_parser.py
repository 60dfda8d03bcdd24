"""Sample lines of the Prometheus text format, parsed with one regular expression per line.

The scraper reads a handful of sample lines per scrape (the dialect's families, cut out of the
page by :meth:`Dialect.sample_lines`). prometheus_client's parser walks every line character by
character in Python: about 60 µs per line, 0.5 ms for a vLLM page's eight lines, paid per
endpoint every scrape interval (20 times a second at the default 50 ms). Here a line costs a
regular-expression match and a ``float``; what the expression does not accept (quoted UTF-8
metric names, a value followed by more than a timestamp, anything malformed) is handed to
prometheus_client's parser, so every line yields the sample that parser yields, or none where it
raises. ``tests/unit/test_exposition_parser.py`` holds the two equal on generated lines.
"""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

__all__ = ["parse_sample_line", "parse_sample_lines"]

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_QUOTED = r'"[^"\\]*(?:\\.[^"\\]*)*"'  # a quoted string, backslash escapes unrolled (no per-character branch)
_LABEL = rf"[a-zA-Z_][a-zA-Z0-9_]*\s*=\s*{_QUOTED}"
_BLOCK = rf"\s*\{{\s*((?:{_LABEL}\s*,\s*)*(?:{_LABEL})?)\s*,?\s*\}}\s*"  # the label pairs, captured whole
# name, then the label block or a blank, the value and an optional timestamp
_LINE = re.compile(rf"\s*({_NAME})(?:{_BLOCK}|[ \t]\s*)(\S+)(?:[ \t]+(\S+))?\s*")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"([^"\\]*(?:\\.[^"\\]*)*)"')
_ESCAPE = re.compile(r'\\[\\n"]')
_UNESCAPED = {"\\\\": "\\", "\\n": "\n", '\\"': '"'}


def _unescape(match: re.Match[str]) -> str:
    return _UNESCAPED[match.group(0)]


def _number(token: str) -> float:
    """A value or timestamp as prometheus_client reads it: an int where ``int()`` takes it."""
    if "_" in token:
        raise ValueError(token)
    if token.lstrip("+-").isdecimal():  # what int() takes (without a raise for every float)
        return int(token)
    return float(token)


def _fallback(line: str) -> Sample | None:
    try:
        samples = [s for fam in text_string_to_metric_families(line + "\n") for s in fam.samples]
    except (ValueError, IndexError):  # it raises IndexError on some malformed label blocks
        return None
    return samples[0] if len(samples) == 1 else None


def parse_sample_line(line: str) -> Sample | None:
    """The sample on one line (no HELP/TYPE context: the name as written), or None if malformed."""
    m = _LINE.fullmatch(line)
    if m is None:
        return _fallback(line)
    name, block, value, stamp = m.groups()
    labels: dict[str, str] = {}
    if block:
        pairs = _PAIR.findall(block)
        for key, text in pairs:
            labels[key] = _ESCAPE.sub(_unescape, text) if "\\" in text else text
        if len(labels) != len(pairs) or any(key.startswith("__") for key in labels):
            return _fallback(line)  # duplicate or reserved label names: its parser decides
    try:
        number = _number(value)
        timestamp = _number(stamp) / 1000 if stamp is not None else None
    except ValueError:
        return _fallback(line)  # e.g. "m {a=}1": a blank and then no number, which it reads laxly
    return Sample(name, labels, number, timestamp)


def parse_sample_lines(lines: list[str]) -> list[Sample]:
    """Every well-formed line's sample, in order; a malformed line costs that line only."""
    out: list[Sample] = []
    for line in lines:
        sample = parse_sample_line(line)
        if sample is not None:
            out.append(sample)
    return out
