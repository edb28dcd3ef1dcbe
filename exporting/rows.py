"""A shard's decisions, and source rows joined to them: every source column unchanged, plus the columns export adds.

A decision names its row by ``(shard, row)``; the source row at that index must carry the sample id scoring gave it
(the id column's value, else ``<rel>#<row>``; a window's is ``<that>#w<k>``), else the input changed since it was
scored. Windows of a document share its source row: each is exported with its own text, the source text sliced at
the characters its tokens cover (``char_start``/``char_stop``, Python string indices from the tokenizer's offsets), or,
``--by document``, the document once, with the band and weight its windows share. Each row's text is checked against
the bytes scoring read of it (:mod:`exporting.content`), and the source's schema metadata kept
(:mod:`exporting.schemas`).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from exporting.content import check_source_digests
from exporting.decided import SCORED, read_decisions, read_scored
from exporting.schemas import carried_metadata
from hardfocus.contracts.decisions import EXCLUDED
from hardfocus.contracts.scores import SOURCE_DIGEST
from hardfocus.errors import HardfocusError
from hardfocus.storage import redact

# the columns export adds, in order, with their types; ``reason`` only where excluded rows are exported, the window
# columns only on windowed scores (by document: ``windows`` only)
ADDED = {
    "sample_id": pa.string(), "band": pa.string(), "weight": pa.float32(), "score": pa.float32(),
    "loss": pa.float32(), "reason": pa.string(), "document_id": pa.string(), "window": pa.int32(),
    "windows": pa.int32(),
}
_WINDOW = ("document_id", "window", "windows", "char_start", "char_stop")


def added_columns(band: str, windowed: bool, by: str, prefix: str) -> dict[str, str]:
    """The columns export adds: their own name -> the name they get in the output (``prefix`` before it)."""
    names = ["sample_id", "band", "weight", "score"]
    names += [] if by == "document" else ["loss"]
    names += ["reason"] if band in (EXCLUDED, "all") else []
    names += (["windows"] if by == "document" else ["document_id", "window", "windows"]) if windowed else []
    return {name: prefix + name for name in names}


def check_no_clash(columns: list[str], added: dict[str, str], url: str) -> None:
    """A source column named like one export adds would be shadowed: refuse, naming the flag that renames ours."""
    clash = [name for name in added.values() if name in columns]
    if clash:
        raise HardfocusError(
            f"the input shard {redact(url)} has columns named like those export adds ({', '.join(clash)}): pass "
            f"--prefix (e.g. --prefix hf_) to name export's columns {', '.join('hf_' + n for n in list(added)[:3])}, ..."
        )


# rows scoring could not read (bad JSON, bad UTF-8, ...): a reader of the source rows may refuse them too
UNREADABLE = ("status: error", "status: invalid_utf8")


def shard_decisions(job, band: str, by: str) -> tuple[pa.Table, np.ndarray]:
    """The decisions of one shard (``job``: its :class:`exporting.selection.ShardJob`) for the rows to export, in row
    order (windows in window order): ``row``, ``sample_id``, ``band`` (a string), ``weight``, ``score``, ``loss``,
    ``reason``, the window columns, and the digest of what scoring read of each (``source_digest``, from the score part
    of each decisions part); by document, a row per document (``sample_id`` is its id) with the band and weight its
    counted windows share. Every part is read through the verified reader, against the selection and scores the export
    opened. And the rows not exported that scoring could not read, for the reader to step around."""
    columns = ["sample_id", "shard", "row", "band", "reason", "score", "loss", "weight", *(_WINDOW if job.windowed else ())]
    tables = []
    for url, scored in zip(job.decisions, job.score_parts):
        table = read_decisions(url, columns, job.decisions_expected(url))
        read = read_scored(scored, table.num_rows, job.score_part_expected(scored))  # row for row
        tables.append(pa.table([*table.columns, *read.columns], names=[*table.column_names, *read.column_names]))
    if not tables:
        return pa.table({**{c: pa.array([], ADDED.get(c, pa.int64())) for c in columns},
                         **{f.name: pa.array([], f.type) for f in SCORED}}), np.zeros(0, np.int64)
    frame = pl.from_arrow(pa.concat_tables(tables)).with_columns(pl.col("band").cast(pl.String))
    frame = frame.filter(pl.col("shard") == job.rel).sort(["row", "window"] if job.windowed else ["row"])
    if by == "document":
        frame = documents(frame, job.decisions[0])
    unreadable = frame.filter(pl.col("reason").is_in(UNREADABLE))["row"].unique().sort()
    if band != "all":
        frame = frame.filter(pl.col("band") == band)
    unreadable = np.setdiff1d(unreadable.to_numpy(), frame["row"].to_numpy())
    return frame.drop("shard").to_arrow(), unreadable


def documents(frame: pl.DataFrame, where: str) -> pl.DataFrame:
    """A row per document (the windows of one source row): its band and weight are those of its windows that were
    ranked (a ``too_short`` tail is excluded as a window but leaves its document whole); a document none of whose
    windows was ranked is excluded, with the first window's reason. Its source digest is its windows' (each is of the
    document's text)."""
    counted = pl.col("band") != EXCLUDED
    scored = [pl.col(SOURCE_DIGEST).first()] if SOURCE_DIGEST in frame.columns else []
    docs = frame.group_by("row", maintain_order=True).agg(
        pl.col("shard").first(), pl.col("document_id").first().alias("sample_id"), pl.col("windows").first(),
        pl.col("band").filter(counted).first().fill_null(EXCLUDED),
        pl.col("weight").filter(counted).first(), pl.col("score").filter(counted).first(),
        pl.col("loss").filter(counted).first(), *scored,
        _reason=pl.col("reason").first(), _bands=pl.col("band").filter(counted).n_unique(), _weights=pl.col("weight").filter(counted).n_unique(),
    )
    split = docs.filter((pl.col("_bands") > 1) | (pl.col("_weights") > 1))
    if split.height:
        raise HardfocusError(f"the windows of document '{split['sample_id'][0]}' ({redact(where)}) have different bands or "
                             "weights: the selection ranked windows, not documents; select again with --by document")
    reason = pl.when(pl.col("band") == EXCLUDED).then(pl.col("_reason"))
    return docs.with_columns(reason=reason).drop("_reason", "_bands", "_weights")


def joined(source: pa.Table, first: int, decided: pa.Table, job, added: dict[str, str], by: str,
           resampled: bool) -> pa.Table:
    """The source rows of ``decided`` (rows of the table ``source``, whose first row is ``first``), each checked to
    carry the decision's sample id, with export's columns after the source's (weight 1 where ``resampled``)."""
    rows = decided["row"].to_numpy()
    rows_of = source.take(pa.array(rows - first))
    _check_ids(rows_of, rows, decided, job, by)
    check_source_digests(rows_of, rows, decided, job)  # the whole source row, before a window is cut out of it
    if job.windowed and by != "document":
        rows_of = _window_texts(rows_of, rows, decided, job)
    n = decided.num_rows
    for name, out in added.items():
        if name == "weight" and resampled:
            values = pa.array(np.ones(n, dtype=np.float32))
        else:
            values = decided[name].combine_chunks().cast(ADDED[name])
        rows_of = rows_of.append_column(out, values)
    return rows_of.replace_schema_metadata(carried_metadata(source.schema.metadata,
                                                            {out: ADDED[name] for name, out in added.items()}))


def _check_ids(rows_of: pa.Table, rows: np.ndarray, decided: pa.Table, job, by: str) -> None:
    """Each row must carry the id scoring gave it, else the input changed since (another file at the same path)."""
    if job.id_column and job.id_column in rows_of.column_names:
        values = rows_of[job.id_column].to_pylist()
        ids = [f"{job.rel}#{r}" if v is None else str(v) for v, r in zip(values, rows)]
    else:
        ids = [f"{job.rel}#{r}" for r in rows]
    if job.windowed and by != "document":
        ids = [f"{i}#w{k}" for i, k in zip(ids, decided["window"].to_pylist())]
    wanted = decided["sample_id"].to_pylist()
    for i, (got, want) in enumerate(zip(ids, wanted)):
        if got != want:
            raise HardfocusError(
                f"row {rows[i]} of the input shard {redact(job.url)} has the sample id '{got}' where the selection "
                f"decided on '{want}': the input changed since it was scored; export from the inputs that were scored, "
                "or score and select again"
            )


def _window_texts(rows_of: pa.Table, rows: np.ndarray, decided: pa.Table, job) -> pa.Table:
    """The text column replaced by each window's own characters, ``text[char_start:char_stop]``."""
    column = job.text_column
    if column not in rows_of.column_names:
        raise HardfocusError(f"the input shard {redact(job.url)} has no column '{column}', which was scored: the input "
                             "changed since it was scored")
    kind = rows_of.schema.field(column).type
    out = []
    for i, (text, a, b) in enumerate(zip(rows_of[column].to_pylist(), decided["char_start"].to_pylist(),
                                         decided["char_stop"].to_pylist())):
        raw = isinstance(text, bytes)
        if raw:
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:  # scored as invalid_utf8: one window, nothing to cut
                out.append(text)
                continue
        if text is None or a is None or b is None:
            out.append(None if text is None else text.encode() if raw else text)
            continue
        if b > len(text):
            raise HardfocusError(f"row {rows[i]} of the input shard {redact(job.url)} has {len(text)} characters of text "
                                 f"where window {decided['window'][i]} was scored up to character {b}: the input changed "
                                 "since it was scored")
        piece = text[a:b]
        out.append(piece.encode() if raw else piece)
    index = rows_of.column_names.index(column)
    return rows_of.set_column(index, rows_of.schema.field(column), pa.array(out, kind))
