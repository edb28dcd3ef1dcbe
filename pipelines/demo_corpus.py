"""A small real corpus from text every Debian/Python machine has, in several groups (domains).

Groups: ``licenses`` (/usr/share/common-licenses), ``debian-copyright`` (/usr/share/doc/*/copyright),
``python-code`` (standard-library sources) and ``python-docs`` (standard-library docstrings).
Documents are cut at paragraph boundaries to realistic, mixed lengths. Missing sources are skipped
with a message.

Layout: ``train/<group>.jsonl`` and ``heldout/<group>.jsonl``. The held-out split is by source file
(every document cut from a held-out file is held out), so no held-out text has a near-copy in
training. ``noise_frac`` adds injected noise to the training split only: shuffled-word copies of
real training documents and random-character documents, marked in a ``noise`` column (the kind, or
null) that scoring and selection never read, so an analysis can see which band caught them.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import random
import string
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


NOISE_KINDS = ("shuffled_words", "random_chars")


def build_demo_corpus(
    out_dir: str | Path,
    docs_per_group: int = 150,
    max_chars: int = 4000,
    seed: int = 0,
    heldout_frac: float = 0.2,
    noise_frac: float = 0.0,
) -> dict[str, dict[str, int]]:
    """Write ``train/`` and ``heldout/`` JSONL shards (``text``, ``group``, ``noise``); returns counts per split and group."""
    if not 0 <= heldout_frac < 1 or not 0 <= noise_frac < 1:
        raise ValueError("heldout_frac and noise_frac must be in [0, 1)")
    out = Path(out_dir)
    counts: dict[str, dict[str, int]] = {"train": {}, "heldout": {}, "noise": {}}
    for group, texts in sources().items():
        rng = random.Random(f"{seed}-{group}")
        files = [[d for d in _cut(t, rng, max_chars) if len(d.strip()) > 20] for t in texts if t.strip()]
        files = [f for f in files if f]
        if not files:
            log.warning("demo corpus: no text found for group '%s' on this machine; skipped", group)
            continue
        rng.shuffle(files)
        train, heldout = _split_by_file(files, docs_per_group, heldout_frac, rng)
        noise = _noise(train, noise_frac, rng)
        _write(out / "train" / f"{group}.jsonl", group, [(d, None) for d in train] + noise, rng)
        if heldout:
            _write(out / "heldout" / f"{group}.jsonl", group, [(d, None) for d in heldout], rng)
        counts["train"][group], counts["heldout"][group], counts["noise"][group] = len(train) + len(noise), len(heldout), len(noise)
    log.info("demo corpus in %s: %s", out, counts)
    return counts


def _split_by_file(files: list[list[str]], n_docs: int, heldout_frac: float, rng: random.Random):
    """Whole source files to the held-out split until it holds its share of ``n_docs`` documents."""
    all_docs = sum(len(f) for f in files)
    n_docs = min(n_docs, all_docs)
    want_heldout = int(round(n_docs * heldout_frac))
    heldout: list[str] = []
    rest: list[str] = []
    for f in files:
        if len(heldout) < want_heldout and len(files) > 1:
            heldout.extend(f)
        else:
            rest.extend(f)
    rng.shuffle(heldout)
    rng.shuffle(rest)
    return rest[: n_docs - min(len(heldout), want_heldout)], heldout[:want_heldout]


def _noise(train: list[str], noise_frac: float, rng: random.Random) -> list[tuple[str, str]]:
    """``noise_frac`` of the training split as noise: shuffled-word copies and random-character documents."""
    n = int(round(len(train) * noise_frac / (1 - noise_frac))) if noise_frac else 0
    alphabet = string.ascii_letters + string.digits + string.punctuation + " " * 12 + "\n"
    out = []
    for i in range(n):
        source = rng.choice(train)
        if i % 2 == 0:
            words = source.split()
            rng.shuffle(words)
            out.append((" ".join(words), NOISE_KINDS[0]))
        else:
            out.append(("".join(rng.choice(alphabet) for _ in range(len(source))), NOISE_KINDS[1]))
    return out


def _write(path: Path, group: str, docs: list[tuple[str, str | None]], rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    docs = list(docs)
    rng.shuffle(docs)
    with open(path, "w") as f:
        for text, noise in docs:
            f.write(json.dumps({"text": text, "group": group, "noise": noise}) + "\n")
