"""Training data in memory: the token ids (and static weights) of the sources :func:`training.sources.find_sources` checked.

Nothing is re-tokenised: scoring stored ``input_ids`` and selection carried them over. Each part
is read once and goes through :func:`training.sources.training_rows` (the checks and the one
schema the Ray Train path applies to its blocks too).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from fsspec.core import url_to_fs

from hardfocus.errors import HardfocusError
from hardfocus.parts import Expected, read_part
from hardfocus.storage import prefetched
from training.sources import TrainingSources, find_sources, training_rows

log = logging.getLogger(__name__)

COLUMNS = ("sample_id", "group", "input_ids", "weight", "loss_spans")


@dataclass
class TrainingData:
    """All training rows in memory (token ids are compact: 4 bytes each) and where they came from."""

    table: pa.Table  # COLUMNS; weight float32, loss_spans null for plain-text rows
    kinds: dict[str, str] = field(default_factory=dict)  # source dir -> selected | scores | tokens
    not_ok: int = 0  # scores rows skipped because their status is not ok
    has_weights: bool = False

    def __len__(self) -> int:
        return self.table.num_rows


def load_training_data(sources: TrainingSources | list[str]) -> TrainingData:
    """Read every part of the sources (found and checked first when given as paths)."""
    if not isinstance(sources, TrainingSources):
        sources = find_sources(sources)
    tables = []
    for source in sources.sources:
        reads = prefetched(lambda item: read_part_columns(*item), zip(source.parts, source.columns, source.expected))
        for part, table in zip(source.parts, reads):
            tables.append(training_rows(table, source.kind, source.path, part=part))
    table = pa.concat_tables(tables)
    if table.num_rows != sources.rows:  # the footers and the status column said otherwise: a part changed meanwhile
        raise HardfocusError(f"{list(sources.kinds)} changed while being read ({sources.rows} rows expected, {table.num_rows} read)")
    if sources.not_ok:
        log.info("skipped %d scored rows whose status is not ok (they have no loss to train on)", sources.not_ok)
    return TrainingData(table=table, kinds=sources.kinds, not_ok=sources.not_ok, has_weights=sources.has_weights)


def read_part_columns(url: str, columns: tuple[str, ...], expected: Expected | None) -> pa.Table:
    """A part's columns, through the verified reader where it has a contract (else as they are: parts written by
    hand)."""
    if expected is not None:
        return read_part(url, expected, columns)
    fs, path = url_to_fs(url)
    try:
        with fs.open(path, "rb") as f:
            return pq.read_table(f, columns=list(columns))
    except (pa.ArrowInvalid, OSError) as exc:
        raise HardfocusError(f"cannot read '{url}': {exc}; was it written completely?") from exc


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
