"""Write a scores/ directory with chosen losses, in the exact contract `hardfocus score` writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from scoring.foundation.scores import ScoreManifest, ShardInfo, scores_table
from scoring.foundation.versions import library_versions


def write_scores(
    out: Path,
    losses: list[float],
    groups: list[str | None] | None = None,
    statuses: list[str] | None = None,
    ids: list[str] | None = None,
    rows_per_part: int = 7,
    tokenizer_fingerprint: str = "tok-a",
    columns: dict[str, list] | None = None,
    shard: str = "shard.jsonl",
) -> Path:
    """``columns``: more columns (``n_bytes``, ``ifd``, ...) or replacements of the made-up ones, one value a row.
    ``shard``: the input shard the rows claim to come from (default ids ``<shard>#<row>``); two directories
    selected together need different ones, as two real scoring runs of different inputs have."""
    n = len(losses)
    groups = groups or [None] * n
    statuses = statuses or ["ok"] * n
    ids = ids or [f"{shard}#{i}" for i in range(n)]
    rng = np.random.default_rng(0)
    input_ids = [rng.integers(0, 100, size=int(rng.integers(3, 12))).astype(np.int32) for _ in range(n)]
    out.mkdir(parents=True, exist_ok=True)
    parts = 0
    for start in range(0, n, rows_per_part):
        sl = slice(start, min(start + rows_per_part, n))
        ok = np.array([s == "ok" for s in statuses[sl]])
        loss = np.array(losses[sl], dtype=np.float64)
        n_tok = np.array([len(x) - 1 for x in input_ids[sl]])
        table = scores_table(
            {
                "sample_id": ids[sl], "shard": [shard] * len(loss), "row": np.arange(sl.start, sl.stop),
                "group": groups[sl], "n_tokens": np.where(ok, n_tok, 0).astype(np.int32),
                "loss": [float(x) if o else None for x, o in zip(loss, ok)],
                "nll_sum": [float(x * t) if o else None for x, t, o in zip(loss, n_tok, ok)],
                "truncated": [False] * len(loss), "status": statuses[sl], "input_ids": input_ids[sl],
            } | {name: values[sl] for name, values in (columns or {}).items()}
        )
        pq.write_table(table, out / f"part-{parts:04d}.parquet")
        parts += 1
    manifest = ScoreManifest(
        model="fake", model_path="/nowhere", model_fingerprint="model-a", tokenizer_fingerprint=tokenizer_fingerprint,
        max_tokens=1024, dtype="float32", device="cpu", add_special_tokens=True, text_column="text", id_column=None,
        group_column="group", parts=parts,
        shards=[ShardInfo(url=shard, rel=shard, format="jsonl", compression=None, size=0, rows=n)], rows=n, rows_by_status={}, error_examples=[], tokens=0,
        truncated=0, duplicate_ids=0, duplicate_id_examples=[], runs=[], versions=library_versions(),
    )
    (out / "manifest.json").write_text(json.dumps(manifest.model_dump()))
    return out
