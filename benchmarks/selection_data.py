"""Synthetic scores/ directories for the selection benchmarks: the ``scoring`` contract at any size, seeded.

Rows look like what ``hardfocus score`` writes with its defaults: ids like ``shard-00012.jsonl.zst#123456``,
five groups (one per shard) with different loss distributions (lognormal / gamma plus a heavy noise tail),
~0.5% rows with a non-ok status and a few NaN/inf losses on ok rows, and ``input_ids`` (scoring keeps them by
default so training never re-tokenises): lognormal lengths (median 400 tokens, cut at 2048), token ids drawn
from a Zipf-Mandelbrot distribution over a 49,152-token vocabulary (SmolLM2's), so the column compresses like
real token ids do. Part files of ``rows_per_part`` rows (scoring's default ``rows_per_unit``: 2,000), zstd, and a
valid ``manifest.json``. A directory is reused when an earlier run made it with the same parameters.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.harness import GB

log = logging.getLogger("selection_data")

DATA_VERSION = 3  # bump when the generator changes: the cached data is made again (2: input_ids, 2,000-row parts;
# 3: job.json and the part stamp, parts named by shard and rows, as scoring names them)
ROWS_PER_PART = 2_000  # scoring's default rows_per_unit: one part file per unit
VOCAB = 49_152  # SmolLM2's vocabulary
ZIPF_SHIFT = 2.7  # Zipf-Mandelbrot p(rank) ~ 1 / (rank + shift): the usual fit of token frequencies
TOKEN_POOL = 1 << 24  # each row's ids are a window of this seeded pool (16M tokens, 64 MB)

ROWS_PER_SHARD = 50_000
MAX_TOKENS = 2048
# (name or None, share of shards): one group per shard, as when each source file is one domain
GROUPS = [("web", 0.43), ("code", 0.20), ("books", 0.15), ("wiki", 0.12), ("arxiv", 0.08), (None, 0.02)]
NON_OK_RATE = 0.005
NON_OK = [("too_short", 0.6), ("empty", 0.3), ("invalid_utf8", 0.08), ("error: RuntimeError: tokenizer failed", 0.02)]
NAN_RATE, INF_RATE = 2e-4, 2e-5  # of ok rows
NOISE_RATE = 0.02  # garbage documents with very high loss: what drop_top is for


# ----------------------------------------------------------------------------------------------- data

def _group_losses(rng: np.random.Generator, group: str | None, n: int) -> np.ndarray:
    if group == "web":
        x = rng.lognormal(np.log(3.0), 0.30, n)
    elif group == "code":
        x = 0.3 + rng.gamma(4.0, 0.35, n)
    elif group == "books":
        x = rng.lognormal(np.log(2.7), 0.15, n)
    elif group == "wiki":
        x = rng.lognormal(np.log(2.3), 0.25, n)
    elif group == "arxiv":
        x = rng.gamma(9.0, 0.25, n)
    else:
        x = rng.lognormal(np.log(3.5), 0.5, n)
    noise = rng.random(n) < NOISE_RATE
    x[noise] = rng.uniform(6.0, 11.0, int(noise.sum()))
    return x


def shard_group(seed: int, shard: int) -> int:
    """Index into GROUPS of a shard's group (seeded per shard, so it does not depend on N or the part size)."""
    rng = np.random.default_rng([seed, 1, shard])
    return int(rng.choice(len(GROUPS), p=[p for _, p in GROUPS]))


@lru_cache(maxsize=2)
def token_pool(seed: int) -> np.ndarray:
    """Seeded int32 token ids, Zipf-Mandelbrot over the vocabulary (frequent tokens have small ids, as in BPE)."""
    p = 1.0 / (np.arange(VOCAB) + ZIPF_SHIFT)
    rng = np.random.default_rng([seed, 2])
    return rng.choice(VOCAB, size=TOKEN_POOL, p=p / p.sum()).astype(np.int32)


def input_ids_column(rng: np.random.Generator, lengths: np.ndarray, seed: int) -> pa.ListArray:
    """One list of ``lengths[i]`` token ids per row: a window of the token pool at a random offset."""
    pool = token_pool(seed)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    starts = rng.integers(0, TOKEN_POOL - int(lengths.max(initial=0)), len(lengths))
    flat = np.arange(offsets[-1], dtype=np.int64) + np.repeat(starts - offsets[:-1], lengths)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(pool[flat]))


