"""Training data: the token ids (and static weights) of ``selected/``, ``scores/`` or tokenised shards.

Nothing is re-tokenised: scoring stored ``input_ids`` and selection carried them over.
- ``selected/`` (has ``summary.json``, written last): ``input_ids`` and ``weight``. A selected/
  without ``summary.json`` is an interrupted selection and is refused.
- ``scores/`` (has ``manifest.json``, written last): the rows with status ``ok``, weight 1 (the
  ERM baseline over everything scored); the others are counted and reported, never trained on.
- any other directory of ``part-*.parquet`` with an ``input_ids`` column (``weight`` optional).

Each source may carry ``loss_spans`` (:data:`scoring.schema.LOSS_SPANS_TYPE`: the target token
ranges of instruction data, whose loss covers the responses only); parts without the column, and
null values, are plain text (every token but the first is a target). Rows whose spans hold no
target token are refused, like rows of fewer than 2 tokens.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from fsspec.core import url_to_fs

from scoring.errors import HardfocusError
from scoring.output import SCORES_MANIFEST_FILE
from scoring.schema import LOSS_SPANS_TYPE, Status
from selection.schema import SUMMARY_FILE

log = logging.getLogger(__name__)

COLUMNS = ("sample_id", "group", "weight", "input_ids", "loss_spans")


@dataclass
class TrainingData:
    """All training rows in memory (token ids are compact: 4 bytes each) and where they came from."""

    table: pa.Table  # COLUMNS; weight float32, loss_spans null for plain-text rows
    kinds: dict[str, str] = field(default_factory=dict)  # source dir -> selected | scores | tokens
    not_ok: int = 0  # scores rows skipped because their status is not ok
    has_weights: bool = False

    def __len__(self) -> int:
        return self.table.num_rows


def load_training_data(paths: list[str]) -> TrainingData:
    """Read every source; raise a :class:`HardfocusError` that names the directory when one is unusable."""
    tables, kinds, not_ok, weighted = [], {}, 0, []
    for path in paths:
        fs, root = url_to_fs(path)
        fs.invalidate_cache(root)  # s3fs caches listings: see parts written since
        if not fs.isdir(root):
            raise HardfocusError(f"training data '{path}' is not a directory (give selected/ or scores/ directories)")
        parts = sorted(fs.glob(posixpath.join(root, "part-*.parquet")))
        if fs.exists(posixpath.join(root, SUMMARY_FILE)):
            kind = "selected"
        elif fs.exists(posixpath.join(root, SCORES_MANIFEST_FILE)):
            kind = "scores"
        elif parts and _has_no_marker_but_looks_selected(fs, parts[0]):
            raise HardfocusError(
                f"'{path}' has selected/ shards (or an unreadable part) but no {SUMMARY_FILE}: the selection did not "
                "finish; rerun `hardfocus select`"
            )
        elif parts:
            kind = "tokens"
        else:
            raise HardfocusError(f"'{path}' holds no part-*.parquet files: not a selected/ or scores/ directory")
        if not parts:
            raise HardfocusError(f"'{path}' is a finished {kind}/ directory without rows")
        table, skipped = _read_parts(fs, parts, kind, path)
        tables.append(table)
        kinds[path] = kind
        not_ok += skipped
        weighted.append(kind != "scores" and table.column("weight").null_count == 0)
    table = pa.concat_tables(tables)
    if table.num_rows == 0:
        raise HardfocusError(f"no trainable rows in {paths}")
    if not_ok:
        log.info("skipped %d scored rows whose status is not ok (they have no loss to train on)", not_ok)
    return TrainingData(table=table, kinds=kinds, not_ok=not_ok, has_weights=all(weighted))


def _has_no_marker_but_looks_selected(fs, part: str) -> bool:
    """A selected/ shard in a directory without summary.json, or a part cut short (a run killed while writing it)."""
    try:
        with fs.open(part, "rb") as f:
            names = pq.read_schema(f).names
    except (pa.ArrowInvalid, OSError):
        return True
    return "loss_rank" in names


def _read_parts(fs, parts: list[str], kind: str, where: str) -> tuple[pa.Table, int]:
    tables, skipped = [], 0
    for part in parts:
        try:
            with fs.open(part, "rb") as f:
                t = pq.read_table(f)
        except (pa.ArrowInvalid, OSError) as exc:
            raise HardfocusError(f"cannot read '{part}' of '{where}': {exc}; was it written completely?") from exc
        if "input_ids" not in t.column_names:
            raise HardfocusError(
                f"'{part}' has no input_ids column: score with --keep-input-ids (the default) so training can reuse the tokens"
            )
        if kind == "scores":
            ok = pc.equal(t.column("status"), Status.OK.value)
            skipped += t.num_rows - pc.sum(ok).as_py() if t.num_rows else 0
            t = t.filter(ok)
        n = t.num_rows
        columns = {
            "sample_id": t.column("sample_id") if "sample_id" in t.column_names else pa.array([f"{part}#{i}" for i in range(n)]),
            "group": t.column("group").cast(pa.string()) if "group" in t.column_names else pa.nulls(n, pa.string()),
            "weight": t.column("weight").cast(pa.float32()) if "weight" in t.column_names else pa.array(np.ones(n, np.float32)),
            "input_ids": t.column("input_ids").cast(pa.list_(pa.int32())),
            "loss_spans": _loss_spans(t, part),
        }
        tables.append(pa.table(columns))
    table = pa.concat_tables(tables)
    short = pc.sum(pc.less(pc.list_value_length(table.column("input_ids")), 2)).as_py() or 0
    if short:
        raise HardfocusError(f"{short} rows of '{where}' have fewer than 2 tokens: nothing to predict (were they scored ok?)")
    _check_spans(table, where)
    return table, skipped


def _loss_spans(t: pa.Table, part: str) -> pa.ChunkedArray | pa.Array:
    if "loss_spans" not in t.column_names:
        return pa.nulls(t.num_rows, LOSS_SPANS_TYPE)
    try:
        return t.column("loss_spans").cast(LOSS_SPANS_TYPE)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise HardfocusError(f"'{part}' has a loss_spans column of type {t.schema.field('loss_spans').type}, expected {LOSS_SPANS_TYPE}") from exc


def _check_spans(table: pa.Table, where: str) -> None:
    """Refuse malformed spans (null bounds, start < 0, stop < start) and rows whose spans select no target token."""
    spans = table.column("loss_spans").combine_chunks()
    if spans.null_count == len(spans):
        return
    flat = spans.flatten()  # the spans of the non-null rows, in row order
    row = pc.list_parent_indices(spans).to_numpy()
    start, stop = pc.struct_field(flat, "start"), pc.struct_field(flat, "stop")
    if start.null_count or stop.null_count:
        raise HardfocusError(f"rows of '{where}' have loss_spans with a null start or stop")
    start, stop = start.to_numpy().astype(np.int64), stop.to_numpy().astype(np.int64)
    if (bad := (start < 0) | (stop < start)).any():
        i = int(np.flatnonzero(bad)[0])
        raise HardfocusError(
            f"{int(bad.sum())} loss spans of '{where}' are not ranges [start, stop) with 0 <= start <= stop "
            f"(e.g. {{start: {start[i]}, stop: {stop[i]}}} of sample {table.column('sample_id')[int(row[i])]})"
        )
    n_tokens = pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False)
    has_target = np.zeros(len(spans), dtype=bool)
    has_target[row[np.minimum(stop, n_tokens[row]) > np.maximum(start, 1)]] = True  # token 0 is never a target
    no_target = np.flatnonzero(spans.is_valid().to_numpy(zero_copy_only=False) & ~has_target)
    if len(no_target):
        raise HardfocusError(
            f"{len(no_target)} rows of '{where}' have loss_spans that select no target token (e.g. sample "
            f"{table.column('sample_id')[int(no_target[0])]}): nothing to train on (were they scored ok?)"
        )


class TokenDataset(torch.utils.data.Dataset):
    """Map-style dataset over a :class:`TrainingData` table: ``{"input_ids", "weight", "loss_spans"}`` per row.

    ``loss_spans`` is a list of ``{"start", "stop"}`` (the row's target token ranges), or None for
    plain text (and for a table without the column).
    """

    def __init__(self, table: pa.Table):
        ids = table.column("input_ids").combine_chunks()
        self._offsets = ids.offsets.to_numpy()
        self._values = ids.values.to_numpy()
        self._weights = table.column("weight").to_numpy().astype(np.float32)
        self._span_offsets = None
        if "loss_spans" in table.column_names and table.column("loss_spans").null_count < table.num_rows:
            spans = table.column("loss_spans").combine_chunks()
            # null rows get an empty range of spans here; _span_valid tells them from an empty list
            self._span_valid = spans.is_valid().to_numpy(zero_copy_only=False)
            lengths = pc.list_value_length(spans).fill_null(0).to_numpy()
            self._span_offsets = np.concatenate([[0], np.cumsum(lengths)])
            flat = spans.flatten()
            self._starts = pc.struct_field(flat, "start").to_numpy().astype(np.int64)
            self._stops = pc.struct_field(flat, "stop").to_numpy().astype(np.int64)

    def __len__(self) -> int:
        return len(self._weights)

    def __getitem__(self, i: int) -> dict:
        return {
            "input_ids": self._values[self._offsets[i] : self._offsets[i + 1]],
            "weight": float(self._weights[i]),
            "loss_spans": self._spans(i),
        }

    def _spans(self, i: int) -> list[dict[str, int]] | None:
        if self._span_offsets is None or not self._span_valid[i]:
            return None
        lo, hi = self._span_offsets[i], self._span_offsets[i + 1]
        return [{"start": int(a), "stop": int(b)} for a, b in zip(self._starts[lo:hi], self._stops[lo:hi])]
