"""The one part contract (:mod:`hardfocus.parts`): the column digests, the stamp, and the verified reader's refusals."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardfocus.errors import HardfocusError
from hardfocus.parts import STAMP_KEY, ColumnDigest, Expected, Stamp, iter_part, read_footer, read_part, stamped

TYPES = {
    "int": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "float": (pa.float32(), st.floats(width=32, allow_nan=False)),
    "text": (pa.string(), st.text(max_size=20)),
    "ids": (pa.list_(pa.int32()), st.lists(st.integers(-(2**31), 2**31 - 1), max_size=6)),
    "spans": (pa.list_(pa.struct([pa.field("start", pa.int32()), pa.field("stop", pa.int32())])),
              st.lists(st.fixed_dictionaries({"start": st.integers(0, 99), "stop": st.one_of(st.none(), st.integers(0, 99))}),
                       max_size=3)),
    "flag": (pa.bool_(), st.booleans()),
}


def _digest(*chunks: pa.Array | pa.ChunkedArray) -> str:
    if len(chunks) == 1 and isinstance(chunks[0], pa.ChunkedArray):
        return ColumnDigest().update(chunks[0]).hexdigest()
    return ColumnDigest().update(pa.chunked_array(chunks, type=chunks[0].type)).hexdigest()


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(sorted(TYPES)), data=st.data())
def test_a_columns_digest_does_not_depend_on_how_it_is_cut_into_chunks(kind, data):
    arrow_type, values = TYPES[kind]
    rows = data.draw(st.lists(st.one_of(st.none(), values), max_size=30))
    whole = pa.array(rows, arrow_type)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(rows)), max_size=4)))
    pieces = [whole.slice(a, b - a) for a, b in zip([0, *cuts], [*cuts, len(rows)])]
    assert _digest(*pieces) == _digest(whole)


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(sorted(TYPES)), data=st.data())
def test_a_columns_digest_changes_with_any_value_or_null(kind, data):
    arrow_type, values = TYPES[kind]
    rows = data.draw(st.lists(st.one_of(st.none(), values), min_size=1, max_size=20))
    i = data.draw(st.integers(0, len(rows) - 1))
    other = data.draw(st.one_of(st.none(), values).filter(lambda v: v != rows[i]))
    changed = rows[:i] + [other] + rows[i + 1:]
    if pa.array(changed, arrow_type).to_pylist() == pa.array(rows, arrow_type).to_pylist():
        return  # e.g. -0.0 and 0.0 as float32 values that Arrow holds alike
    assert _digest(pa.array(changed, arrow_type)) != _digest(pa.array(rows, arrow_type))


def test_a_digest_is_of_the_values_not_their_arrow_layout():
    """string and large_string, a list and a large list, a dictionary and its values digest alike; null slots count as
    nulls whatever bytes lie under them."""
    text = ["a", None, "bcd", "a"]
    assert _digest(pa.array(text, pa.string())) == _digest(pa.array(text, pa.large_string()))
    assert _digest(pa.array(text).dictionary_encode()) == _digest(pa.array(text))
    ids = [[1, 2], None, [], [3]]
    assert _digest(pa.array(ids, pa.list_(pa.int32()))) == _digest(pa.array(ids, pa.large_list(pa.int32())))
    nulled = pa.array([1, 2, 3], pa.int64()).cast(pa.int64())
    masked = pa.Array.from_buffers(pa.int64(), 3, [pa.array([True, False, True]).buffers()[1], nulled.buffers()[1]])
    assert masked.to_pylist() == [1, None, 3]
    assert _digest(masked) == _digest(pa.array([1, None, 3], pa.int64()))
    assert _digest(pa.array([0, 1], pa.int64())) != _digest(pa.array([0, 1], pa.int32()))  # other bytes: other values


def _part(tmp_path, stage="decisions", identity="run-a", place=None, table=None, name="part-00000.parquet") -> str:
    table = table if table is not None else pa.table({"id": ["x", "y", "z"], "n": pa.array([1, 2, 3], pa.int32()),
                                                      "ids": pa.array([[1], [2, 3], None], pa.list_(pa.int32()))})
    path = tmp_path / name
    pq.write_table(stamped(table, stage, identity, place if place is not None else {"index": 0}), path)
    return str(path)


def _expected(**changes) -> Expected:
    values = {"stage": "decisions", "identity": "run-a", "place": {"index": 0}, "what": "the decisions part",
              "redo": "run `hardfocus select` again with --overwrite"} | changes
    return Expected(**values)


def test_a_stamped_part_reads_back_whole_and_by_column(tmp_path):
    url = _part(tmp_path)
    assert read_part(url, _expected()).to_pylist() == [{"id": "x", "n": 1, "ids": [1]}, {"id": "y", "n": 2, "ids": [2, 3]},
                                                        {"id": "z", "n": 3, "ids": None}]
    assert read_part(url, _expected(rows=3), ["n"]).column("n").to_pylist() == [1, 2, 3]
    batches = list(iter_part(url, _expected(), ["id"], batch_rows=2))
    assert [b.num_rows for b in batches] == [2, 1]
    meta, stamp = read_footer(url, _expected())
    assert (meta.num_rows, stamp.rows, stamp.place) == (3, 3, {"index": 0})


@pytest.mark.parametrize(("expected", "words"), [
    (_expected(identity="run-b"), "was written by another run"),
    (_expected(stage="selected"), "is a part of decisions, not of selected"),
    (_expected(place={"index": 4}), "stands in another part's place (index 0 where 4 belongs)"),
    (_expected(rows=5), "holds 3 rows where 5 were counted on"),
])
def test_a_part_of_another_run_place_or_size_is_refused_naming_it(tmp_path, expected, words):
    url = _part(tmp_path)
    for read in (lambda: read_part(url, expected), lambda: read_footer(url, expected), lambda: list(iter_part(url, expected))):
        with pytest.raises(HardfocusError) as info:
            read()
        message = str(info.value)
        assert message.startswith(f"the decisions part {url} ") and words in message
        assert message.endswith("run `hardfocus select` again with --overwrite")


def test_a_part_without_a_stamp_is_refused_as_of_an_earlier_version(tmp_path):
    path = tmp_path / "part-00000.parquet"
    pq.write_table(pa.table({"id": ["x"]}), path)
    with pytest.raises(HardfocusError, match="carries no stamp of the run that wrote it .*earlier version"):
        read_part(str(path), _expected())


def test_a_part_changed_after_it_was_written_is_refused_by_whoever_reads_the_changed_column(tmp_path):
    url = _part(tmp_path)
    stamp_bytes = pq.read_metadata(url).metadata[STAMP_KEY]
    table = pq.read_table(url)
    edited = table.set_column(1, "n", pa.array([1, 2, 4], pa.int32())).replace_schema_metadata({STAMP_KEY: stamp_bytes})
    pq.write_table(edited, url)  # the same stamp, the same rows, one value other
    assert read_part(url, _expected(), ["id", "ids"]).num_rows == 3  # what was not changed still reads
    with pytest.raises(HardfocusError, match="was changed after it was written \\(its column 'n' is not what its stamp"):
        read_part(url, _expected(), ["n"])
    with pytest.raises(HardfocusError, match="column 'n'"):
        list(iter_part(url, _expected(), ["id", "n"], batch_rows=1))


def test_a_part_cut_short_or_missing_is_refused_in_one_line(tmp_path):
    url = _part(tmp_path)
    data = (tmp_path / "part-00000.parquet").read_bytes()
    (tmp_path / "part-00000.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(HardfocusError, match="cannot be read .*cut short or changed after it was written"):
        read_part(url, _expected())
    (tmp_path / "part-00000.parquet").unlink()
    with pytest.raises(HardfocusError, match="is missing"):
        read_footer(url, _expected())


def test_a_stamp_records_the_rows_and_a_digest_of_every_column(tmp_path):
    url = _part(tmp_path, place={"index": 0, "scores": 1})
    stamp = Stamp.of(pq.read_metadata(url).metadata)
    table = pq.read_table(url)
    assert stamp.rows == 3 and stamp.stage == "decisions" and stamp.identity == "run-a"
    assert stamp.columns == {name: ColumnDigest().update(table.column(name)).hexdigest() for name in table.column_names}


def test_a_list_view_column_digests_as_its_values_and_a_slice_of_it_does_not_crash():
    """``ColumnDigest._walk`` casts a ``list_view`` to ``large_list`` (``array.cast(pa.large_list(...))``); pyarrow's
    cast of a list_view gives an invalid array ("Array length is negative") whenever a view is not at the end, so the
    digest of a list_view depends on its chunking (an IPC shard read in record batches, a part read in row groups),
    and the digest of a *sliced* list_view crashes the interpreter's call with ``SystemError: error return without
    exception set``. Expected: a list_view digests as the list of the same values (the docs: "a column read in batches
    ... digests alike"), sliced or not."""
    values = [[1], [2, 3], [4], None, [5, 6, 7]]
    as_list = _digest(pa.array(values, pa.list_(pa.int64())))
    view = pa.array(values, pa.list_view(pa.int64()))
    assert _digest(view) == as_list
    assert _digest(pa.chunked_array([view[:2], view[2:]])) == as_list  # raises SystemError today


@pytest.mark.parametrize("values", [
    pa.array([[("a", 1)], None, [("b", 2), ("c", 3)]], pa.map_(pa.string(), pa.int64())),
    pa.array(['{"a": 1}', None, '{"b": 2}'], pa.json_()),  # what export writes an empty struct as (arrow.json)
    pa.array([b"0" * 16, None, b"1" * 16], pa.uuid()),
], ids=["map", "arrow.json", "uuid"])
def test_a_columns_digest_does_not_depend_on_its_chunks_for_maps_and_canonical_extension_types(values):
    """Maps, unions and canonical extension types (``pa.json_()``, ``pa.uuid()``, ``pa.bool8()``: subclasses of
    ``BaseExtensionType``, not ``pa.ExtensionType``, so ``_walk`` never unwraps them) fall to ``_walk``'s JSON branch,
    which digests ``json.dumps(chunk.to_pylist())`` per chunk: ``[a, b][c]`` is not ``[a, b, c]``. So the same column
    read in one piece, in row groups or in batches digests differently, and a part holding one (export writes a JSON
    Lines ``{}`` column to Parquet as ``arrow.json``; a source map column is carried as is) fails its own stamp when
    read in other chunks than it was written in. Expected: the digest does not depend on the chunking."""
    assert _digest(pa.chunked_array([values[:1], values[1:]])) == _digest(values)


@pytest.mark.parametrize("values", [
    pa.array([1, 2, None], pa.timestamp("s")),
    pa.array([86_400_000, None, 0], pa.date64()),
    pa.array([1, None, 3], pa.time32("s")),
], ids=["timestamp[s]", "date64", "time32[s]"])
def test_a_part_stamped_and_written_reads_back_through_the_verified_reader(tmp_path, values):
    """``stamped`` digests the table as it is before it is written; Parquet stores ``timestamp[s]`` as milliseconds,
    ``date64`` as ``date32`` and ``time32[s]`` as milliseconds, and reads them back so, so the values' bytes (what
    ``ColumnDigest`` feeds) are not the ones digested. An export part (every source column, stamped) of a source with
    such a column carries a digest that no read of the part reproduces: read through ``read_part`` it is "changed after
    it was written" the moment it is written. Expected: every part a writer stamps reads back through the verified
    reader (digest the values as Parquet stores them, or normalise units before digesting)."""
    path = str(tmp_path / "part-00000.parquet")
    pq.write_table(stamped(pa.table({"c": values}), "export", "run", {"name": "part-00000.parquet"}), path)
    read_part(path, Expected("export", "run", {"name": "part-00000.parquet"}))


def test_a_struct_whose_field_names_were_swapped_does_not_digest_as_before():
    """Found by a review: ``_walk`` walked a struct's children as ``.0``, ``.1``, the field names not digested. ``loss_spans`` is
    ``list<struct<start, stop>>``; a rewrite that swaps the two names (each child keeping its values) digests exactly as
    the part that was written, yet every reader (``pc.struct_field(flat, "start")``) now reads the stops as the starts.
    Expected: a struct's field names are part of what is digested (the docs: "changed ... at any size is refused")."""
    spans = [[{"start": 1, "stop": 4}], [{"start": 0, "stop": 2}, {"start": 5, "stop": 9}]]
    written = pa.array(spans, pa.list_(pa.struct([("start", pa.int32()), ("stop", pa.int32())])))
    reordered = written.cast(pa.list_(pa.struct([("stop", pa.int32()), ("start", pa.int32())])))  # by name: same values
    relabelled = pa.ListArray.from_arrays(written.offsets, pa.StructArray.from_arrays(
        written.flatten().flatten(), names=["stop", "start"]))  # the same children under each other's name
    assert _digest(reordered) == _digest(written)  # every field holds what it held: a reader by name reads the same
    assert _digest(relabelled) != _digest(written)


def test_a_zero_row_part_reads_through_iter_part_as_through_read_part(tmp_path):
    """A zero-row part reads through ``read_part`` (one empty chunk per column), but ``iter_part`` yields no batch, so
    its digests never see a chunk, and a ``ColumnDigest`` fed nothing is not the digest of an empty column
    (``hexdigest`` hashes the ``_seen`` paths, which only a walked chunk records): the untouched part is refused as
    "changed after it was written". Expected: both readers take the part the stage wrote."""
    table = pa.table({"input_ids": pa.array([], pa.list_(pa.int32())), "weight": pa.array([], pa.float32())})
    path = str(tmp_path / "part-00000.parquet")
    pq.write_table(stamped(table, "selected", "run", {"index": 0}), path)
    expected = Expected("selected", "run", {"index": 0})
    assert read_part(path, expected).num_rows == 0
    assert sum(t.num_rows for t in iter_part(path, expected)) == 0