def make_part(seed: int, start: int, stop: int) -> tuple[pa.Table, dict[str, int], dict[int, int]]:
    """Rows [start, stop) of the synthetic scores: the table, rows per status, rows per shard."""
    from hardfocus.contracts.scores import scores_table

    n = stop - start
    rng = np.random.default_rng([seed, 0, start])
    g = np.arange(start, stop, dtype=np.int64)
    shard = g // ROWS_PER_SHARD
    row = g % ROWS_PER_SHARD
    shards, shard_inv = np.unique(shard, return_inverse=True)
    shard_names = pa.array([f"shard-{s:05d}.jsonl.zst" for s in shards], pa.string())
    shard_col = pc.take(shard_names, pa.array(shard_inv.astype(np.int32)))
    sample_id = pc.binary_join_element_wise(shard_col, pc.cast(pa.array(row), pa.string()), "#")

    group_of_shard = np.array([shard_group(seed, int(s)) for s in shards])
    group_idx = group_of_shard[shard_inv]
    loss = np.empty(n, np.float64)
    for k, (name, _) in enumerate(GROUPS):
        where = np.flatnonzero(group_idx == k)
        if where.size:
            loss[where] = _group_losses(rng, name, where.size)
    group_names = pa.array([name or "" for name, _ in GROUPS], pa.string())
    group_col = pc.take(group_names, pa.array(group_idx.astype(np.int32)))
    null_group = np.array([name is None for name, _ in GROUPS])[group_idx]
    group_col = pc.if_else(pa.array(null_group), pa.scalar(None, pa.string()), group_col)

    raw_tokens = np.maximum(rng.lognormal(np.log(400), 1.0, n).astype(np.int64), 2)
    truncated = raw_tokens > MAX_TOKENS
    n_tokens = np.minimum(raw_tokens, MAX_TOKENS) - 1

    status_names = ["ok"] + [s for s, _ in NON_OK]
    non_ok = rng.random(n) < NON_OK_RATE
    status_idx = np.zeros(n, np.int32)
    status_idx[non_ok] = 1 + rng.choice(len(NON_OK), size=int(non_ok.sum()), p=[p for _, p in NON_OK])
    u = rng.random(n)
    loss[(~non_ok) & (u < NAN_RATE)] = np.nan
    loss[(~non_ok) & (u >= NAN_RATE) & (u < NAN_RATE + INF_RATE)] = np.inf
    loss32 = loss.astype(np.float32)
    n_tokens[non_ok] = 0
    truncated[non_ok] = False
    # ids kept per row: n_tokens + 1 (the first token is not predicted); empty/error rows none, too_short one
    id_lengths = np.where(non_ok, (status_idx == 1).astype(np.int64), n_tokens + 1)

    table = scores_table(
        {
            "sample_id": sample_id,
            "shard": shard_col,
            "row": row,
            "group": group_col,
            "n_tokens": n_tokens.astype(np.int32),
            "loss": pa.array(loss32, pa.float32(), mask=non_ok),
            "nll_sum": pa.array(loss32.astype(np.float64) * n_tokens, pa.float64(), mask=non_ok),
            "truncated": truncated,
            "status": pc.take(pa.array(status_names, pa.string()), pa.array(status_idx)),
            "input_ids": input_ids_column(rng, id_lengths, seed),
        },
    )
    kinds = ["ok"] + ["error" if s.startswith("error: ") else s for s, _ in NON_OK]
    by_status: dict[str, int] = {}
    for k, c in zip(*np.unique(status_idx, return_counts=True)):
        by_status[kinds[k]] = by_status.get(kinds[k], 0) + int(c)
    per_shard = {int(s): int(c) for s, c in zip(shards, np.bincount(shard_inv))}
    return table, by_status, per_shard


def _shard_rel(shard: int) -> str:
    return f"shard-{shard:05d}.jsonl.zst"


def _shard_size(rows: int) -> int:
    """A made-up byte size of a shard of ``rows`` rows (what the manifest and the parts' stamps record)."""
    return rows * 1500


def data_params(n: int, rows_per_part: int, seed: int) -> dict:
    return {"version": DATA_VERSION, "rows": n, "rows_per_part": rows_per_part, "seed": seed,
            "rows_per_shard": ROWS_PER_SHARD, "groups": GROUPS, "non_ok": NON_OK, "non_ok_rate": NON_OK_RATE,
            "nan_rate": NAN_RATE, "inf_rate": INF_RATE, "noise_rate": NOISE_RATE,
            "input_ids": {"vocab": VOCAB, "zipf_shift": ZIPF_SHIFT, "pool": TOKEN_POOL}}


