"""Every relative link in README.md and docs/*.md resolves: the file exists and, for #anchor, so does the heading."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from nanocrystal.config import ROOT

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def anchors(markdown: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, repeats numbered -1, -2, ..."""
    seen: dict[str, int] = {}
    ids = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", markdown), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        ids.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return ids


def broken_links(document: Path) -> list[str]:
    """`document: target (why)` for each relative link outside code blocks that does not resolve."""
    text = document.read_text()
    problems = []
    for target in LINK.findall(FENCE.sub("", text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not a file of the repository
            continue
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        if not linked.exists():
            problems.append(f"{document}: {target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
            problems.append(f"{document}: {target} (no heading #{anchor} in {linked.name})")
    return problems


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=[d.name for d in DOCUMENTS])
def test_relative_links_resolve(document):
    assert broken_links(document) == []


def test_a_missing_file_or_heading_is_reported(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n## Size model: why (nm)\n## Size model: why (nm)\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n[ok](other.md#size-model-why-nm) [ok](other.md#size-model-why-nm-1) [ok](#page)\n"
                    "![gone](gone.png) [bad](other.md#shape) [web](https://arxiv.org/abs/2412.10838)\n"
                    "```\n[in code](nowhere.md)\n```\n")
    assert broken_links(page) == [f"{page}: gone.png (no such file)",
                                  f"{page}: other.md#shape (no heading #shape in other.md)"]
