"""Write a scores/ directory with chosen losses, in the exact contract `hardfocus score` writes: ``job.json`` (its
identity), parts named by their shard and rows and stamped as such (:mod:`hardfocus.parts`), ``manifest.json``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from hardfocus.contracts.scores import SCORES_LAYOUT, ScoreManifest, ShardInfo, rel_digest, scores_table
from hardfocus.fingerprints import digest
from hardfocus.parts import stamped
from hardfocus.versions import library_versions


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
    documents: int | None = None,
    shard_info: dict | None = None,
) -> Path:
    """``columns``: more columns (``n_bytes``, ``ifd``, ...) or replacements of the made-up ones, one value a row.
    ``shard``: the input shard the rows claim to come from (default ids ``<shard>#<row>``); two directories
    selected together need different ones, as two real scoring runs of different inputs have. ``documents``: the
    rows are windows of this many input rows (``--long-documents windows``; see :func:`write_windowed_scores`).
    ``shard_info``: what the manifest records of the shard (``url``, ``size``, ``modified``, ``format``,
    ``compression``), as the parts' stamps do; by default a made-up file of its own per directory."""
    info = {"url": str(out.with_name(f"{out.name}.input") / shard), "format": "jsonl", "compression": None, "size": 0,
            "modified": None} | (shard_info or {})
    n = len(losses)
    groups = groups or [None] * n
    statuses = statuses or ["ok"] * n
    ids = ids or [f"{shard}#{i}" for i in range(n)]
    rng = np.random.default_rng(0)
    input_ids = [rng.integers(0, 100, size=int(rng.integers(3, 12))).astype(np.int32) for _ in range(n)]
    out.mkdir(parents=True, exist_ok=True)
    identity = {"parts": SCORES_LAYOUT, "fake": out.name, "tokenizer": tokenizer_fingerprint}
    (out / "job.json").write_text(json.dumps({"stage": "scores", "identity": identity}))
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
        place = {"shard": shard, "shard_size": info["size"], "shard_modified": info["modified"], "start": sl.start,
                 "stop": sl.stop}
        name = f"part-{rel_digest(shard)}-{sl.start:010d}-{sl.stop:010d}.parquet"
        pq.write_table(stamped(table, "scores", digest(identity), place), out / name)
        parts += 1
    manifest = ScoreManifest(
        model="fake", model_path="/nowhere", model_fingerprint="model-a", tokenizer_fingerprint=tokenizer_fingerprint,
        max_tokens=1024, dtype="float32", device="cpu", add_special_tokens=True, text_column="text", id_column=None,
        group_column="group", parts=parts,
        shards=[ShardInfo(rel=shard, rows=documents or n, **info)], rows=n,
        rows_by_status={}, error_examples=[], tokens=0,
        truncated=0, duplicate_ids=0, duplicate_id_examples=[], runs=[], versions=library_versions(),
        **({"long_documents": "windows", "documents": documents} if documents is not None else {}),
    )
    (out / "manifest.json").write_text(json.dumps(manifest.model_dump()))
    return out


def write_windowed_scores(
    out: Path,
    windows: dict[str, list[tuple[float, int]]],
    groups: dict[str, str | None] | None = None,
    statuses: dict[str, list[str]] | None = None,
    n_bytes: dict[str, list[int]] | None = None,
    **kwargs,
) -> Path:
    """Windowed scores: ``windows`` maps each document id to its windows' (loss, scored tokens), in order;
    ``statuses``/``n_bytes`` per window where given (default ok, 3 bytes a token). ``nll_sum`` = loss * tokens.
    ``rows_per_part`` may split a document across parts (real scoring never does; selection must not rely on it)."""
    ids, losses, status, tokens, nbytes, group, starts = [], [], [], [], [], [], []
    doc_of, window, count, row = [], [], [], []
    for d, (doc, spec) in enumerate(windows.items()):
        doc_bytes = (n_bytes or {}).get(doc, [3 * n_tok for _, n_tok in spec])
        doc_status = (statuses or {}).get(doc, ["ok"] * len(spec))
        for k, (loss, n_tok) in enumerate(spec):
            ids.append(f"{doc}#w{k}")
            losses.append(loss)
            status.append(doc_status[k])
            tokens.append(n_tok if doc_status[k] == "ok" else 0)
            nbytes.append(doc_bytes[k])
            starts.append(sum(doc_bytes[:k]))
            group.append((groups or {}).get(doc))
            doc_of.append(doc)
            window.append(k)
            count.append(len(spec))
            row.append(d)
    columns = {
        "n_tokens": tokens, "nll_sum": [x * t if s == "ok" else None for x, t, s in zip(losses, tokens, status)],
        "n_bytes": nbytes, "row": row, "document_id": doc_of, "window": window, "windows": count,
        "prefix_tokens": [0] * len(ids), "char_start": starts, "char_stop": [a + b for a, b in zip(starts, nbytes)],
    }
    return write_scores(out, losses, group, status, ids, columns=columns | kwargs.pop("columns", {}),
                        documents=len(windows), **kwargs)
