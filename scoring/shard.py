"""A shard (one input file) and the rows read from it: what the readers (:mod:`scoring.read_parquet`,
:mod:`scoring.read_jsonl`, :mod:`scoring.read_arrow`) produce, and how a row's cells become a sample or a status."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from scoring.foundation.sample_format import Columns, Message
from scoring.foundation.scores import ERROR_PREFIX, Status


def over_cap(size: int, cap: int) -> str:
    return f"{ERROR_PREFIX}row of {size} bytes over the cap of {cap} bytes (--max-row-bytes)"


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (pyarrow's messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass(frozen=True)
class Shard:
    """One input file. ``url`` is what fsspec opens (credentials included: name it in a message only through
    :func:`scoring.foundation.storage.redact`); ``rel`` names it in sample ids.

    ``modified``: what the listing says about the file's version, an opaque string to compare for equality only:
    locally ``st_mtime_ns`` (as a decimal string); elsewhere the ETag (or etag, generation), else the last-modified
    time, the listing (or ``fs.info`` for a single file) gives; None when it gives none. A different value means
    the file was rewritten (its content may still be the same); the same value means it was not, as far as the
    filesystem tells.
    """

    url: str
    rel: str
    format: Literal["parquet", "jsonl", "arrow"]
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


def str_or_none(value) -> str | None:
    return None if value is None else str(value)
