"""The export's tasks, plain functions the Ray Data job and the local executor run alike: each streams one input
shard once (or, phase two of ``--resample``, shuffles one output shard) and yields a record per part it wrote or
found written, as ``{"record": <json>}`` rows.

A shard's output is a deterministic function of the decisions and the parameters: its rows to export, in row order,
cut into parts of ``shard_rows`` (``part-<shard>-<piece>``); with ``--resample`` its copies, drawn from seeded
streams, cut into phase-one files of whole rows (``spill/s<shard>-u<unit>``), each holding a row group per output
shard. So a rerun keeps every part whose row count checks out, and streams a shard only from the first row of the
first part still missing.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from exporting.config import ExportConfig
from exporting.copies import COPIES, ORDER, SHARDS, copy_counts, spill_units, stream
from exporting.output import ExportDir, PartFile, of_shard, part_name, spill_name
from exporting.rows import added_columns, check_no_clash, joined, shard_decisions
from exporting.schemas import conformed
from exporting.selection import ShardJob
from hardfocus.errors import HardfocusError
from hardfocus.readers.source_rows import source_batches
from hardfocus.storage import redact

log = logging.getLogger(__name__)

SPILL_PARTS = 4  # a phase-one file holds about this many output shards' worth of copies: what a task keeps in memory


@dataclass(frozen=True)
class Piece:
    """Rows ``[lo, hi)`` of a shard's decisions to export, and the file they go to."""

    name: str
    lo: int
    hi: int


def task_row(job: ShardJob, existing: set[str], **extra) -> dict:
    """A shard's task as a row of the Ray dataset, plain JSON; ``existing``: the files of the output there now."""
    fields = {**job.__dict__, "decisions": list(job.decisions), "score_parts": list(job.score_parts),
              "sample_columns": list(job.sample_columns)}
    return {"task": json.dumps({"job": fields, "existing": sorted(of_shard(existing, job.index)), **extra})}


def export_shard(row: dict, cfg: ExportConfig, fence=None) -> Iterator[dict]:
    """Export one shard (``row``: :func:`task_row`); phase one of ``--resample`` where the row says ``outputs``."""
    task = json.loads(row["task"])
    job = ShardJob(**{**task["job"], "decisions": tuple(task["job"]["decisions"]),
                      "score_parts": tuple(task["job"]["score_parts"]),
                      "sample_columns": tuple(task["job"]["sample_columns"])})
    out = ExportDir(cfg.output, fence)
    try:
        if "outputs" in task:
            records = _spill_shard(job, cfg, out, set(task["existing"]), task["outputs"])
        else:
            records = _export_shard(job, cfg, out, set(task["existing"]))
        for record in records:
            yield {"record": json.dumps(record)}
    except HardfocusError as exc:  # a user's error: to the driver as a record, not a Ray traceback
        yield {"record": json.dumps({"kind": "error", "error": str(exc)})}


def _export_shard(job: ShardJob, cfg: ExportConfig, out: ExportDir, existing: set[str]) -> Iterator[dict]:
    decided, unreadable = shard_decisions(job, cfg.band, cfg.by)
    n, size = decided.num_rows, cfg.shard_rows
    pieces = [Piece(part_name(cfg.format, job.index, k), lo, min(lo + size, n)) for k, lo in enumerate(range(0, n, size))]
    todo = []
    for piece in pieces:  # a part written before holds what its name says (a commit, of this export's identity)
        found = out.part_file(piece.name, cfg.format) if piece.name in existing else None
        if found is not None and found[0] == piece.hi - piece.lo:
            yield _part_record(job.index, piece.name, decided["band"][piece.lo : piece.hi], found[1], written=False)
        else:
            todo.append(piece)
    band = (cfg.prefix or "") + "band"
    for piece, table in _joined_pieces(job, cfg, decided, unreadable, todo, resampled=False):
        written = out.write_part(piece.name, table, cfg.format)
        yield _part_record(job.index, piece.name, table[band], written, written=True)  # counted as written


def _part_record(shard: int | None, name: str, bands: pa.ChunkedArray, file: PartFile, written: bool) -> dict:
    counts = {d["values"]: d["counts"] for d in pc.value_counts(bands).to_pylist()}
    return {"kind": "part", "shard": shard, "name": name, "rows": len(bands), "bands": counts, "written": written,
            "bytes": file.bytes, "xxh3": file.xxh3}


def _spill_shard(job: ShardJob, cfg: ExportConfig, out: ExportDir, existing: set[str], outputs: int) -> Iterator[dict]:
    """Phase one of ``--resample``: the shard's copies, each assigned an output shard, into phase-one files."""
    decided, unreadable = shard_decisions(job, cfg.band, cfg.by)
    weights = decided["weight"].to_numpy(zero_copy_only=False)
    copies = copy_counts(weights, cfg.resample, stream(cfg.seed, COPIES, job.index))
    first_copy = np.cumsum(copies) - copies
    targets = stream(cfg.seed, SHARDS, job.index).integers(0, outputs, size=int(copies.sum()))
    units = spill_units(copies, SPILL_PARTS * cfg.shard_rows)
    pieces, todo = [Piece(spill_name(job.index, u), lo, hi) for u, (lo, hi) in enumerate(units)], []

    def planned(piece: Piece) -> tuple[np.ndarray, np.ndarray]:  # (output shard of each copy, row of each copy)
        lo = first_copy[piece.lo]
        count = int(copies[piece.lo : piece.hi].sum())
        return targets[lo : lo + count], np.repeat(np.arange(piece.hi - piece.lo), copies[piece.lo : piece.hi])

    def groups_of(shards: np.ndarray) -> list[list[int]]:
        counts = np.bincount(shards, minlength=outputs)
        return [[int(b), int(counts[b])] for b in np.flatnonzero(counts)]

    def record(piece: Piece, rows: int, groups: list[list[int]], written: bool) -> dict:
        return {"kind": "spill", "shard": job.index, "name": piece.name, "rows": rows,
                "copies": sum(n for _, n in groups), "weight": float(weights[piece.lo : piece.hi].astype(np.float64).sum()),
                "groups": groups, "written": written}

    for piece in pieces:
        groups = groups_of(planned(piece)[0])
        found = out.spill_groups(piece.name) if piece.name in existing else None
        if found is not None and found[1] == groups:
            yield record(piece, piece.hi - piece.lo, groups, written=False)
        else:
            todo.append(piece)
    for piece, table in _joined_pieces(job, cfg, decided, unreadable, todo, resampled=True):
        shards, rows = planned(piece)
        order = np.argsort(shards, kind="stable")
        copied = table.take(pa.array(rows[order]))
        groups = groups_of(shards[order])
        bounds = np.cumsum([0] + [n for _, n in groups])
        parts = [(b, copied.slice(bounds[i], n)) for i, (b, n) in enumerate(groups)]
        out.write_spill(piece.name, parts, copied.schema)
        yield record(piece, table.num_rows, [[b, t.num_rows] for b, t in parts], written=True)  # counted as written


