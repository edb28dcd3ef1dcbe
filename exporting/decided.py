"""Reading a selection's decisions parts, and the score parts they stand for (a decisions part holds the rows of one
score part, row for row): a part that cannot be read is refused in one line that names it and says how to repair it.

Of a score part only what the export checks each source row against is read: ``n_bytes``, the UTF-8 bytes scoring
read of the row's text (of its window's slice, for windows; of the tokens kept, for a truncated row), and
``truncated``. Scores written before ``n_bytes`` existed have none: their rows are then checked by id only.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from hardfocus.errors import HardfocusError
from hardfocus.storage import redact

SCORED = pa.schema([pa.field("n_bytes", pa.int64()), pa.field("truncated", pa.bool_())])
_DAMAGED = (OSError, pa.ArrowException, ValueError)


def read_decisions(url: str, columns: list[str]) -> pa.Table:
    """Some columns of a decisions part."""
    fs, path = url_to_fs(url)
    try:
        with fs.open(path, "rb") as f:
            return pq.read_table(f, columns=columns)
    except _DAMAGED as exc:
        raise HardfocusError(f"the decisions part {redact(url)} cannot be read ({' '.join(str(exc).split())[:200]}): it "
                             "was damaged after it was written; run `hardfocus select` again with --overwrite") from None


def read_scored(url: str | None, rows: int) -> pa.Table:
    """``n_bytes`` and ``truncated`` of the ``rows`` rows of the score part at ``url`` (nulls where it has no
    ``n_bytes``, or there is no score part to read: ``url`` None)."""
    if url is None:
        return pa.table([pa.nulls(rows, f.type) for f in SCORED], schema=SCORED)
    fs, path = url_to_fs(url)
    try:
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            table = pf.read(columns=[c for c in SCORED.names if c in names])
    except _DAMAGED as exc:
        raise HardfocusError(f"the score part {redact(url)} cannot be read ({' '.join(str(exc).split())[:200]}), and the "
                             "export checks each row against it: give the scores the selection was made from with "
                             "--scores") from None
    if table.num_rows != rows:
        raise HardfocusError(f"the score part {redact(url)} holds {table.num_rows} rows where its decisions part holds "
                             f"{rows}: they are not the scores the selection was made from; give those with --scores")
    return pa.table([table[f.name] if f.name in table.column_names else pa.nulls(rows, f.type) for f in SCORED],
                    schema=SCORED)
