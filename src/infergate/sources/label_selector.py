"""Kubernetes label selectors in their string form (``app=vllm,tier in (a,b),!canary``).

``epp --endpoint-selector`` takes the reference picker's selector string, which accepts the whole
Kubernetes syntax: equality (``k=v``, ``k==v``, ``k!=v``), sets (``k in (a,b)``, ``k notin (a,b)``)
and existence (``k``, ``!k``), requirements joined by commas, all of which must hold. Parsed once;
:meth:`LabelSelector.matches` is then a plain loop over the requirements.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["LabelSelector", "standalone_args"]

# a label key (optional DNS prefix and a name) and a label value, as Kubernetes validates them
_KEY = r"(?:[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_KEY_RE = re.compile(rf"^{_KEY}$")
_VALUE_RE = re.compile(rf"^{_VALUE}$")
_SET = re.compile(rf"^(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")


@dataclass(frozen=True, slots=True)
class _Requirement:
    key: str
    op: str  # "in", "notin", "exists", "!exists"
    values: frozenset[str]

    def holds(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        value = labels.get(self.key)
        if self.op == "in":
            return value is not None and value in self.values
        return value is None or value not in self.values  # notin, !=: absent keys match


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A parsed selector; empty text selects everything."""

    text: str
    requirements: tuple[_Requirement, ...]

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        """Raises ValueError naming the requirement that is not valid selector syntax."""
        return cls(text, tuple(_requirement(part) for part in _split(text)))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.holds(labels) for r in self.requirements)


def _split(text: str) -> list[str]:
    """The requirements: split at commas outside parentheses."""
    parts: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"{text!r}: unbalanced ')'")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"{text!r}: unbalanced '('")
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()] if text.strip() else []


def _requirement(part: str) -> _Requirement:
    def key(k: str) -> str:
        k = k.strip()
        if not _KEY_RE.match(k):
            raise ValueError(f"{part!r}: {k!r} is not a label key")
        return k

    def value(v: str) -> str:
        v = v.strip()
        if not _VALUE_RE.match(v) or len(v) > 63:
            raise ValueError(f"{part!r}: {v!r} is not a label value")
        return v

    found = _SET.match(part)
    if found is not None:
        values = frozenset(value(v) for v in found["values"].split(","))
        return _Requirement(key(found["key"]), found["op"], values)
    for op, name in (("!=", "notin"), ("==", "in"), ("=", "in")):
        if op in part:
            k, _, v = part.partition(op)
            return _Requirement(key(k), name, frozenset({value(v)}))
    if part.startswith("!"):
        return _Requirement(key(part[1:]), "!exists", frozenset())
    return _Requirement(key(part), "exists", frozenset())


def standalone_args(selector: str, ports: str | None) -> tuple[int, ...]:
    """Check ``epp --endpoint-selector`` and parse ``--endpoint-target-ports`` (comma-separated, 1
    to 8 ports, duplicates dropped, as the reference); ValueError naming the flag."""
    try:
        LabelSelector.parse(selector)
    except ValueError as exc:
        raise ValueError(f"--endpoint-selector: {exc}") from None
    try:
        numbers = tuple(dict.fromkeys(int(p) for p in (ports or "").split(",") if p.strip()))
    except ValueError:
        raise ValueError(f"--endpoint-target-ports: {ports!r} is not a list of port numbers") from None
    if not 1 <= len(numbers) <= 8 or any(not 1 <= p <= 65535 for p in numbers):
        raise ValueError(
            f"--endpoint-target-ports: 1 to 8 ports in 1..65535 are required (got {list(numbers)})"
        )
    return numbers
