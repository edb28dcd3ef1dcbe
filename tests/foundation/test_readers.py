"""The readers of input formats (hardfocus/readers/): the one table of formats, Arrow IPC streams cut short, Hugging
Face ``datasets`` directories missing a split, polars' ``string_view`` text, JSON Lines with a byte order mark or
unsigned 64-bit numbers, read alike by scoring's reader and by ``source_batches``."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pyarrow as pa
import pytest

from hardfocus.errors import HardfocusError
from hardfocus.readers import READERS, Shard, check_columns, find_shards, iter_units, read_shard, reader_of, shard_format
from hardfocus.readers.source_rows import source_batches
from hardfocus.sample_format import Columns


def _stream_cut_after_batch(path, batches: int = 3, rows: int = 5) -> tuple[bytes, list[int]]:
    """An IPC stream of ``batches`` record batches of short texts; returns its bytes and the offset just after each
    message (schema, then each batch)."""
    schema = pa.schema([("text", pa.string())])
    with pa.OSFile(str(path), "wb") as sink:
        writer = pa.ipc.new_stream(sink, schema)
        for b in range(batches):
            writer.write_batch(pa.record_batch([pa.array([f"row {b}-{i}" for i in range(rows)])], schema=schema))
        writer.close()
    data = path.read_bytes()
    source = pa.BufferReader(pa.py_buffer(data))
    reader = pa.ipc.MessageReader.open_stream(source)
    ends = []
    while True:
        try:
            reader.read_next_message()
        except StopIteration:
            break
        ends.append(source.tell())
    return data, ends


def test_an_arrow_stream_cut_between_two_record_batches_is_refused(tmp_path):
    """read_arrow.py promises "a stream that does not end with the end-of-stream marker was cut short ... even when
    the cut fell between two batches: it is refused when opened, so no row is dropped silently". The check accepts
    any file whose last 4 bytes are zero as ending with the pre-Arrow-0.15 marker; but a record batch's body is
    padded to 8 bytes with zeros, so a stream cut exactly after a batch (a copy interrupted at a write boundary, the
    usual place, since writers flush whole messages) nearly always ends in zeros. Such a file is read as a complete,
    shorter shard: scoring scores 10 of 15 rows (the manifest's row count is the cut one) and source_batches returns
    10 rows; no error anywhere. The existing test only cuts off the 8-byte marker itself."""
    path = tmp_path / "data-00000-of-00001.arrow"
    data, ends = _stream_cut_after_batch(path)
    assert len(ends) == 4 and ends[-1] == len(data) - 8  # schema, 3 batches, then the 8-byte end-of-stream marker
    path.write_bytes(data[: ends[2]])  # after the second batch: the third batch and the marker are gone
    assert path.read_bytes()[-4:] == b"\x00\x00\x00\x00"  # the padding that passes for the old marker
    (shard,) = find_shards([str(path)])
    with pytest.raises(HardfocusError, match="cut short"):
        list(iter_units(shard, Columns(), 4))
    with pytest.raises(HardfocusError, match="cut short"):
        list(source_batches(shard.url, "arrow", None))


def test_an_arrow_file_with_string_view_text_is_read(tmp_path):
    """``.arrow`` files are inputs now, and the common way to write one besides datasets is polars'
    ``write_ipc``/``write_ipc_stream``, which (at its default compat level) writes text columns as ``string_view``
    (Utf8View). Such a file is refused with "column 'text' ... is string_view, not text; pass the right column with
    --text-column", which sends the user looking for another column when the column is right. (A ``string_view``
    text would also need _cell_bytes in read_parquet.py, which counts 0 bytes for it, so --max-row-bytes would not
    apply.)"""
    texts = ["the first document", "the second one"]
    pl.DataFrame({"text": texts}).write_ipc_stream(tmp_path / "polars.arrow")
    with pa.ipc.open_stream(str(tmp_path / "polars.arrow")) as reader:
        assert reader.schema.field("text").type == pa.string_view()  # what polars writes
    (shard,) = find_shards([str(tmp_path / "polars.arrow")])
    block = read_shard(shard, Columns())
    assert block.values == texts and block.status == [None, None]  # None: read, no error


@pytest.mark.parametrize("missing", [["test"], ["train", "test"]])
def test_a_dataset_dict_with_a_split_missing_is_refused(tmp_path, missing):
    """sources.py refuses a datasets directory whose state.json lists a data file that is not there ("an incomplete
    copy, never a smaller dataset"), but applies no such rule to a DatasetDict: dataset_dict.json lists its splits
    ({"splits": ["train", "test"]}) and is never read. A copy missing a split directory scores as a smaller dataset
    without a word; with every split directory missing, dataset_dict.json itself is taken for a JSON Lines shard
    (dataset_dict.json/state.json are only skipped beside a datasets directory)."""
    import datasets

    datasets.disable_progress_bars()
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a b c"] * 3}),
                               "test": datasets.Dataset.from_dict({"text": ["d e f"] * 2})})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert json.loads((tmp_path / "dd" / "dataset_dict.json").read_text()) == {"splits": ["train", "test"]}
    for split in missing:
        shutil.rmtree(tmp_path / "dd" / split)
    with pytest.raises(HardfocusError, match="test"):
        find_shards([str(tmp_path / "dd")])


def test_a_jsonl_shard_with_a_byte_order_mark_reads_its_first_row_as_source_batches_does(tmp_path):
    """source_rows promises (shard, row) of scores/ points at the same row, read the way scoring reads it. For a JSON
    Lines file saved with a UTF-8 BOM (Windows editors, PowerShell's Out-File, Excel's "CSV UTF-8" pipelines), they
    disagree on row 0: scoring decodes the line as 'utf-8' (BOM kept as U+FEFF) and json.loads(str) refuses it, so the
    first row of every such shard gets status "error: invalid JSON: Unexpected UTF-8 BOM" and is never selected;
    check_first_json_row and source_batches parse the bytes (json.loads detects the BOM) and read it as a good row."""
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "the first row"}\r\n{"text": "the second"}\r\n')
    (shard,) = find_shards([str(path)])
    source = [r for _, t in source_batches(shard.url, "jsonl", None) for r in t.to_pylist()]
    assert source == [{"text": "the first row"}, {"text": "the second"}]
    block = read_shard(shard, Columns())
    assert block.status == [None, None] and block.values == ["the first row", "the second"]


def test_source_batches_read_a_jsonl_shard_with_an_unsigned_64_bit_column(tmp_path):
    """Pretraining corpora often carry 64-bit hashes (xxhash64, simhash, minhash ids) as JSON numbers, half of which
    are over 2**63. Scoring reads such a shard fine (it never looks at the column), but source_batches, which export
    reads to put each source row beside its decision, refuses the whole shard: pyarrow's inference raises
    OverflowError, reported as "row 0 ... its columns' types cannot be unified with the rows before it" (row 0 has no
    rows before it). Every row of the shard is then unexportable although each is valid JSON; the value must come
    back whole (a uint64, a decimal or its digits as text, not a rounded double)."""
    path = tmp_path / "hashed.jsonl"
    path.write_text('{"text": "a first document", "hash": 12345678901234567890}\n'
                    '{"text": "a second one", "hash": 5}\n')
    (shard,) = find_shards([str(path)])
    assert read_shard(shard, Columns()).values == ["a first document", "a second one"]  # scoring reads both
    rows = [r for _, t in source_batches(shard.url, "jsonl", None) for r in t.to_pylist()]
    assert [r["text"] for r in rows] == ["a first document", "a second one"]
    assert str(rows[0]["hash"]) == "12345678901234567890"


@pytest.mark.parametrize(("name", "found"), [
    ("a.parquet", ("parquet", None)), ("A.PARQUET", ("parquet", None)), ("a.arrow", ("arrow", None)),
    ("a.jsonl", ("jsonl", None)), ("a.json", ("jsonl", None)), ("a.ndjson", ("jsonl", None)),
    ("a.jsonl.gz", ("jsonl", "gzip")), ("a.json.zst", ("jsonl", "zstd")), ("a.ndjson.zstd", ("jsonl", "zstd")),
    ("a.parquet.gz", None), ("a.arrow.zst", None), ("a.csv", None), ("a.txt.gz", None), ("jsonl", None),
])
def test_which_files_are_shards_of_which_format_is_the_table_of_formats(name, found):
    assert shard_format(name) == found


def test_an_unknown_format_is_refused_by_name(tmp_path):
    """Format dispatch was an if/elif chain in three places, JSON Lines the implicit ``else``: a shard of a format that
    missed one branch was read as JSON Lines. Every reader goes through the one table now, which refuses a name it does
    not hold, whatever asks: scoring's units, a column check, export's source rows."""
    path = tmp_path / "rows.csv"
    path.write_text("text\nhello\n")
    shard = Shard(url=str(path), rel="rows.csv", format="csv", compression=None, size=path.stat().st_size)
    for read in (lambda: list(iter_units(shard, Columns(), 10)), lambda: check_columns(shard, Columns()),
                 lambda: list(source_batches(str(path), "csv", None))):
        with pytest.raises(HardfocusError, match=r"unknown shard format 'csv' \(one of: parquet, jsonl, arrow\)"):
            read()
    assert sorted(READERS) == ["arrow", "jsonl", "parquet"] and reader_of("jsonl") is READERS["jsonl"]
    with pytest.raises(HardfocusError, match="is not a shard format hardfocus reads"):
        find_shards([str(path)])
