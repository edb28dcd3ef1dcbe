"""Building blocks shared by the tests that score: corpora, scores read back, small shards and the configs that
score them (in rows, or in windows of ``WINDOW_TOKENS`` tokens)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from scoring import ScoreConfig
from tests.conftest import real_texts


def make_corpus(root: Path, n_parquet: int = 37, n_jsonl: int = 29) -> dict[str, list[dict]]:
    """A Parquet shard and a JSONL.gz shard of real text with groups, plus a few unscoreable rows."""
    import gzip

    texts = real_texts(n_parquet + n_jsonl, seed=7)
    parquet_rows = [{"text": t, "domain": "alpha" if i % 3 else "beta"} for i, t in enumerate(texts[:n_parquet])]
    parquet_rows[4]["text"] = ""  # empty
    parquet_rows[9]["text"] = None  # null
    jsonl_rows = [{"text": t, "domain": "gamma"} for t in texts[n_parquet:]]
    jsonl_rows[2]["text"] = "   "
    (root / "in").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(parquet_rows), root / "in" / "one.parquet", row_group_size=8)
    with gzip.open(root / "in" / "two.jsonl.gz", "wt") as f:
        for r in jsonl_rows:
            f.write(json.dumps(r) + "\n")
        f.write("{not json}\n")
    return {"one.parquet": parquet_rows, "two.jsonl.gz": jsonl_rows + [None]}


def read_scores(output: str | Path) -> pl.DataFrame:
    return pl.read_parquet(f"{output}/part-*.parquet").sort(["shard", "row"])


def reference_losses(model_dir: str, texts: list[str], max_tokens: int) -> list[float]:
    """Each document's own unpadded loss, computed the plain way: tokenizer -> model(labels=ids)."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for t in texts:
            ids = torch.tensor([tok(t)["input_ids"][:max_tokens]])
            out.append(float(model(input_ids=ids, labels=ids).loss))
    return out


def assert_same_scores(a: pl.DataFrame, b: pl.DataFrame, atol: float = 1e-5) -> None:
    cols = ["sample_id", "shard", "row", "group", "n_tokens", "truncated", "status"]
    assert a.select(cols).equals(b.select(cols))
    np.testing.assert_allclose(a["loss"].fill_null(-1).to_numpy(), b["loss"].fill_null(-1).to_numpy(), atol=atol)


# ---- a small shard of plain texts, scored in-process -----------------------------------------------------------

TEXTS = [f"The committee met on day {i} to discuss the budget for the coming year." for i in range(8)]


def write_texts(path: Path, texts: list[str]) -> None:
    """A JSON Lines shard of ``{"text": ...}`` rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


def score_config(inputs, output, model, **kw) -> ScoreConfig:
    """Scoring in this process on the CPU, 32 tokens a row, units of 4 rows (two parts for ``TEXTS``)."""
    return ScoreConfig(inputs=[str(i) for i in inputs], output=str(output), model=model, executor="local",
                       dtype="float32", device="cpu", max_tokens=32, rows_per_unit=4, **kw)


# ---- documents scored in windows of WINDOW_TOKENS tokens ---------------------------------------------------------

WINDOW_TOKENS = 16


def windows_config(inputs, output, model, **kw) -> ScoreConfig:
    """Scoring in windows of ``WINDOW_TOKENS`` tokens (``--long-documents windows``, ids from the ``id`` column)."""
    return ScoreConfig(inputs=[str(i) for i in inputs], output=str(output), model=model, executor="local",
                       dtype="float32", device="cpu", max_tokens=WINDOW_TOKENS, rows_per_unit=2, id_column="id",
                       **({"long_documents": "windows"} | kw))


def windowed_documents(n: int = 6, seed: int = 0) -> list[dict]:
    """``n`` documents of real text, each of several windows, with an ``id``."""
    return [{"id": f"doc{i}", "text": " ".join(real_texts(3, seed=seed + i))} for i in range(n)]


def text_of_tokens(tok, n: int, seed: int = 0) -> str:
    """A real text whose tokenisation without special tokens is exactly ``n`` tokens."""
    text = " ".join(real_texts(40, seed=seed)).lstrip()
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for _, stop in offsets:
        if len(tok(text[:stop], add_special_tokens=False)["input_ids"]) == n:
            return text[:stop]
    pytest.skip(f"no prefix of the text tokenises to exactly {n} tokens")


def one_token_tails(tok, n_docs: int = 4) -> list[dict]:
    """Documents whose last window (max_tokens WINDOW_TOKENS, no BOS, no context) holds one token of its own, so it
    scores nothing (``too_short``), with documents that end at a window boundary."""
    return [{"id": f"doc{i}", "text": text_of_tokens(tok, WINDOW_TOKENS * (1 + i % 2) + 1, seed=i)} for i in range(n_docs)]
