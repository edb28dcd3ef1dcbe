"""Write the training shards: each score part's kept rows, with loss_rank and weight, input_ids carried over
(and loss_spans, when the scores have them).

Locally everything goes into a temporary directory beside the output, ``summary.json`` last, and the
directory is renamed into place: a crash never leaves a half-written selected/ that training
would accept (training also refuses a selected/ without ``summary.json``). On an object store a
rename is copy + delete, not a commit: the parts are written straight into the output and
``summary.json``, written last, is the commit marker; an output being replaced loses its
``summary.json`` first, so a selection killed midway is never readable as complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
import uuid
from collections.abc import Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from tqdm.auto import tqdm

from scoring.foundation.errors import HardfocusError
from scoring.foundation.storage import fs_url, is_local, prefetched
from selection.schema import SUMMARY_FILE, selected_schema
from selection.scores import ScoreParts

log = logging.getLogger(__name__)


@contextlib.contextmanager
def staged_output(output: str, overwrite: bool) -> Iterator[str]:
    """Yield a temporary directory URL; on success it replaces ``output`` (moved aside first).

    On an object store: yield ``output`` itself, emptied first (``summary.json`` before the rest).
    """
    fs, path = url_to_fs(output)
    fs.invalidate_cache(path)
    if fs.exists(path) and not overwrite:
        unfinished = not is_local(fs) and not fs.exists(posixpath.join(path, SUMMARY_FILE))
        raise HardfocusError(
            f"'{output}' already exists{' (an unfinished selection: no ' + SUMMARY_FILE + ')' if unfinished else ''}; "
            "pass --overwrite to replace it, or choose another --output"
        )
    if not is_local(fs):
        yield from _in_place(fs, path, output)
        return
    parent, name = posixpath.split(path.rstrip("/"))
    for stale in fs.glob(posixpath.join(parent, f".{name}.tmp-*")):  # left by a killed run: never a result
        log.warning("removing %s, the staging directory of an interrupted selection", stale)
        fs.rm(stale, recursive=True)
    tmp = posixpath.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        fs.makedirs(tmp, exist_ok=False)
    except OSError as exc:
        raise HardfocusError(f"cannot write next to '{output}': {exc}") from exc
    try:
        yield fs_url(fs, tmp)
    except BaseException:
        fs.rm(tmp, recursive=True)
        raise
    old = None
    if fs.exists(path):
        old = posixpath.join(parent, f".{name}.old-{uuid.uuid4().hex[:8]}")
        fs.mv(path, old, recursive=True)
    fs.mv(tmp, path, recursive=True)
    if old:
        fs.rm(old, recursive=True)


def _in_place(fs, path: str, output: str) -> Iterator[str]:
    if fs.exists(path):
        summary = posixpath.join(path, SUMMARY_FILE)
        if fs.exists(summary):
            fs.rm_file(summary)  # first: from here on the old selection is not complete
        fs.rm(path, recursive=True)
        fs.invalidate_cache(path)
    try:
        yield output
    except BaseException:
        with contextlib.suppress(Exception):  # best effort: without summary.json the parts are never read
            fs.invalidate_cache(path)
            if fs.exists(path):
                fs.rm(path, recursive=True)
        raise


def write_shards(parts: ScoreParts, kept: pl.DataFrame, out_url: str, progress: bool = True) -> int:
    """One output part per score part that has kept rows; returns how many were written.

    ``kept`` has ``_row`` (global row index into ``parts``), ``loss_rank`` and ``weight``.
    """
    fs, out = url_to_fs(out_url)
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
            raise RuntimeError(f"rows of {parts.urls[index]} differ from the ones ranked; did it change meanwhile?")
        with fs.open(posixpath.join(out, f"part-{written:05d}.parquet"), "wb") as f:
            pq.write_table(table, f, compression="zstd")
        written += 1
        del source, table
        pa.default_memory_pool().release_unused()  # Arrow's allocator would otherwise keep every part's peak
    return written


def write_summary(out_url: str, summary: dict) -> None:
    fs, out = url_to_fs(out_url)
    with fs.open(posixpath.join(out, SUMMARY_FILE), "wb") as f:
        f.write(json.dumps(summary, indent=2).encode())
