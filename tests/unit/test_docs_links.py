"""Every relative link in README.md, CHANGELOG.md and docs/*.md reaches a file, and its ``#anchor``
a heading of that file as GitHub names it (lower case, punctuation but ``-`` and ``_`` dropped,
spaces to ``-``). Two links in benchmarks.md and envoy.md pointed at an anchor GitHub never made."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]*)\)")


def github_anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    """The anchors of ``path``'s headings (outside fenced code); a repeated heading gets ``-1``…"""
    seen: dict[str, int] = {}
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"#{1,6} (.*)", line)
        if match:
            slug = github_anchor(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            if count:
                seen[f"{slug}-{count}"] = 1
    return frozenset(seen)


def test_github_anchors_are_made_as_github_makes_them() -> None:
    assert github_anchor("The interpreter's build (6 December 2026, later)") == (
        "the-interpreters-build-6-december-2026-later"
    )
    assert github_anchor("Measured (this machine, `bench/bench_envoy.py`)") == (
        "measured-this-machine-benchbench_envoypy"
    )
    assert (
        github_anchor("`infergate up [DIR]` — the whole tutorial") == "infergate-up-dir--the-whole-tutorial"
    )


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_reach_a_file_and_a_heading(doc: Path) -> None:
    broken = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        name, _, anchor = target.partition("#")
        path = (doc.parent / name).resolve() if name else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading makes #{anchor}")
    assert not broken, f"{doc.name}: " + "; ".join(broken)
