"""Corpora scored by the tiny model and selected, for the export tests: rows (a Parquet shard with an id column, a
JSON Lines .zst shard with default ids, a few unscoreable rows) and windows (long texts cut into windows of 24
tokens, selected by window and by document)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from scoring import ScoreConfig, score
from selection import SelectConfig, select
from tests.conftest import real_texts, write_jsonl


def write_corpus(root: Path) -> Path:
    """``in/a/docs.parquet`` (42 rows: an id column, a number, a nested list) and ``in/b/b.jsonl.zst`` (30 lines, no
    id)."""
    texts = real_texts(72, seed=5)
    rows = [{"doc": f"d{i:03d}", "text": t, "domain": "alpha" if i % 3 else "beta", "n": i, "tags": [f"t{i % 4}"]}
            for i, t in enumerate(texts[:42])]
    rows[3]["text"] = ""  # empty: excluded
    rows[8]["text"] = None  # null: excluded
    (root / "in" / "a").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "in" / "a" / "docs.parquet", row_group_size=10)
    lines = [{"text": t, "domain": "gamma", "url": f"https://example.org/{i}", "meta": {"len": len(t)}}
             for i, t in enumerate(texts[42:])]
    lines[5]["text"] = "   "
    data = "".join(json.dumps(r) + "\n" for r in lines).encode()
    (root / "in" / "b").mkdir(parents=True, exist_ok=True)
    (root / "in" / "b" / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    return root / "in"


@pytest.fixture(scope="session")
def selected_rows(tmp_path_factory, tiny_model_dir) -> dict:
    """The corpus of :func:`write_corpus` scored into two scores/ directories (the Parquet shard by its id column
    ``doc``, the JSON Lines shard with default ids) and selected from both, per group."""
    root = tmp_path_factory.mktemp("export-rows")
    inputs = write_corpus(root)
    common = dict(model=tiny_model_dir, executor="local", dtype="float32", device="cpu", group_column="domain",
                  max_tokens=64, rows_per_unit=9)
    score(ScoreConfig(inputs=[str(inputs / "a")], output=str(root / "scores-a"), id_column="doc", **common), progress=False)
    score(ScoreConfig(inputs=[str(inputs / "b")], output=str(root / "scores-b"), **common), progress=False)
    scores = [str(root / "scores-a"), str(root / "scores-b")]
    select(SelectConfig(scores=scores, output=str(root / "selected"), per_group=True, drop_top=0.15, keep=0.5,
                        report=False), progress=False)
    return {"root": root, "inputs": inputs, "scores": scores, "selected": root / "selected"}


@pytest.fixture(scope="session")
def selected_windows(tmp_path_factory, tiny_model_dir) -> dict:
    """Real texts scored in windows of at most 24 tokens (some documents of one window, some of many) and selected by
    window and by document."""
    root = tmp_path_factory.mktemp("export-windows")
    texts = [t for t in real_texts(30, seed=17) if t.strip()][:20]
    write_jsonl(root / "in" / "docs.jsonl", [{"text": t, "domain": "ab"[i % 2], "k": i} for i, t in enumerate(texts)])
    score(ScoreConfig(inputs=[str(root / "in")], output=str(root / "scores"), model=tiny_model_dir, executor="local",
                      dtype="float32", device="cpu", max_tokens=24, long_documents="windows", group_column="domain",
                      rows_per_unit=6), progress=False)
    for by in ("window", "document"):
        select(SelectConfig(scores=[str(root / "scores")], output=str(root / f"by-{by}"), by=by, drop_top=0.2, keep=0.5,
                            report=False), progress=False)
    return {"root": root, "inputs": root / "in", "scores": root / "scores", "by-window": root / "by-window",
            "by-document": root / "by-document"}
