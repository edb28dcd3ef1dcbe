"""source_batches: a shard's full rows by scoring's row indices, against an independent read of each format."""

from __future__ import annotations

import gzip
import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from hardfocus.errors import HardfocusError
from hardfocus.readers import find_shards, read_shard
from hardfocus.readers.source_rows import source_batches
from hardfocus.sample_format import Columns

N = 37
ROWS = [{"text": f"document {i} " + "word " * (i % 5), "n": i, "score": i / 3, "tags": [f"t{i}"] * (i % 3),
         "meta": {"src": "web" if i % 2 else "code", "len": i * 2}} for i in range(N)]
RANGES = [(0, None), (0, N), (0, 1), (N - 1, N), (N - 1, None), (5, 17), (9, 11), (10, 20), (3, 3), (N, None),
          (30, 1000), (40, 50)]


def _collect(url, fmt, comp, start, stop, batch_rows):
    out = list(source_batches(url, fmt, comp, start, stop, batch_rows))
    for (first, table), nxt in zip(out, out[1:] + [None]):
        if nxt is not None:
            assert table.num_rows == batch_rows and nxt[0] == first + batch_rows
    if not out:
        return None, []
    assert len({t.schema for _, t in out}) == 1  # one schema over the range
    return out[0][0], pa.concat_tables([t for _, t in out]).to_pylist()


def _jsonl(rows) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.fixture
def parquet_shard(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path, row_group_size=10)
    assert pq.ParquetFile(path).metadata.num_row_groups == 4
    return str(path)


@pytest.mark.parametrize("start,stop", RANGES)
@pytest.mark.parametrize("batch_rows", [1, 4, 10, 8192])
def test_parquet_rows_are_the_files_rows(parquet_shard, start, stop, batch_rows):
    expected = pq.read_table(parquet_shard)
    end = N if stop is None else min(stop, N)
    first, rows = _collect(parquet_shard, "parquet", None, start, stop, batch_rows)
    assert rows == expected.slice(start, max(end - start, 0)).to_pylist()
    assert first == (start if rows else None)
    if rows:
        (_, table), *_ = source_batches(parquet_shard, "parquet", None, start, stop, batch_rows)
        assert table.schema == expected.schema  # every source column, its type unchanged


