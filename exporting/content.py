"""Each exported row's text checked against what scoring read of it: its UTF-8 bytes, the scores' ``n_bytes``.

Ids catch a row that moved only where the corpus has an id column (a default id, ``<rel>#<row>``, is the row's
position), and the size check of a shard only a change of size: a copy whose lines are in another order has the
size that was scored. The bytes of every scored row's text are in the scores (plain text: the row's, or of the
tokens kept where it was truncated, so at most the row's; a window's: its slice's), so a row whose text is not the
one scored is refused, naming it. Rows scoring did not read (``n_bytes`` null) and scores without ``n_bytes`` are
not checked.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hardfocus.errors import HardfocusError
from hardfocus.storage import redact


def check_text_bytes(texts: pa.ChunkedArray | None, rows: np.ndarray, decided: pa.Table, url: str, column: str) -> None:
    """``texts`` (the exported rows' text column, windows sliced; None where the source has no such column) against
    ``decided``'s ``n_bytes`` and ``truncated``, row by row (``rows``: their indices in the shard)."""
    if "n_bytes" not in decided.column_names:
        return
    scored = _numpy(decided["n_bytes"].is_valid())
    if not scored.any():
        return
    if texts is None or not _is_text(texts.type):
        i = int(np.flatnonzero(scored)[0])
        raise HardfocusError(f"row {rows[i]} of the input shard {redact(url)} has no text in a column '{column}' where "
                             "scoring read one: the input changed since it was scored; export from the inputs that were "
                             "scored, or score and select again")
    got = _numpy(pc.fill_null(pc.binary_length(texts), -1)).astype(np.int64)
    want = _numpy(pc.fill_null(decided["n_bytes"], 0)).astype(np.int64)
    cut = _numpy(pc.fill_null(decided["truncated"], False)) if "truncated" in decided.column_names else np.zeros(len(want), bool)
    wrong = scored & np.where(cut, got < want, got != want)
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        what = f"at least {want[i]}" if cut[i] else str(want[i])
        raise HardfocusError(
            f"row {rows[i]} of the input shard {redact(url)} has {max(int(got[i]), 0)} bytes of text where scoring read "
            f"{what}: it is not the row that was scored (the shard's rows reordered or changed since); export from the "
            "inputs that were scored, or score and select again"
        )


def _numpy(values) -> np.ndarray:
    return (values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values).to_numpy(zero_copy_only=False)


def _is_text(t: pa.DataType) -> bool:
    return any(check(t) for check in (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view,
                                      pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view))
