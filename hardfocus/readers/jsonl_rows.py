"""A JSON Lines shard's rows as they are: each line parsed into an object, the objects of a range made into Arrow tables
in one schema (every key a column, in order of first appearance, its type unified over the range), for export.

Row indices are the line splitter's (:func:`hardfocus.readers.jsonl.jsonl_lines`), which scoring numbers its rows by.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow as pa

from hardfocus.errors import HardfocusError
from hardfocus.readers.jsonl import jsonl_lines
from hardfocus.readers.shard import Shard, one_line
from hardfocus.storage import redact

_NO_CAP = 1 << 62  # full rows are wanted here: no line is too long to read (scoring's --max-row-bytes is its own)
_NO_INT_TYPE = "integers past 2**63 and negative ones, which no one integer type holds"
_UNFIT = (pa.ArrowException, OverflowError, TypeError, ValueError)  # what Arrow raises for values of no one type


def jsonl_rows(shard: Shard, start: int, stop: int | None, batch_rows: int,
               skip: frozenset[int]) -> Iterator[tuple[int, pa.Table]]:
    """Rows [start, stop) as tables of ``batch_rows`` rows under one schema, the range's (so a range longer than
    ``batch_rows`` is read twice: once for the schema, once for the rows); ``skip``: rows not to parse (lines scoring
    could not read), each a row of nulls. A line that is not a JSON object, or a column whose types cannot be
    unified, is a :class:`HardfocusError` that names the shard, the row and the column."""
    batches = _jsonl_objects(shard, start, stop, batch_rows, skip)
    head = next(batches, None)
    if head is None:
        return
    second = next(batches, None)
    if second is None:  # the whole range in one batch: its own schema is the range's
        yield head[0], _table(shard, *head, _schema(shard, *head, None))
        return
    schema = _schema(shard, *head, None)
    for first, objs in (second, *batches):
        schema = _schema(shard, first, objs, schema)
    batches.close()
    for first, objs in _jsonl_objects(shard, start, stop, batch_rows, skip):  # again, every batch in the range's schema
        yield first, _table(shard, first, objs, schema)

def _jsonl_objects(shard: Shard, start: int, stop: int | None, batch_rows: int,
                skip: frozenset[int]) -> Iterator[tuple[int, list[dict]]]:
    """(first row, parsed objects) of the range, ``batch_rows`` at a time; an empty object for a row of ``skip``."""
    objs: list[dict] = []
    first = start
    lines = jsonl_lines(shard, cap=_NO_CAP)
    try:
        for index, line in lines:
            if index < start:
                continue
            if stop is not None and index >= stop:
                break
            objs.append({} if index in skip else _json_object(shard, index, line))
            if len(objs) == batch_rows:
                yield first, objs
                objs, first = [], index + 1
    finally:
        lines.close()
    if objs:
        yield first, objs


def _json_object(shard: Shard, index: int, line: bytes) -> dict:
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HardfocusError(redact(f"row {index} of JSON Lines shard {shard.url} is not valid JSON: {one_line(exc)}")
                             ) from None
    if not isinstance(obj, dict):
        raise HardfocusError(redact(
            f"row {index} of JSON Lines shard {shard.url} is a JSON {type(obj).__name__}, not an object"
        ))
    return obj



def _schema(shard: Shard, first: int, objs: list[dict], schema: pa.Schema | None) -> pa.Schema:
    """``schema`` unified with the one ``objs`` infer (from row ``first``)."""
    try:
        return _unified(_inferred(objs).schema, schema)
    except _UNFIT as exc:
        bad = _first_bad_row(objs, schema)
        column = _conflicting_column(objs[: bad + 1], schema)
        ints = [v for v in (obj.get(column) for obj in objs[: bad + 1]) if isinstance(v, int) and not isinstance(v, bool)]
        why = _NO_INT_TYPE if ints and min(ints) < 0 and max(ints) >= 1 << 63 else one_line(exc)
        raise HardfocusError(redact(
            f"row {first + bad} of JSON Lines shard {shard.url}: its columns' types cannot be unified with the rows "
            f"before it (column '{column}': {why})"
        )) from None


def _inferred(objs: list[dict]) -> pa.Table:
    """The table ``objs`` make, every key a column (in order of first appearance; from_pylist takes the first
    object's keys only), the types inferred."""
    names = dict.fromkeys(k for obj in objs for k in obj)
    return pa.table({k: _column([obj.get(k) for obj in objs]) for k in names})


def _column(values: list) -> pa.Array:
    """The values as one array; integers beyond int64 (64-bit hashes) as uint64, which holds them all."""
    try:
        return pa.array(values)
    except OverflowError:
        return pa.array(values, pa.uint64())


def _unified(found: pa.Schema, schema: pa.Schema | None) -> pa.Schema:
    if schema is None:
        return found
    return pa.unify_schemas([_unsigned_where(schema, found), _unsigned_where(found, schema)], promote_options="permissive")


def _unsigned_where(schema: pa.Schema, other: pa.Schema) -> pa.Schema:
    """``schema`` with each int64 column that ``other`` has as uint64 made uint64 (Arrow would promote both to
    int64, where the values past 2**63 do not fit); a negative value in it is refused as the rows are built."""
    def unsigned(f: pa.Field) -> bool:
        return f.type == pa.int64() and other.get_field_index(f.name) >= 0 and other.field(f.name).type == pa.uint64()

    return pa.schema([f.with_type(pa.uint64()) if unsigned(f) else f for f in schema], metadata=schema.metadata)


def _conflicting_column(objs: list[dict], schema: pa.Schema | None) -> str:
    """The first column of ``objs`` whose values make no one type, or one that does not unify with ``schema``."""
    for name in dict.fromkeys(k for obj in objs for k in obj):
        try:
            _unified(pa.schema([pa.field(name, _column([obj.get(name) for obj in objs]).type)]), schema)
        except _UNFIT:
            return name
    return "?"


def _first_bad_row(objs: list[dict], schema: pa.Schema | None) -> int:
    """The index of the first object with which ``objs`` no longer make one table (whose schema unifies with
    ``schema``): a binary search, as a conflict once there stays with more rows."""
    def fails(k: int) -> bool:
        try:
            _unified(_inferred(objs[:k]).schema, schema)
            return False
        except _UNFIT:
            return True

    lo, hi = 0, len(objs)  # fails(lo) is False (no rows), fails(hi) is True
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fails(mid) else (mid, hi)
    return hi - 1


def _table(shard: Shard, first: int, objs: list[dict], schema: pa.Schema) -> pa.Table:
    try:
        return pa.Table.from_pylist(objs, schema=schema)
    except _UNFIT as exc:
        bad, field = _first_unfit(objs, schema)
        value = objs[bad].get(field.name)
        why = _NO_INT_TYPE if field.type == pa.uint64() and isinstance(value, int) and value < 0 else one_line(exc)
        raise HardfocusError(redact(
            f"row {first + bad} of JSON Lines shard {shard.url}: its columns' types cannot be unified with the rows "
            f"around it (column '{field.name}' is {field.type} there: {why})"
        )) from None


def _first_unfit(objs: list[dict], schema: pa.Schema) -> tuple[int, pa.Field]:
    """The first row, and its column, whose value does not fit ``schema``."""
    for i, obj in enumerate(objs):
        for field in schema:
            try:
                pa.array([obj.get(field.name)], field.type)
            except _UNFIT:
                return i, field
    return 0, schema.field(0)
