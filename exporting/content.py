"""Each exported row checked against what scoring read of it: the digest of its sample (its text, or its
conversation), which scoring recorded as ``source_digest`` (:func:`hardfocus.readers.shard.sample_digest`).

Ids catch a row that moved only where the corpus has an id column (a default id, ``<rel>#<row>``, is the row's
position), and the size check of a shard only a change of size: a copy whose rows are in another order, or whose text
was edited at the same length, has the size that was scored. The digest of every scored row's sample is in the
scores, so a row whose sample is not the one scored is refused, naming it. Rows scoring could not read (no digest)
are not checked.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import xxhash

from hardfocus.contracts.scores import SOURCE_DIGEST
from hardfocus.errors import HardfocusError
from hardfocus.readers.shard import sample_digest, sample_value
from hardfocus.storage import redact


def check_source_digests(rows_of: pa.Table, rows: np.ndarray, decided: pa.Table, job) -> None:
    """The source rows ``rows_of`` (before any window is cut out of them) against ``decided``'s ``source_digest``, row
    by row (``rows``: their indices in the shard; ``job``: the shard's :class:`exporting.selection.ShardJob`)."""
    want = decided[SOURCE_DIGEST].to_pylist()
    if not any(w is not None for w in want):
        return
    columns = job.columns
    names = [name for _, name in columns.sample_columns]
    present = [name for name in names if name in rows_of.column_names]
    if columns.format == "text" and present and _is_text(rows_of.schema.field(names[0]).type):
        got = text_digests(rows_of[names[0]])
    else:  # a column the rows lack is null in each (a JSON Lines key no row of the range has): so scoring read it
        cells = [rows_of[name].to_pylist() if name in present else [None] * rows_of.num_rows for name in names]
        got = [sample_digest(_sample([column[i] for column in cells], columns)) if w is not None else None
               for i, w in enumerate(want)]
    for i, wanted in enumerate(want):
        if wanted is not None and got[i] != wanted:
            raise HardfocusError(
                f"row {rows[i]} of the input shard {redact(job.url)} is not the row that was scored (its "
                f"{'text' if columns.format == 'text' else 'conversation'} differs from what scoring read: the shard's "
                "rows were reordered or changed since); export from the inputs that were scored, or score and select "
                "again"
            )


def _sample(cells: list, columns):
    """A row's sample from its cells, as the readers make it (a text cell as it is: bytes are digested as bytes)."""
    return cells[0] if columns.format == "text" else sample_value(cells, columns)[0]


def text_digests(texts: pa.ChunkedArray) -> list[int | None]:
    """:func:`~hardfocus.readers.shard.sample_digest` of each cell of a text (or binary) column, read off its Arrow
    buffers without making a Python string of each."""
    out: list[int | None] = []
    for chunk in texts.chunks:
        data = chunk.cast(pa.large_binary())
        offsets = np.frombuffer(data.buffers()[1], np.int64, count=len(data) + 1, offset=data.offset * 8)
        values = memoryview(data.buffers()[2] or b"")
        valid = data.is_valid().to_numpy(zero_copy_only=False) if data.null_count else None
        for i in range(len(data)):
            out.append(None if valid is not None and not valid[i] else xxhash.xxh3_64_intdigest(values[offsets[i]:offsets[i + 1]]))
    return out


def _is_text(kind: pa.DataType) -> bool:
    return any(check(kind) for check in (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view,
                                         pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view))
