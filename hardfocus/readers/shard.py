"""A shard (one input file) and the rows read from it: what the readers (:mod:`hardfocus.readers.parquet`,
:mod:`hardfocus.readers.jsonl`, :mod:`hardfocus.readers.arrow`) produce, how a row's cells become a sample or a status,
and :class:`ShardReader`, what each of them offers the one table of formats (:mod:`hardfocus.readers.formats`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import xxhash

from hardfocus.contracts.scores import ERROR_PREFIX, Status
from hardfocus.sample_format import Columns, Message

MAX_ROW_BYTES = 64 << 20  # the default --max-row-bytes: a row over it gets a status instead of being parsed


def over_cap(size: int, cap: int) -> str:
    return f"{ERROR_PREFIX}row of {size} bytes over the cap of {cap} bytes (--max-row-bytes)"


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (pyarrow's messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass(frozen=True)
class Shard:
    """One input file. ``url`` is what fsspec opens (credentials included: name it in a message only through
    :func:`hardfocus.storage.redact`); ``rel`` names it in sample ids.

    ``modified``: what the listing says about the file's version, an opaque string to compare for equality only:
    locally ``st_mtime_ns`` (as a decimal string); elsewhere the ETag (or etag, generation), else the last-modified
    time, the listing (or ``fs.info`` for a single file) gives; None when it gives none. A different value means
    the file was rewritten (its content may still be the same); the same value means it was not, as far as the
    filesystem tells.
    """

    url: str
    rel: str
    format: str  # a name of the table of formats (:data:`hardfocus.readers.formats.READERS`)
    compression: str | None
    size: int
    modified: str | None = None


@dataclass
class RowBlock:
    """Rows ``start..stop`` of a shard, column by column. ``status`` is set where reading failed.

    ``values`` holds the text (format ``text``) or the conversation, a list of messages (the others).
    """

    values: list[str | list[Message] | None] = field(default_factory=list)
    ids: list[str | None] = field(default_factory=list)
    groups: list[str | None] = field(default_factory=list)
    status: list[str | None] = field(default_factory=list)

    def append(self, value=None, id=None, group=None, status=None) -> None:  # noqa: A002 - mirrors the column name
        self.values.append(value)
        self.ids.append(id)
        self.groups.append(group)
        self.status.append(status)

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class UnitRows:
    """Rows ``[start, stop)`` of a shard: ``block`` is None for a skipped unit (counted, never parsed).

    ``consumed`` is the share of the shard's bytes read so far, for progress by bytes.
    """

    start: int
    stop: int
    block: RowBlock | None
    consumed: float


def null_id(column: str) -> str:
    return f"{ERROR_PREFIX}null id in column '{column}'"


class _Undecodable:
    """A binary cell that is not UTF-8: its row gets ``invalid_utf8``."""


UNDECODABLE = _Undecodable()


def sample_value(cells: list, columns: Columns) -> tuple[str | list[Message] | None, str | None]:
    """One row's sample from its cells (in ``columns.sample_columns`` order): (value, status or None)."""
    if any(c is UNDECODABLE for c in cells):
        return None, Status.INVALID_UTF8.value
    if columns.format == "text":
        return cells[0], None
    if columns.format == "prompt_response":
        for (_, name), cell in zip(columns.sample_columns, cells):
            if cell is not None and not isinstance(cell, str):
                return None, f"{ERROR_PREFIX}field '{name}' is {type(cell).__name__}, not a string"
        prompt, response, system = (cells + [None])[:3]
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages.append({"role": "user", "content": prompt or ""})
        if response is not None:
            messages.append({"role": "assistant", "content": response})
        return messages, None
    return messages_value(cells[0], columns.messages)


def messages_value(value, name: str) -> tuple[list[Message] | None, str | None]:
    """A ``messages`` cell checked: a list of objects with a string ``role`` and a string (or null) ``content``."""
    if value is None:
        return None, Status.EMPTY.value
    if not isinstance(value, list):
        return None, f"{ERROR_PREFIX}field '{name}' is {type(value).__name__}, not a list of messages"
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return None, f"{ERROR_PREFIX}message {i} of '{name}' is not an object with a string 'role'"
        content = m.get("content")
        if content is not None and not isinstance(content, str):
            return None, f"{ERROR_PREFIX}message {i} of '{name}' has a {type(content).__name__} 'content', not a string"
        messages.append({"role": m["role"], "content": content or ""})
    return messages, None


def sample_digest(value: str | bytes | list[Message] | None) -> int | None:
    """The xxh3-64 digest of a row's sample, as scoring records it (``source_digest``) and export checks it: of a
    text, its UTF-8 bytes (a binary cell's bytes as they are); of a conversation, its messages as compact JSON. None
    for a row without a sample (unreadable, or null) and for a text that is not UTF-8 (lone surrogates of a JSON
    ``\\ud800`` escape: scored as ``invalid_utf8``)."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            data = value.encode("utf-8")
        elif isinstance(value, bytes):
            data = value
        else:
            data = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return None
    return xxhash.xxh3_64_intdigest(data)


def str_or_none(value) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class ShardReader:
    """What one input format offers every stage: its file names, a cheap early check of the configured columns, the
    rows as scoring reads them (a unit's samples, each with a status where it cannot be read), and the rows as they
    are (every source column unchanged, for export). Row indices are the same in both."""

    name: str
    suffixes: tuple[str, ...]  # a file is a shard of this format when its (lower-cased) name ends so
    compressions: dict[str, str]  # the compressed forms it also reads: name ending -> compression
    check_columns: Callable[[Shard, Columns], None]
    # (shard, columns, rows per unit, unit starts to skip, the cap on a row's bytes) -> the units, in order
    units: Callable[[Shard, Columns, int, frozenset[int], int], Iterator[UnitRows]]
    # (shard, start, stop or None, rows per table, rows to leave unparsed) -> (first row, table), in order
    rows: Callable[[Shard, int, int | None, int, frozenset[int]], Iterator[tuple[int, pa.Table]]]


def rebatched(batches: Iterable[tuple[int, pa.RecordBatch]], start: int, stop: int | None,
              batch_rows: int) -> Iterator[tuple[int, pa.Table]]:
    """The rows [start, stop) of consecutive (first row, batch) pairs, as tables of ``batch_rows`` rows (the last
    one shorter)."""
    held: list[pa.RecordBatch] = []
    have, first = 0, start
    for offset, batch in batches:
        lo = max(start - offset, 0)
        hi = batch.num_rows if stop is None else min(batch.num_rows, stop - offset)
        if hi <= lo:
            if stop is not None and offset >= stop:
                break
            continue
        held.append(batch.slice(lo, hi - lo))
        have += hi - lo
        while have >= batch_rows:
            table = pa.Table.from_batches(held)
            yield first, table.slice(0, batch_rows)
            rest = table.slice(batch_rows)
            held, have, first = rest.to_batches(), rest.num_rows, first + batch_rows
        if stop is not None and offset + batch.num_rows >= stop:
            break
    if have:
        yield first, pa.Table.from_batches(held)
