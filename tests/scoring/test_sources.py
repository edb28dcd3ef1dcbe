"""Finding shards and reading row ranges: formats, compression, layouts, and errors that help."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from scoring.errors import HardfocusError
from scoring.sources import Columns, count_rows, find_shards, read_rows

ROWS = [{"text": f"document number {i}", "doc": f"id-{i}", "src": "web" if i % 2 else "code"} for i in range(23)]


def _jsonl_bytes(rows) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.fixture
def corpus(tmp_path):
    """The same 23 rows as Parquet (3 row groups), JSONL, JSONL.gz and JSONL.zst, in nested dirs."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "a" / "p.parquet", row_group_size=10)
    (tmp_path / "a" / "plain.jsonl").write_bytes(_jsonl_bytes(ROWS[:10]) + b"\n  \n" + _jsonl_bytes(ROWS[10:]))
    (tmp_path / "a" / "b" / "g.jsonl.gz").write_bytes(gzip.compress(_jsonl_bytes(ROWS)))
    (tmp_path / "a" / "b" / "z.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(_jsonl_bytes(ROWS)))
    (tmp_path / "a" / "README.md").write_text("not a shard")
    return tmp_path


def test_directory_glob_and_file_inputs(corpus):
    shards = find_shards([str(corpus / "a")])
    assert [s.rel for s in shards] == ["b/g.jsonl.gz", "b/z.jsonl.zst", "p.parquet", "plain.jsonl"]
    assert [(s.format, s.compression) for s in shards] == [("jsonl", "gzip"), ("jsonl", "zstd"), ("parquet", None), ("jsonl", None)]
    assert [s.rel for s in find_shards([str(corpus / "a" / "**" / "*.jsonl.*")])] == ["b/g.jsonl.gz", "b/z.jsonl.zst"]
    assert [s.rel for s in find_shards([str(corpus / "a" / "p.parquet")])] == ["p.parquet"]
    # the same file named twice is one shard
    assert len(find_shards([str(corpus / "a" / "p.parquet"), str(corpus / "a" / "*.parquet")])) == 1


def test_every_format_reads_the_same_rows(corpus):
    columns = Columns(text="text", id="doc", group="src")
    for shard in find_shards([str(corpus / "a")]):
        assert count_rows(shard, columns) == 23  # blank lines are not rows
        for start, stop in [(0, 23), (5, 17), (9, 11), (20, 23)]:  # across Parquet row groups too
            block = read_rows(shard, start, stop, columns)
            assert block.values == [r["text"] for r in ROWS[start:stop]], shard.rel
            assert block.ids == [r["doc"] for r in ROWS[start:stop]]
            assert block.groups == [r["src"] for r in ROWS[start:stop]]
            assert block.status == [None] * (stop - start)


def test_bad_json_lines_get_a_status(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{broken\n"a string"\n{"text": 5}\n{"other": "x"}\n{"text": "caf\xe9"}\n{"text": null}\n')
    shard = find_shards([str(path)])[0]
    assert count_rows(shard, Columns()) == 7
    block = read_rows(shard, 0, 7, Columns())
    assert block.values[0] == "fine" and block.status[0] is None
    assert block.status[1].startswith("error: invalid JSON")
    assert block.status[2] == "error: line is a JSON str, not an object"
    assert block.status[3] == "error: field 'text' is int, not a string"
    assert block.status[4] == "error: no field 'text'"
    assert block.status[5] == "invalid_utf8"
    assert block.status[6] is None and block.values[6] is None  # null text: tokenisation marks it empty


@pytest.mark.parametrize(
    "inputs, message",
    [
        (["{tmp}/nope"], "does not exist"),
        (["{tmp}/*.parquet"], "matches no file"),
        (["{tmp}/empty_dir"], "holds no .parquet"),
        (["{tmp}/notes.txt"], "not a shard format"),
        ([], "no input given"),
    ],
)
def test_input_errors_name_the_problem(tmp_path, inputs, message):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(HardfocusError, match=message):
        find_shards([i.format(tmp=tmp_path) for i in inputs])


def test_missing_or_wrong_column_is_an_error_naming_file_and_columns(corpus, tmp_path):
    parquet = find_shards([str(corpus / "a" / "p.parquet")])[0]
    with pytest.raises(HardfocusError, match=r"has no column 'body' \(columns: text, doc, src\); pass --text-column"):
        count_rows(parquet, Columns(text="body"))
    with pytest.raises(HardfocusError, match="pass --group-column"):
        count_rows(parquet, Columns(group="domain"))
    jsonl = find_shards([str(corpus / "a" / "plain.jsonl")])[0]
    with pytest.raises(HardfocusError, match="first row of shard .* has no field 'body'"):
        count_rows(jsonl, Columns(text="body"))
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(HardfocusError, match="is int64, not text"):
        count_rows(find_shards([str(tmp_path / "ints.parquet")])[0], Columns())


def test_same_relative_path_from_two_inputs_is_refused(tmp_path):
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "s.jsonl").write_text('{"text": "a b"}\n')
    with pytest.raises(HardfocusError, match="same relative path 's.jsonl'"):
        find_shards([str(tmp_path / "x"), str(tmp_path / "y")])


def test_fsspec_url(corpus):
    """Any fsspec URL works; file:// stands in for s3:// here (no network)."""
    shards = find_shards([f"file://{corpus}/a/p.parquet"])
    assert read_rows(shards[0], 0, 2, Columns()).values == ["document number 0", "document number 1"]
