"""Write what selection decided, part by part: for each score part its ``decisions/`` part (a row per scored row)
and, where it has kept rows, a training part (the kept rows with ``loss_rank`` and ``weight``, ``input_ids`` and
``loss_spans`` carried over), into a selected/ being staged (:meth:`scoring.foundation.stagedir.StageDir.staged`:
a temporary directory renamed into place locally, the output itself on an object store, ``summary.json`` last).

Each score part is read once, for both. Parts are independent, so they are written on a thread pool (Parquet
reads, zstd and writes release the GIL): ``workers`` at a time, each holding one part's rows.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from scoring.foundation.decisions import DECISION_BANDS, DECISIONS_DIR, EXCLUDED, KEPT, SOURCE_KEY, decisions_schema
from scoring.foundation.errors import HardfocusError
from scoring.foundation.stagedir import StageDir
from scoring.foundation.storage import redact
from selection.bands import BANDS
from selection.schema import selected_schema
from selection.scores import ScoreParts

log = logging.getLogger(__name__)

_UNSET = 255
_BAND_TYPE = pa.dictionary(pa.int8(), pa.string())
_DECISION_WINDOW_COLUMNS = ("document_id", "window", "windows", "char_start", "char_stop")


@dataclass(frozen=True)
class Decided:
    """Every row's decision as arrays sorted by global row: the ranked rows (band: an index into DECISION_BANDS,
    rank, score, loss, weight: NaN outside kept) and the excluded ones (with their reason)."""

    rows: np.ndarray
    band: np.ndarray
    rank: np.ndarray
    score: np.ndarray
    loss: np.ndarray
    weight: np.ndarray
    excluded_rows: np.ndarray
    reasons: pl.Series

    @classmethod
    def of(cls, ranked: pl.DataFrame, weight: np.ndarray, excluded: pl.DataFrame, column: str) -> Decided:
        """``ranked`` sorted by ``_row`` (as ranking leaves it), ``weight`` aligned with it (NaN outside kept).
        The arrays are views of the frame's columns where polars allows it: no second copy of a corpus' rows."""
        if not ranked["_row"].is_sorted():
            raise ValueError("ranked rows must be sorted by _row")
        excluded = excluded.sort("_row")
        band = ranked["band"].to_physical().to_numpy()  # BANDS' codes are DECISION_BANDS' first three
        assert BANDS.categories.to_list() == list(DECISION_BANDS[:3])
        return cls(
            rows=ranked["_row"].to_numpy(), band=band, rank=ranked["loss_rank"].to_numpy(),
            score=ranked[column].to_numpy(), loss=ranked["loss"].to_numpy(), weight=weight,
            excluded_rows=excluded["_row"].to_numpy(), reasons=excluded["reason"],
        )


def write_selection(parts: ScoreParts, decided: Decided, stage: StageDir, progress: bool = True,
                    workers: int | None = None) -> int:
    """Write every score part's decisions and kept rows; returns how many training parts were written.

    Every row of every part must be either ranked or excluded, once: a row in neither (or both) is refused, so
    ``decisions/`` accounts for each scored row. Each write first checks that this run still holds the lock.
    """
    offsets = np.asarray(parts.offsets + [sum(parts.rows)], dtype=np.int64)
    r_bounds = np.searchsorted(decided.rows, offsets)
    e_bounds = np.searchsorted(decided.excluded_rows, offsets)
    kept_per_part = np.add.reduceat(decided.band == DECISION_BANDS.index(KEPT), r_bounds[:-1]) if len(decided.rows) \
        else np.zeros(len(parts.urls), dtype=np.int64)
    kept_per_part = np.where(r_bounds[:-1] == r_bounds[1:], 0, kept_per_part)  # reduceat over an empty range
    kept_index = np.cumsum(kept_per_part > 0) - 1
    sources = _part_sources(parts)
    windowed = bool(set(_DECISION_WINDOW_COLUMNS) <= parts.common_columns)
    stage.fs.makedirs(posixpath.join(stage.path, DECISIONS_DIR), exist_ok=True)

    def write(index: int) -> None:
        _write_part(parts, decided, stage, index, (int(r_bounds[index]), int(r_bounds[index + 1])),
                    (int(e_bounds[index]), int(e_bounds[index + 1])), int(offsets[index]),
                    int(kept_index[index]) if kept_per_part[index] else None, sources[index], windowed)

    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in tqdm(pool.map(write, range(len(parts.urls))), total=len(parts.urls), unit="parts",
                      disable=not progress, mininterval=1.0):
            pass
    return int((kept_per_part > 0).sum())


def _part_sources(parts: ScoreParts) -> list[dict]:
    """Per score part: the index of its scores directory and its file name (the decisions part's footer record)."""
    dirs = [d for d, manifest in enumerate(parts.manifests) for _ in range(manifest.parts)]
    return [{"scores": d, "part": posixpath.basename(url), "rows": rows}
            for d, url, rows in zip(dirs, parts.urls, parts.rows)]


def _write_part(parts: ScoreParts, decided: Decided, stage: StageDir, index: int, ranked: tuple[int, int],
                excluded: tuple[int, int], offset: int, kept_part: int | None, source: dict, windowed: bool) -> None:
    n = parts.rows[index]
    local = decided.rows[slice(*ranked)] - offset
    band = np.full(n, _UNSET, dtype=np.uint8)
    band[local] = decided.band[slice(*ranked)]
    out_rows = decided.excluded_rows[slice(*excluded)] - offset
    both = (band[out_rows] != _UNSET).any()
    band[out_rows] = DECISION_BANDS.index(EXCLUDED)
    if both or (band == _UNSET).any():
        raise HardfocusError(f"selection decided {len(local)} ranked and {len(out_rows)} excluded rows of the "
                             f"{n} of {redact(parts.urls[index])}: a row without exactly one decision (a bug)")
    spans = parts.has_loss_spans and parts.part_has_loss_spans[index]
    columns = ["sample_id", "shard", "row", "group", "loss",
               *(["input_ids"] if parts.has_input_ids else []), *(["loss_spans"] if spans else []),
               *(_DECISION_WINDOW_COLUMNS if windowed else ())]
    source_table = parts.read_part(index, columns)
    loss = source_table["loss"].to_numpy(zero_copy_only=False).astype(np.float32)
    if not np.array_equal(loss[local], decided.loss[slice(*ranked)]):
        raise HardfocusError(f"rows of {redact(parts.urls[index])} differ from the ones ranked: it changed meanwhile; "
                             "rerun `hardfocus select`")
    decisions = _decisions_table(source_table, decided, band, local, ranked, out_rows, excluded, n, windowed)
    kept_rows = np.flatnonzero(band == DECISION_BANDS.index(KEPT))
    stage.check_lock()
    record = {SOURCE_KEY: json.dumps(source).encode()}
    with stage.fs.open(posixpath.join(stage.path, DECISIONS_DIR, f"part-{index:05d}.parquet"), "wb") as f:
        pq.write_table(decisions.replace_schema_metadata(record), f, compression="zstd")
    if kept_part is not None:
        kept = _kept_table(parts, source_table.take(pa.array(kept_rows)), decisions.take(pa.array(kept_rows)), spans)
        with stage.fs.open(posixpath.join(stage.path, f"part-{kept_part:05d}.parquet"), "wb") as f:
            pq.write_table(kept, f, compression="zstd")
    del source_table, decisions
    pa.default_memory_pool().release_unused()  # Arrow's allocator would otherwise keep every part's peak


def _decisions_table(source: pa.Table, decided: Decided, band: np.ndarray, local: np.ndarray, ranked: tuple[int, int],
                     out_rows: np.ndarray, excluded: tuple[int, int], n: int, windowed: bool) -> pa.Table:
    def spread(values: np.ndarray, where: np.ndarray) -> pa.Array:  # ranked rows' values, null elsewhere
        full = np.full(n, np.nan, dtype=np.float32)
        full[where] = values
        return pa.array(full, pa.float32(), mask=np.isnan(full))

    reason = pl.Series("reason", [None] * n, dtype=pl.String).scatter(out_rows, decided.reasons[slice(*excluded)]) \
        if len(out_rows) else pl.Series("reason", [None] * n, dtype=pl.String)
    bands = pa.DictionaryArray.from_arrays(pa.array(band.astype(np.int8)), pa.array(DECISION_BANDS))
    table = {
        "sample_id": source["sample_id"], "shard": source["shard"], "row": source["row"], "group": source["group"],
        "loss": source["loss"].cast(pa.float32()),
        "score": spread(decided.score[slice(*ranked)], local),
        "band": bands, "reason": reason.to_arrow(),
        "rank": spread(decided.rank[slice(*ranked)], local),
        "weight": spread(decided.weight[slice(*ranked)], local),
        **({c: source[c] for c in _DECISION_WINDOW_COLUMNS} if windowed else {}),
    }
    return pa.table(table, schema=decisions_schema(windowed))


def _kept_table(parts: ScoreParts, source: pa.Table, decisions: pa.Table, part_spans: bool) -> pa.Table:
    schema = selected_schema(parts.has_input_ids, parts.has_loss_spans)
    if parts.has_loss_spans:  # plain-text parts selected with conversation parts: null = every token a target
        spans = source["loss_spans"] if part_spans else pa.nulls(source.num_rows, schema.field("loss_spans").type)
    return pa.table(
        {
            "sample_id": source["sample_id"], "shard": source["shard"], "row": source["row"], "group": source["group"],
            "loss": source["loss"].cast(pa.float32()),
            "loss_rank": decisions["rank"], "weight": decisions["weight"],
            **({"input_ids": source["input_ids"]} if parts.has_input_ids else {}),
            **({"loss_spans": spans} if parts.has_loss_spans else {}),
        },
        schema=schema,
    )