def test_parquet_reads_only_the_row_groups_of_the_range(parquet_shard, monkeypatch):
    seen = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, row_groups=None, **kwargs):
        seen.extend(row_groups)
        return real(self, *args, row_groups=row_groups, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    list(source_batches(parquet_shard, "parquet", None, 12, 25))
    assert seen == [1, 2]


def _blank_lined(rows) -> bytes:
    """The rows with blank and whitespace-only lines between and around them, and no final newline."""
    out = b"\n \n"
    for i, r in enumerate(rows):
        out += json.dumps(r).encode() + (b"\n\t\n\n" if i % 4 == 0 else b"\n")
    return out.rstrip(b"\n") + b"\r\n  "


@pytest.mark.parametrize("compression,suffix,pack", [
    (None, ".jsonl", lambda b: b),
    ("gzip", ".jsonl.gz", gzip.compress),
    ("zstd", ".jsonl.zst", lambda b: zstandard.ZstdCompressor().compress(b)),
])
@pytest.mark.parametrize("start,stop", RANGES)
@pytest.mark.parametrize("batch_rows", [3, 10, 8192])
def test_jsonl_rows_are_the_non_blank_lines(tmp_path, compression, suffix, pack, start, stop, batch_rows):
    raw = _blank_lined(ROWS)
    path = tmp_path / f"s{suffix}"
    path.write_bytes(pack(raw))
    expected = [json.loads(line) for line in raw.split(b"\n") if line.strip()]  # independent: a non-blank line is a row
    assert len(expected) == N
    end = N if stop is None else min(stop, N)
    first, rows = _collect(str(path), "jsonl", compression, start, stop, batch_rows)
    assert rows == expected[start:end]
    assert first == (start if rows else None)


def test_jsonl_row_indices_are_scorings(tmp_path):
    """The text of row k here is the text scoring read as row k."""
    path = tmp_path / "s.jsonl"
    path.write_bytes(_blank_lined(ROWS))
    (shard,) = find_shards([str(path)])
    scored = read_shard(shard, Columns(text="text"))
    rows = [r for _, t in source_batches(str(path), shard.format, shard.compression, batch_rows=7) for r in t.to_pylist()]
    assert [r["text"] for r in rows] == scored.values


def test_jsonl_types_are_unified_over_the_range(tmp_path):
    rows = [{"a": 1}, {"a": None, "b": "x"}, {"a": 2.5}, {"c": {"d": 1}}, {"c": {"e": "y"}, "a": 3}]
    path = tmp_path / "s.jsonl"
    path.write_bytes(_jsonl(rows))
    tables = [t for _, t in source_batches(str(path), "jsonl", None, batch_rows=2)]
    assert len({t.schema for t in tables}) == 1
    assert tables[0].schema.names == ["a", "b", "c"]
    assert tables[0].schema.field("a").type == pa.float64()
    got = pa.concat_tables(tables).to_pylist()
    assert [r["a"] for r in got] == [1, None, 2.5, None, 3]
    assert [r["b"] for r in got] == [None, "x", None, None, None]
    assert got[3]["c"] == {"d": 1, "e": None} and got[4]["c"] == {"d": None, "e": "y"}


@pytest.mark.parametrize("batch_rows", [2, 100])
def test_jsonl_bad_rows_name_the_shard_and_row(tmp_path, batch_rows):
    path = tmp_path / "s.jsonl"
    path.write_bytes(_jsonl([{"a": 1}, {"a": 2}]) + b"\n[1, 2]\n")
    with pytest.raises(HardfocusError, match=r"row 2 of JSON Lines shard .*s\.jsonl is a JSON list, not an object"):
        list(source_batches(str(path), "jsonl", None, batch_rows=batch_rows))
    assert [t.num_rows for _, t in source_batches(str(path), "jsonl", None, 0, 2)] == [2]  # the range stops before it

    path.write_bytes(_jsonl([{"a": 1}, {"a": 2}]) + b"{not json\n")
    with pytest.raises(HardfocusError, match=r"row 2 of JSON Lines shard .*s\.jsonl is not valid JSON"):
        list(source_batches(str(path), "jsonl", None, batch_rows=batch_rows))

    path.write_bytes(_jsonl([{"a": 1}, {"a": 2}, {"a": 3}, {"a": "three"}, {"a": 5}]))
    with pytest.raises(HardfocusError, match=r"row 3 of JSON Lines shard .*s\.jsonl: its columns' types cannot be unified"):
        list(source_batches(str(path), "jsonl", None, batch_rows=batch_rows))


def test_a_credential_in_the_url_is_redacted():
    url = "memory://user:secret@bucket/bad.jsonl"
    with fsspec.open(url, "wb") as f:
        f.write(b'{"a": 1}\n"text"\n')
    with pytest.raises(HardfocusError, match=r"row 1 of JSON Lines shard memory://\*\*\*@bucket/bad.jsonl") as err:
        list(source_batches(url, "jsonl", None))
    assert "secret" not in str(err.value)


def _arrow_file(path, table, stream: bool, batch: int):
    with pa.OSFile(str(path), "wb") as sink:
        writer = (pa.ipc.new_stream if stream else pa.ipc.new_file)(sink, table.schema)
        for b in table.to_batches(max_chunksize=batch):
            writer.write_batch(b)
        writer.close()


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("start,stop", RANGES)
@pytest.mark.parametrize("batch_rows", [1, 4, 8192])
def test_arrow_rows_are_the_files_rows(tmp_path, stream, start, stop, batch_rows):
    table = pa.Table.from_pylist(ROWS)
    path = tmp_path / "d.arrow"
    _arrow_file(path, table, stream, batch=10)
    end = N if stop is None else min(stop, N)
    first, rows = _collect(str(path), "arrow", None, start, stop, batch_rows)
    assert rows == table.slice(start, max(end - start, 0)).to_pylist()
    assert first == (start if rows else None)
    if rows:
        (_, got), *_ = source_batches(str(path), "arrow", None, start, stop, batch_rows)
        assert got.schema == table.schema


def test_an_unknown_format_is_refused(parquet_shard):
    with pytest.raises(HardfocusError, match="unknown shard format 'csv'"):
        list(source_batches(parquet_shard, "csv", None))
