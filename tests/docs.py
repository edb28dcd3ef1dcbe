"""The README and the docs/ pages, as the tests that run their commands, recipes and TOML read them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def pages() -> list[Path]:
    """The README and every page of the docs site."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def page(name: str) -> str:
    return (DOCS / name).read_text()


def section(text: str, heading: str) -> str:
    """From ``heading`` (a whole Markdown heading line) to the next heading of its level or above, code blocks aside."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(heading + "\n")
    fence, out = False, []
    for i, line in enumerate(text[start:].split("\n")):
        if line.startswith("```"):
            fence = not fence
        if i and not fence and re.match(rf"^#{{1,{level}}} ", line):
            break
        out.append(line)
    return "\n".join(out)


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)
