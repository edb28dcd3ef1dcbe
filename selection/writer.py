"""Write the training shards: each score part's kept rows, with loss_rank and weight, input_ids carried over
(and loss_spans, when the scores have them), into a selected/ being staged
(:meth:`scoring.foundation.stagedir.StageDir.staged`: a temporary directory renamed into place locally, the
output itself on an object store, ``summary.json`` last either way).
"""

from __future__ import annotations

import logging
import posixpath

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from scoring.foundation.errors import HardfocusError
from scoring.foundation.stagedir import StageDir
from scoring.foundation.storage import prefetched, redact
from selection.schema import selected_schema
from selection.scores import ScoreParts

log = logging.getLogger(__name__)


def write_shards(parts: ScoreParts, kept: pl.DataFrame, stage: StageDir, progress: bool = True) -> int:
    """One output part per score part that has kept rows; returns how many were written.

    ``kept`` has ``_row`` (global row index into ``parts``), ``loss_rank`` and ``weight``. Each write first
    checks that this run still holds the output's lock.
    """
    fs, out = stage.fs, stage.path
    if not kept["_row"].is_sorted():
        kept = kept.sort("_row")
    offsets = np.asarray(parts.offsets, dtype=np.int64)
    global_rows = kept["_row"].to_numpy()
    loss_rank, weight = kept["loss_rank"].to_numpy(), kept["weight"].to_numpy()
    part_of = np.searchsorted(offsets, global_rows, side="right") - 1
    bounds = np.flatnonzero(np.diff(part_of, prepend=-1, append=-1))  # where the part index changes
    columns = ["sample_id", "group", "loss"] + (["input_ids"] if parts.has_input_ids else [])
    schema = selected_schema(parts.has_input_ids, parts.has_loss_spans)
    written = 0
    ranges = list(zip(bounds[:-1], bounds[1:]))

    def spans_in(index: int) -> bool:
        return parts.has_loss_spans and parts.part_has_loss_spans[index]

    def read(lo_hi: tuple[int, int]) -> pa.Table:
        index = int(part_of[lo_hi[0]])
        return parts.read_part(index, columns + (["loss_spans"] if spans_in(index) else []))

    sources = prefetched(read, ranges)
    for lo, hi in tqdm(ranges, unit="parts", disable=not progress, mininterval=1.0):
        index = int(part_of[lo])
        part_spans = spans_in(index)
        source = next(sources).take(pa.array(global_rows[lo:hi] - offsets[index]))
        if parts.has_loss_spans:  # plain-text parts selected with conversation parts: null = every token a target
            spans = source["loss_spans"] if part_spans else pa.nulls(hi - lo, schema.field("loss_spans").type)
        table = pa.table(
            {
                "sample_id": source["sample_id"],
                "group": source["group"],
                "loss": source["loss"].cast(pa.float32()),
                "loss_rank": pa.array(loss_rank[lo:hi], pa.float32()),
                "weight": pa.array(weight[lo:hi], pa.float32()),
                **({"input_ids": source["input_ids"]} if parts.has_input_ids else {}),
                **({"loss_spans": spans} if parts.has_loss_spans else {}),
            },
            schema=schema,
        )
        if not np.array_equal(table["loss"].to_numpy(), kept["loss"][lo:hi].to_numpy()):
            raise HardfocusError(f"rows of {redact(parts.urls[index])} differ from the ones ranked: it changed meanwhile; "
                                 "rerun `hardfocus select`")
        stage.check_lock()
        with fs.open(posixpath.join(out, f"part-{written:05d}.parquet"), "wb") as f:
            pq.write_table(table, f, compression="zstd")
        written += 1
        del source, table
        pa.default_memory_pool().release_unused()  # Arrow's allocator would otherwise keep every part's peak
    return written
