"""A small real corpus from text every Debian/Python machine has, in several groups (domains).

Groups: ``licenses`` (/usr/share/common-licenses), ``debian-copyright`` (/usr/share/doc/*/copyright),
``python-code`` (standard-library sources) and ``python-docs`` (standard-library docstrings).
Documents are cut at paragraph boundaries to realistic, mixed lengths. Missing sources are skipped
with a message. (Issue 5 extends this: held-out split, injected noise, more sources.)
"""

from __future__ import annotations

import ast
import json
import logging
import math
import random
import sysconfig
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def _files(pattern_root: Path, glob: str, limit: int) -> list[Path]:
    if not pattern_root.exists():
        return []
    return sorted(pattern_root.glob(glob))[:limit]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(_read(path))
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 200:
                yield doc


def _cut(text: str, rng: random.Random, max_chars: int) -> Iterator[str]:
    """Split at blank lines into documents of log-uniform length (about 100 to max_chars characters)."""
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    doc: list[str] = []
    target = int(10 ** rng.uniform(2, math.log10(max_chars)))
    for p in paragraphs:
        doc.append(p)
        if sum(map(len, doc)) >= target:
            yield "\n\n".join(doc)[:max_chars]
            doc, target = [], int(10 ** rng.uniform(2, math.log10(max_chars)))
    if doc:
        yield "\n\n".join(doc)[:max_chars]


def sources() -> dict[str, Iterator[str]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return {
        "licenses": (_read(p) for p in _files(Path("/usr/share/common-licenses"), "*", 50) if p.is_file()),
        "debian-copyright": (_read(p) for p in _files(Path("/usr/share/doc"), "*/copyright", 400)),
        "python-code": (_read(p) for p in _files(stdlib, "*.py", 120)),
        "python-docs": (d for p in _files(stdlib, "*.py", 400) for d in _docstrings(p)),
    }


def build_demo_corpus(out_dir: str | Path, docs_per_group: int = 150, max_chars: int = 4000, seed: int = 0) -> dict[str, int]:
    """Write ``<out_dir>/<group>.jsonl`` (fields ``text``, ``group``); returns documents per group."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for group, texts in sources().items():
        rng = random.Random(f"{seed}-{group}")
        docs = [d for t in texts if t.strip() for d in _cut(t, rng, max_chars) if len(d.strip()) > 20]
        if not docs:
            log.warning("demo corpus: no text found for group '%s' on this machine; skipped", group)
            continue
        rng.shuffle(docs)
        docs = docs[:docs_per_group]
        with open(out / f"{group}.jsonl", "w") as f:
            for d in docs:
                f.write(json.dumps({"text": d, "group": group}) + "\n")
        counts[group] = len(docs)
    log.info("demo corpus in %s: %s", out, ", ".join(f"{g} {n}" for g, n in counts.items()))
    return counts
