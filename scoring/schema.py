"""The Parquet contract of ``scores/``: one row per input row, always.

Writers build tables with :func:`scores_table`, which casts to :data:`SCORES_SCHEMA`;
readers call :func:`check_scores_schema`, which says what differs.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

import pyarrow as pa

from scoring.errors import HardfocusError


class Status(StrEnum):
    """Why a row has (or has no) loss. ``error: <message>`` is written for anything else."""

    OK = "ok"
    EMPTY = "empty"  # null or whitespace-only text
    TOO_SHORT = "too_short"  # fewer than 2 tokens: no position to predict
    INVALID_UTF8 = "invalid_utf8"


ERROR_PREFIX = "error: "
NON_FINITE_LOSS = ERROR_PREFIX + "non-finite loss"  # the model produced NaN/inf for this row


def is_input_error(status: str) -> bool:
    """A row that could not be read as text (``empty`` and ``too_short`` are valid, if useless, data)."""
    return status == Status.INVALID_UTF8.value or status.startswith(ERROR_PREFIX)

SCORES_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("group", pa.string()),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("loss", pa.float32()),
        pa.field("nll_sum", pa.float64()),
        pa.field("truncated", pa.bool_(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("input_ids", pa.list_(pa.int32())),
    ]
)

REQUIRED_COLUMNS = [f.name for f in SCORES_SCHEMA if f.name != "input_ids"]


def scores_schema(with_input_ids: bool = True) -> pa.Schema:
    """The schema of a score part file; ``input_ids`` is optional (on by default)."""
    return SCORES_SCHEMA if with_input_ids else SCORES_SCHEMA.remove(SCORES_SCHEMA.get_field_index("input_ids"))


def scores_table(columns: dict[str, Iterable], with_input_ids: bool = True) -> pa.Table:
    """Build a table in the exact scores schema (missing columns are an error, extra ones too)."""
    schema = scores_schema(with_input_ids)
    if set(columns) != set(schema.names):
        raise ValueError(f"scores columns {sorted(columns)} != schema {sorted(schema.names)}")
    return pa.table({name: pa.array(columns[name], type=schema.field(name).type) for name in schema.names}, schema=schema)


def check_scores_schema(schema: pa.Schema, where: str) -> None:
    """Raise a :class:`HardfocusError` naming every column that is missing or has the wrong type."""
    problems = []
    for field in SCORES_SCHEMA:
        if field.name not in schema.names:
            if field.name in REQUIRED_COLUMNS:
                problems.append(f"missing column '{field.name}'")
            continue
        actual = schema.field(field.name).type
        if actual != field.type:
            problems.append(f"column '{field.name}' is {actual}, expected {field.type}")
    if problems:
        raise HardfocusError(f"{where} is not a hardfocus scores file: " + "; ".join(problems))
