"""Columns a format cannot hold as they are, converted for it: binary in JSON Lines, decoded as the UTF-8 text it holds
(scoring reads a binary text column that way); a struct with no fields (``{}`` in every row of a JSON Lines field) in
Parquet, which stores data in leaf columns only, as JSON text (Arrow's ``arrow.json`` type, Parquet's JSON logical type,
what ``datasets``' ``Json`` feature reads), and back where the export reads its own phase-one files.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from hardfocus.errors import HardfocusError

_TEXT = {pa.binary(): pa.string(), pa.large_binary(): pa.large_string(), pa.binary_view(): pa.string_view()}


def _mapped(t: pa.DataType, leaf: Callable[[pa.DataType], pa.DataType | None]) -> pa.DataType:
    """``t`` with each type inside it that ``leaf`` replaces replaced (through structs, lists and maps)."""
    new = leaf(t)
    if new is not None:
        return new
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(_mapped(t.field(i).type, leaf)) for i in range(t.num_fields)])
    if pa.types.is_map(t):
        return pa.map_(t.key_field, t.item_field.with_type(_mapped(t.item_type, leaf)), t.keys_sorted)
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_field.with_type(_mapped(t.value_type, leaf)), t.list_size)
    if pa.types.is_large_list(t):
        return pa.large_list(t.value_field.with_type(_mapped(t.value_type, leaf)))
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_mapped(t.value_type, leaf)))
    return t


def _text_of(t: pa.DataType) -> pa.DataType | None:
    if pa.types.is_fixed_size_binary(t):
        return pa.string()
    return _TEXT.get(t)


def for_json(table: pa.Table) -> pa.Table:
    """``table`` with its binary values (at any depth) as UTF-8 text; bytes that are not UTF-8 are refused, naming
    the column: JSON holds text, not bytes."""
    columns = []
    for field, column in zip(table.schema, table.columns):
        text = _mapped(field.type, _text_of)
        if text != field.type:
            try:
                column = column.cast(text)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise HardfocusError(f"the column '{field.name}' holds bytes that are not UTF-8 text ({' '.join(str(exc).split())}), "
                                     "which JSON Lines cannot hold: export it with --format parquet") from None
        columns.append(column)
    return pa.table(columns, schema=pa.schema([f.with_type(c.type) for f, c in zip(table.schema, columns)],
                                              metadata=table.schema.metadata))


def _empty_struct(t: pa.DataType) -> bool:
    return pa.types.is_struct(t) and t.num_fields == 0


def _walk(value, t: pa.DataType, empty: Callable):
    """A Python value of type ``t`` with ``empty(v)`` in place of each value of an empty struct in it."""
    if value is None:
        return None
    if _empty_struct(t):
        return empty(value)
    if pa.types.is_struct(t):
        return {f.name: _walk(value.get(f.name), f.type, empty) for f in t}
    if pa.types.is_map(t):
        return [(k, _walk(v, t.item_type, empty)) for k, v in value]
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return [_walk(v, t.value_type, empty) for v in value]
    return value


def for_parquet(table: pa.Table) -> pa.Table:
    """``table`` with each empty struct in it (at any depth) as JSON text, ``{}`` (a null stays null)."""
    if not any(_mapped(f.type, _json_of) != f.type for f in table.schema):
        return table
    columns, fields = [], []
    for field, column in zip(table.schema, table.columns):
        target = _mapped(field.type, _json_of)
        if target != field.type:
            storage = _mapped(field.type, lambda t: pa.string() if _empty_struct(t) else None)
            values = [_walk(v, field.type, lambda v: "{}") for v in column.to_pylist()]
            column = pa.array(values, storage).cast(target)
        columns.append(column)
        fields.append(field.with_type(target))
    return pa.table(columns, schema=pa.schema(fields, metadata=table.schema.metadata))


def _json_of(t: pa.DataType) -> pa.DataType | None:
    return pa.json_() if _empty_struct(t) else None


def restored(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A table :func:`for_parquet` wrote, read back, in its own ``schema`` again (its empty structs)."""
    columns = []
    for field in schema:
        column = table[field.name]
        if column.type != field.type and _mapped(field.type, _json_of) != field.type:
            column = pa.array([_walk(v, field.type, lambda v: {}) for v in column.to_pylist()], field.type)
        columns.append(column)
    return pa.table(columns, schema=schema)
