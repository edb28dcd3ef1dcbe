"""Building blocks shared by the scoring job tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

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
