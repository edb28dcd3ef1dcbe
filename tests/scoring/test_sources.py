"""Finding shards and reading row ranges: formats, compression, layouts, and errors that help."""

from __future__ import annotations

import gzip
import json
import os

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from fsspec.implementations.local import LocalFileSystem

from hardfocus.errors import HardfocusError
from hardfocus.readers import check_columns, find_shards, iter_units, read_shard
from hardfocus.sample_format import Columns
from tests.conftest import write_jsonl

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
        for n in (23, 5, 3, 8, 100):  # across Parquet row groups (of 10) too
            units = list(iter_units(shard, columns, n))
            assert [(u.start, u.stop) for u in units] == [(s, min(s + n, 23)) for s in range(0, 23, n)]  # blank lines are not rows
            assert units[-1].consumed == 1.0 and all(a.consumed <= b.consumed for a, b in zip(units, units[1:]))
            for u in units:
                assert u.block.values == [r["text"] for r in ROWS[u.start : u.stop]], shard.rel
                assert u.block.ids == [r["doc"] for r in ROWS[u.start : u.stop]]
                assert u.block.groups == [r["src"] for r in ROWS[u.start : u.stop]]
                assert u.block.status == [None] * (u.stop - u.start)


def test_skipped_units_are_counted_not_parsed(corpus):
    for shard in find_shards([str(corpus / "a")]):
        units = list(iter_units(shard, Columns(), 5, skip=frozenset({0, 10, 20})))
        assert [(u.start, u.stop, u.block is None) for u in units] == [
            (0, 5, True), (5, 10, False), (10, 15, True), (15, 20, False), (20, 23, True)]
        assert units[1].block.values == [r["text"] for r in ROWS[5:10]], shard.rel
        assert units[3].block.values == [r["text"] for r in ROWS[15:20]], shard.rel


def test_bad_json_lines_get_a_status(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{broken\n"a string"\n{"text": 5}\n{"other": "x"}\n{"text": "caf\xe9"}\n{"text": null}\n')
    shard = find_shards([str(path)])[0]
    block = read_shard(shard, Columns())
    assert len(block) == 7
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
        check_columns(parquet, Columns(text="body"))
    with pytest.raises(HardfocusError, match="pass --group-column"):
        check_columns(parquet, Columns(group="domain"))
    jsonl = find_shards([str(corpus / "a" / "plain.jsonl")])[0]
    with pytest.raises(HardfocusError, match="first row of shard .* has no field 'body'"):
        check_columns(jsonl, Columns(text="body"))
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(HardfocusError, match="is int64, not text"):
        check_columns(find_shards([str(tmp_path / "ints.parquet")])[0], Columns())


def test_same_relative_path_from_two_inputs_is_refused(tmp_path):
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "s.jsonl").write_text('{"text": "a b"}\n')
    with pytest.raises(HardfocusError, match="same relative path 's.jsonl'"):
        find_shards([str(tmp_path / "x"), str(tmp_path / "y")])


def test_fsspec_url(corpus):
    """Any fsspec URL works; file:// stands in for s3:// here (no network)."""
    shards = find_shards([f"file://{corpus}/a/p.parquet"])
    assert read_shard(shards[0], Columns()).values[:2] == ["document number 0", "document number 1"]


class _CountingFileSystem(LocalFileSystem):
    """The local disk under ``countfile://``, counting the bytes read from each file."""

    protocol = ("countfile",)
    read: dict[str, int] = {}

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.removeprefix("countfile://"))

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode, **kwargs)
        return _CountingFile(f, path) if "r" in mode else f


class _CountingFile:
    def __init__(self, f, path: str):
        self._f, self._path = f, path

    def read(self, n=-1):
        data = self._f.read(n)
        _CountingFileSystem.read[self._path] = _CountingFileSystem.read.get(self._path, 0) + len(data)
        return data

    def readinto(self, buffer):
        n = self._f.readinto(buffer)
        _CountingFileSystem.read[self._path] = _CountingFileSystem.read.get(self._path, 0) + (n or 0)
        return n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def test_a_scoring_run_reads_every_input_byte_once(tmp_path, tiny_model_dir):
    """40 units per shard, each shard read once (planning included): bytes read through fsspec, counted."""
    from scoring import ScoreConfig, score
    from tests.conftest import real_texts

    fsspec.register_implementation("countfile", _CountingFileSystem, clobber=True)
    rows = [{"text": t} for t in real_texts(4000, seed=3)]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "big.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(_jsonl_bytes(rows)))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in" / "one-row-group.parquet", row_group_size=len(rows))
    sizes = {str(p): p.stat().st_size for p in (tmp_path / "in").iterdir()}
    assert min(sizes.values()) > 256 * 1024

    _CountingFileSystem.read.clear()
    cfg = ScoreConfig(inputs=[f"countfile://{tmp_path}/in"], output=str(tmp_path / "scores"), model=tiny_model_dir,
                      dtype="float32", device="cpu", max_tokens=8, rows_per_unit=100, executor="local", compile="off")
    result = score(cfg, progress=False)
    assert result.manifest.rows == 8000 and result.manifest.parts == 80
    for path, size in sizes.items():  # once, and planning's look at the first row or footer (64 KiB at most)
        assert size <= _CountingFileSystem.read[path] <= size + 64 * 1024, path

    # a rerun after losing parts reads each shard once more and scores only the lost units
    parts = sorted((tmp_path / "scores").glob("part-*.parquet"))
    for p in parts[3:5] + parts[-1:]:
        p.unlink()
    _CountingFileSystem.read.clear()
    assert score(cfg, progress=False).units_scored == 3
    for path, size in sizes.items():
        assert _CountingFileSystem.read[path] <= size + 64 * 1024, path


def test_one_score_refuses_a_file_reached_through_a_hard_link(tmp_path):
    """``find_shards`` refuses one file reached twice ("two inputs are the same file (..., a link to it?)") by its
    canonical path (``os.path.realpath``), which resolves symbolic links only: ``in/a.jsonl`` and ``in/b.jsonl``, hard
    links to one file, are two shards, and its rows are scored (then selected, trained on, exported) twice. Expected:
    one file is one shard however it is reached (locally, e.g. by device and inode)."""
    from hardfocus.readers import find_shards

    shard = write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": f"doc {i}"} for i in range(5)])
    os.link(shard, tmp_path / "in" / "b.jsonl")
    with pytest.raises(HardfocusError, match="same file"):
        find_shards([str(tmp_path / "in")])