def ensure_scores(workdir: Path, n: int, rows_per_part: int, seed: int) -> tuple[Path, dict]:
    """The scores/ directory of N rows under ``workdir``, generated unless an identical one is there."""
    from hardfocus.contracts.scores import SCORES_LAYOUT, ScoreManifest, ShardInfo, rel_digest
    from hardfocus.fingerprints import digest
    from hardfocus.parts import stamped
    from hardfocus.versions import library_versions

    if ROWS_PER_SHARD % rows_per_part:
        raise SystemExit(f"--rows-per-part must divide {ROWS_PER_SHARD:,} (a part holds rows of one shard, as scoring's)")
    params = data_params(n, rows_per_part, seed)
    out = workdir / f"scores-n{n}-p{rows_per_part}-s{seed}"
    marker = out / "generated.json"
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info["params"] == json.loads(json.dumps(params)) and (out / "manifest.json").is_file():
            log.info(f"N={n:,}: reusing {out} ({info['bytes'] / GB:.2f} GB, generated in {info['seconds']:.0f} s)")
            return out, {**info, "reused": True}
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    identity = {"parts": SCORES_LAYOUT, "synthetic": params}
    (out / "job.json").write_text(json.dumps({"stage": "scores", "identity": identity}))
    t0 = time.perf_counter()
    by_status: dict[str, int] = {}
    per_shard: dict[int, int] = {}
    parts = tokens = 0
    for start in range(0, n, rows_per_part):
        stop = min(start + rows_per_part, n)
        table, status_counts, shard_counts = make_part(seed, start, stop)
        (shard,) = shard_counts  # one shard per part
        rel, first = _shard_rel(shard), start - shard * ROWS_PER_SHARD
        place = {"shard": rel, "shard_size": _shard_size(min(ROWS_PER_SHARD, n - shard * ROWS_PER_SHARD)),
                 "shard_modified": None, "start": first, "stop": first + stop - start}
        name = f"part-{rel_digest(rel)}-{first:010d}-{first + stop - start:010d}.parquet"  # as scoring names them
        pq.write_table(stamped(table, "scores", digest(identity), place), out / name, compression="zstd")
        parts += 1
        tokens += int(pc.sum(table["n_tokens"]).as_py() or 0)
        for k, v in status_counts.items():
            by_status[k] = by_status.get(k, 0) + v
        for k, v in shard_counts.items():
            per_shard[k] = per_shard.get(k, 0) + v
        if parts % 500 == 0:
            log.info(f"N={n:,}: {parts} parts written ({time.perf_counter() - t0:.0f} s)")
    seconds = time.perf_counter() - t0
    shards = [
        ShardInfo(url=f"file:///data/corpus/{_shard_rel(s)}", rel=_shard_rel(s), format="jsonl", compression="zstd",
                  size=_shard_size(rows), rows=rows)
        for s, rows in sorted(per_shard.items())
    ]
    manifest = ScoreManifest(
        model="synthetic", model_path="/nowhere", model_fingerprint="synthetic-model",
        tokenizer_fingerprint="synthetic-tokenizer", max_tokens=MAX_TOKENS, dtype="bfloat16", device="cpu",
        add_special_tokens=True, text_column="text", id_column=None, group_column="group", shards=shards,
        parts=parts, rows=n, rows_by_status=dict(sorted(by_status.items())),
        error_examples=[s for s, _ in NON_OK if s.startswith("error: ")],
        tokens=tokens, truncated=0, duplicate_ids=0, duplicate_id_examples=[], runs=[], versions=library_versions(),
    )
    (out / "manifest.json").write_text(json.dumps(manifest.model_dump(), indent=2))
    size = sum(p.stat().st_size for p in out.glob("part-*.parquet"))
    info = {"params": params, "dir": str(out), "parts": parts, "bytes": size, "seconds": seconds,
            "rows_by_status": manifest.rows_by_status}
    marker.write_text(json.dumps(info, indent=2))
    log.info(f"N={n:,}: generated {parts} parts, {size / GB:.2f} GB in {seconds:.0f} s -> {out}")
    return out, {**info, "reused": False}