def _joined_pieces(job: ShardJob, cfg: ExportConfig, decided: pa.Table, unreadable: np.ndarray, todo: list[Piece],
                   resampled: bool) -> Iterator[tuple[Piece, pa.Table]]:
    """Each piece of ``todo`` (in order) as its joined rows: the shard streamed once, from the first row a piece needs
    to the last (a JSON Lines shard from the first row of the band to the last, so that every run infers its columns'
    types alike, stepping over the lines scoring could not parse, which the reader would refuse); rows of pieces
    written already are skipped."""
    if not todo:
        return
    added = added_columns(cfg.band, job.windowed, cfg.by, cfg.prefix or "")
    rows = decided["row"].to_numpy()
    start, stop = int(rows[todo[0].lo]), int(rows[todo[-1].hi - 1]) + 1
    if job.format == "jsonl":  # its columns' types are inferred over the range read: always the same range, then
        start, stop = int(rows[0]), int(rows[-1]) + 1
    pending = list(reversed(todo))  # the next piece last
    held: pa.Table | None = None  # joined rows of decisions [held_lo, held_lo + held.num_rows)
    held_lo = position = todo[0].lo  # position: the first decision not joined yet
    end = start
    for first, batch in _batches(job, start, stop, unreadable):
        check_no_clash(batch.column_names, added, job.url)  # each batch: JSON Lines ranges may bring new columns
        end = first + batch.num_rows
        hi = int(np.searchsorted(rows, end, side="left"))
        lo = max(position, pending[-1].lo)  # rows of pieces written already are not joined
        position = max(position, hi)
        if hi <= lo:
            continue
        part = joined(batch, first, decided.slice(lo, hi - lo), job, added, cfg.by, resampled)
        if held is None:
            held, held_lo = part, lo
        else:
            held = pa.concat_tables([held, part], promote_options="permissive")
        while pending and pending[-1].hi <= position:
            piece = pending.pop()
            yield piece, held.slice(piece.lo - held_lo, piece.hi - piece.lo)
            keep_from = pending[-1].lo if pending else position
            held, held_lo = (held.slice(keep_from - held_lo), keep_from) if keep_from < held_lo + held.num_rows else (None, 0)
        if not pending:
            break
    if pending:
        raise HardfocusError(
            f"the input shard {redact(job.url)} ends at row {end - 1}, and the selection decided on rows up to "
            f"{stop - 1}: the input changed since it was scored; export from the inputs that were scored"
        )


def _batches(job: ShardJob, start: int, stop: int, unreadable: np.ndarray) -> Iterator[tuple[int, pa.Table]]:
    """The source rows [start, stop) in batches; of a JSON Lines shard, the lines scoring could not read (and that are
    not exported) left unparsed, as rows of nulls: one read of the range, in one schema."""
    skip = unreadable[(unreadable >= start) & (unreadable < stop)] if job.format == "jsonl" else unreadable[:0]
    yield from source_batches(job.url, job.format, job.compression, start, stop, skip=skip.tolist())


def shuffle_output(row: dict, cfg: ExportConfig, fence=None) -> Iterator[dict]:
    """Phase two of ``--resample``: one output shard's copies, read from every phase-one file, in a seeded order."""
    task = json.loads(row["task"])
    out = ExportDir(cfg.output, fence)
    name, rows, shard = task["name"], task["rows"], task["output"]
    try:
        found = out.part_file(name, cfg.format) if task["exists"] else None
        written = found is None or found[0] != rows
        if written:
            tables = [out.read_row_group(spill, index) for spill, index in task["sources"]]
            schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(task["schema"])))
            table = pa.concat_tables([conformed(t, schema) for t in tables])
            if table.num_rows != rows:
                raise HardfocusError(f"the phase-one files of {redact(cfg.output)} hold {table.num_rows} copies for {name}, "
                                     f"where they said {rows}: they changed meanwhile; rerun the export")
            order = stream(cfg.seed, ORDER, shard).permutation(rows)
            file = out.write_part(name, table.take(pa.array(order)), cfg.format)
        else:
            file = found[1]
        yield {"record": json.dumps({"kind": "part", "shard": None, "name": name, "rows": rows, "bands": {"kept": rows},
                                     "written": written, "bytes": file.bytes, "xxh3": file.xxh3})}
    except HardfocusError as exc:
        yield {"record": json.dumps({"kind": "error", "error": str(exc)})}
