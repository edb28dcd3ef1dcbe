"""The scoring-speed benchmark's documents: windows of real text found on this machine, cut at seeded
log-uniform token lengths (``/usr/share/common-licenses``, the Python standard library,
``/usr/share/doc/*/copyright``)."""

from __future__ import annotations

import logging
import math
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("scoring_speed")

MIN_TOKENS, MAX_TOKENS = 30, 1024  # document lengths (tokens, incl. the first, unpredicted one)
MAX_FILE_CHARS = 200_000  # only the beginning of a very long source file is tokenised


@dataclass
class Doc:
    """One benchmark document: its text (what the Ray job reads) and its token ids (what the others get)."""

    text: str
    ids: np.ndarray  # int32, exactly what the tokenizer gives for ``text``
    source: str


def source_files() -> dict[str, list[Path]]:
    """Real text on this machine, by kind; kinds with no files are left out."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    kinds = {
        "license": sorted(p for p in Path("/usr/share/common-licenses").glob("*") if p.is_file()),
        "python": sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts and p.is_file()),
        "copyright": sorted(p for p in Path("/usr/share/doc").glob("*/copyright") if p.is_file()),
    }
    kinds = {k: v for k, v in kinds.items() if v}
    if not kinds:
        raise SystemExit("no source text found on this machine")
    log.info("source files: %s", ", ".join(f"{k} {len(v)}" for k, v in kinds.items()))
    return kinds


class TokenizedFiles:
    """Each source file read and tokenised (with character offsets) once, on demand."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._cache: dict[Path, tuple[str, list[tuple[int, int]]]] = {}

    def get(self, path: Path) -> tuple[str, list[tuple[int, int]]]:
        if path not in self._cache:
            try:
                text = path.read_text(encoding="utf-8", errors="replace")[:MAX_FILE_CHARS]
            except OSError:
                text = ""
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            self._cache[path] = (text, enc["offset_mapping"])
        return self._cache[path]


def make_corpus(tokenizer, n_docs: int, seed: int) -> list[Doc]:
    """``n_docs`` windows of real text whose token counts are log-uniform in [MIN_TOKENS, MAX_TOKENS]."""
    rng = np.random.default_rng(seed)
    kinds = source_files()
    files = TokenizedFiles(tokenizer)
    docs: list[Doc] = []
    while len(docs) < n_docs:
        want = int(round(math.exp(rng.uniform(math.log(MIN_TOKENS), math.log(MAX_TOKENS)))))
        doc = _draw_window(rng, kinds, files, want, tokenizer)
        if doc is not None:
            docs.append(doc)
    lengths = np.array([len(d.ids) for d in docs])
    log.info(
        "corpus: %d docs, %d tokens, length min %d / median %d / mean %.0f / max %d",
        len(docs), lengths.sum(), lengths.min(), np.median(lengths), lengths.mean(), lengths.max(),
    )
    return docs


def _draw_window(
    rng: np.random.Generator, kinds: dict[str, list[Path]], files: TokenizedFiles, want: int, tokenizer
) -> Doc | None:
    """A random ``want``-token window of a random file long enough for it; None if this draw fails."""
    kind = list(kinds)[rng.integers(len(kinds))]
    for _ in range(50):
        path = kinds[kind][rng.integers(len(kinds[kind]))]
        text, offsets = files.get(path)
        if len(offsets) >= want:
            break
    else:
        return None
    start = int(rng.integers(len(offsets) - want + 1))
    while want >= MIN_TOKENS:
        piece = text[offsets[start][0] : offsets[start + want - 1][1]]
        ids = tokenizer(piece, add_special_tokens=True)["input_ids"]  # exactly what the Ray job will see
        if len(ids) <= MAX_TOKENS:
            break
        want -= len(ids) - MAX_TOKENS
    else:
        return None
    if len(ids) < 2 or not piece.strip():
        return None
    return Doc(text=piece, ids=np.asarray(ids, dtype=np.int32), source=f"{kind}:{path.name}")


def stratified_subset(lengths: Sequence[int], k: int) -> list[int]:
    """``k`` indices spread evenly over the documents sorted by length: same length mix as the whole."""
    if k >= len(lengths):
        return list(range(len(lengths)))
    order = np.argsort(lengths, kind="stable")
    picks = np.linspace(0, len(order) - 1, k).round().astype(int)
    return sorted(int(order[p]) for p in picks)


def corpus_summary(docs: list[Doc], ref_indices: list[int], seed: int) -> dict:
    lengths = np.array([len(d.ids) for d in docs])
    kinds: dict[str, int] = {}
    for d in docs:
        kind = d.source.split(":", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return {
        "docs": len(docs), "seed": seed, "tokens": int(lengths.sum()), "min": int(lengths.min()),
        "median": float(np.median(lengths)), "mean": float(lengths.mean()), "max": int(lengths.max()),
        "min_tokens": MIN_TOKENS, "max_tokens": MAX_TOKENS,
        "by_kind": kinds, "ref_docs": len(ref_indices), "ref_tokens": int(lengths[ref_indices].sum()),
        "lengths": lengths.tolist(), "sources": [d.source for d in docs], "ref_indices": ref_indices,
    }
