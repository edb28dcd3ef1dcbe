"""The schema of what export writes: the source's columns and schema metadata, then export's own columns.

The source's ``huggingface`` metadata is kept, so that a ``datasets`` shard's features (``ClassLabel`` names,
``Image``, ...) load again from the export, extended with export's columns. Other schema metadata describes the
source's whole schema, or its rows, in terms a reader trusts over the file's (``pandas``' index and columns, Spark's
or Avro's schema): none would list export's columns or hold for the rows kept, so it is left out (the values,
columns and types are the source's either way). With ``--resample`` a part holds rows of every shard: one
schema for all, each column's types promoted where they differ, or, where no type holds both (an integer in one
shard, a string in another), the column as text.
"""

from __future__ import annotations

import json

import pyarrow as pa

from hardfocus.errors import HardfocusError
from hardfocus.storage import redact

_HF = b"huggingface"
_VALUE = {pa.string(): "string", pa.float32(): "float32", pa.int32(): "int32"}  # export's columns, as Value dtypes


def carried_metadata(metadata: dict[bytes, bytes] | None, added: dict[str, pa.DataType]) -> dict[bytes, bytes] | None:
    """The source's ``huggingface`` metadata for a table with export's ``added`` columns (name in the output ->
    type), its features extended with them; None where it has none, or none that can be extended."""
    try:
        info = json.loads((metadata or {})[_HF])
        features = info["info"]["features"]
        if not isinstance(features, dict):
            return None
        features.update({name: {"dtype": _VALUE[t], "_type": "Value"} for name, t in added.items()})
        return {_HF: json.dumps(info).encode()}
    except (ValueError, KeyError, TypeError):
        return None  # no features, or not as datasets writes them


def common_schema(schemas: list[tuple[str, pa.Schema]], added: dict[str, str]) -> pa.Schema:
    """One schema for rows of several shards (``schemas``: (shard, schema) of each file of theirs): every source
    column of any (its types promoted where they differ, else as text), then export's columns; the metadata all
    share."""
    names = list(dict.fromkeys(f.name for _, s in schemas for f in s))
    ours = set(added.values())
    fields = {name: _common_field(name, [(who, s.field(name)) for who, s in schemas if s.get_field_index(name) >= 0])
              for name in names}
    metadata = [dict(s.metadata or {}) for _, s in schemas]
    shared = {k: v for k, v in metadata[0].items() if all(m.get(k) == v for m in metadata[1:])} if metadata else {}
    order = [n for n in names if n not in ours] + [n for n in added.values() if n in fields]
    return pa.schema([fields[n] for n in order], metadata=shared or None)


def _common_field(name: str, found: list[tuple[str, pa.Field]]) -> pa.Field:
    try:
        return pa.unify_schemas([pa.schema([f]) for _, f in found], promote_options="permissive").field(name)
    except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    nested = [(who, f.type) for who, f in found if pa.types.is_nested(f.type)]
    if nested:
        other = next((who, f.type) for who, f in found if f.type != nested[0][1])
        raise HardfocusError(f"--resample mixes the rows of every shard in each part, and the column '{name}' is "
                             f"{nested[0][1]} in {redact(nested[0][0])} but {other[1]} in {redact(other[0])}: export "
                             "without --resample (a shard's parts have its own columns)")
    return pa.field(name, pa.string())  # scalars of no common type (an integer and a string): as text


def conformed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` in ``schema``: its columns in that order, cast, and null where it has none."""
    columns = []
    for f in schema:
        try:
            columns.append(table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type))
        except pa.ArrowException as exc:
            raise HardfocusError(f"--resample mixes the rows of every shard in each part, and the column '{f.name}' "
                                 f"({table[f.name].type}) cannot be written as {f.type} ({' '.join(str(exc).split())}): "
                                 "export without --resample") from None
    return pa.table(columns, schema=schema)
