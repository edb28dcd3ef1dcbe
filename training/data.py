"""Training data: the token ids (and static weights) of ``selected/``, ``scores/`` or tokenised shards.

Nothing is re-tokenised: scoring stored ``input_ids`` and selection carried them over.
- ``selected/`` (has ``summary.json``, written last): ``input_ids`` and ``weight``. A selected/
  without ``summary.json`` is an interrupted selection and is refused.
- ``scores/`` (has ``manifest.json``, written last): the rows with status ``ok``, weight 1 (the
  ERM baseline over everything scored); the others are counted and reported, never trained on.
- any other directory of ``part-*.parquet`` with an ``input_ids`` column (``weight`` optional).
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
from scoring.output import MANIFEST_FILE
from scoring.schema import Status
from selection.schema import SUMMARY_FILE

log = logging.getLogger(__name__)

COLUMNS = ("sample_id", "group", "weight", "input_ids")


@dataclass
class TrainingData:
    """All training rows in memory (token ids are compact: 4 bytes each) and where they came from."""

    table: pa.Table  # COLUMNS; weight float32
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
        if not fs.isdir(root):
            raise HardfocusError(f"training data '{path}' is not a directory (give selected/ or scores/ directories)")
        parts = sorted(fs.glob(posixpath.join(root, "part-*.parquet")))
        if fs.exists(posixpath.join(root, SUMMARY_FILE)):
            kind = "selected"
        elif fs.exists(posixpath.join(root, MANIFEST_FILE)):
            kind = "scores"
        elif parts and _has_no_marker_but_looks_selected(fs, parts[0]):
            raise HardfocusError(
                f"'{path}' has selected/ shards but no {SUMMARY_FILE}: the selection did not finish; rerun `hardfocus select`"
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
    with fs.open(part, "rb") as f:
        names = pq.read_schema(f).names
    return "loss_rank" in names


def _read_parts(fs, parts: list[str], kind: str, where: str) -> tuple[pa.Table, int]:
    tables, skipped = [], 0
    for part in parts:
        with fs.open(part, "rb") as f:
            t = pq.read_table(f)
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
        }
        tables.append(pa.table(columns))
    table = pa.concat_tables(tables)
    short = pc.sum(pc.less(pc.list_value_length(table.column("input_ids")), 2)).as_py() or 0
    if short:
        raise HardfocusError(f"{short} rows of '{where}' have fewer than 2 tokens: nothing to predict (were they scored ok?)")
    return table, skipped


class TokenDataset(torch.utils.data.Dataset):
    """Map-style dataset over a :class:`TrainingData` table: ``{"input_ids", "weight"}`` per row."""

    def __init__(self, table: pa.Table):
        ids = table.column("input_ids").combine_chunks()
        self._offsets = ids.offsets.to_numpy()
        self._values = ids.values.to_numpy()
        self._weights = table.column("weight").to_numpy().astype(np.float32)

    def __len__(self) -> int:
        return len(self._weights)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self._values[self._offsets[i] : self._offsets[i + 1]], "weight": float(self._weights[i])}
