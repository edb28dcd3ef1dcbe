"""The Parquet contract of ``selected/``: the training shards (one row per selected sample).

Selection writes it and training reads it; it lives here, in the base package every stage may
import, because a stage never imports another stage (and ``import hardfocus.contracts.selected`` would load
selection's machinery into every Ray Train worker). :mod:`hardfocus.contracts.selected` is the writer's name for it.
"""

from __future__ import annotations

import pyarrow as pa

from hardfocus.contracts.scores import LOSS_SPANS_TYPE
from hardfocus.errors import HardfocusError

SELECTED_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("shard", pa.string()),  # where the row came from (absent in selections of before decisions/)
        pa.field("row", pa.int64()),
        pa.field("group", pa.string()),
        pa.field("loss", pa.float32(), nullable=False),
        pa.field("loss_rank", pa.float32(), nullable=False),  # share of its scope with a higher loss: 0 = the highest
        pa.field("weight", pa.float32(), nullable=False),  # mean 1 over the selected set (or each group)
        pa.field("input_ids", pa.list_(pa.int32())),  # absent when the scores were written without them
        pa.field("loss_spans", LOSS_SPANS_TYPE),  # the scores' target token ranges; absent for plain-text scores
    ]
)
OPTIONAL_COLUMNS = ("shard", "row", "input_ids", "loss_spans")

SUMMARY_FILE = "summary.json"  # written last: a selected/ without it is incomplete and is refused


def selected_schema(with_input_ids: bool, with_loss_spans: bool = False) -> pa.Schema:
    """The schema of a selected/ part; without ``loss_spans`` it is the schema from before conversations."""
    drop = [name for name, keep in (("input_ids", with_input_ids), ("loss_spans", with_loss_spans)) if not keep]
    return pa.schema([f for f in SELECTED_SCHEMA if f.name not in drop])


def check_selected_schema(schema: pa.Schema, where: str) -> None:
    """Raise a :class:`HardfocusError` naming every column that is missing or has the wrong type."""
    problems = []
    for field in SELECTED_SCHEMA:
        if field.name not in schema.names:
            if field.name not in OPTIONAL_COLUMNS:
                problems.append(f"missing column '{field.name}'")
        elif schema.field(field.name).type != field.type:
            problems.append(f"column '{field.name}' is {schema.field(field.name).type}, expected {field.type}")
    if problems:
        raise HardfocusError(f"{where} is not a hardfocus selected/ shard: " + "; ".join(problems))
