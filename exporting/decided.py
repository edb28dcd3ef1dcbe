"""Reading a selection's decisions parts, and the score parts they stand for (a decisions part holds the rows of one
score part, row for row), through the verified reader (:mod:`hardfocus.parts`): a part that is missing, damaged, or
not of the selection (or the scores) the export opened is refused in one line that names it and says how to repair it.

Of a score part only what the export checks each source row against is read: ``source_digest``, the digest of the
sample scoring read from the row (:func:`hardfocus.readers.shard.sample_digest`).
"""

from __future__ import annotations

import pyarrow as pa

from hardfocus.contracts.scores import SOURCE_DIGEST
from hardfocus.parts import Expected, read_part

SCORED = pa.schema([pa.field(SOURCE_DIGEST, pa.uint64())])


def read_decisions(url: str, columns: list[str], expected: Expected) -> pa.Table:
    """Some columns of a decisions part, checked against what the export opened."""
    return read_part(url, expected, columns)


def read_scored(url: str, rows: int, expected: Expected) -> pa.Table:
    """``source_digest`` of the ``rows`` rows of the score part at ``url``, checked against what the export opened."""
    table = read_part(url, expected, [SOURCE_DIGEST])
    if table.num_rows != rows:
        raise expected.refuse(url, f"holds {table.num_rows} rows where its decisions part holds {rows}: it is not the "
                                   "score part the selection was made from; give those scores with --scores")
    return table
