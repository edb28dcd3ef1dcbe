"""Damaged and awkward inputs: a shard cut short or with a corrupt page is one error naming it (in both
``--on-error`` modes); a row that cannot be scored as given (a null id, a row over the size cap) is a counted
per-row error; literal paths win over globs; http(s) inputs work and no message carries their credentials;
a shard's listing says when it was modified; a conversation's or a row group's cost follows what is kept.
"""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import os
import random
import threading

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from hardfocus.readers import find_shards, iter_units, read_shard
from hardfocus.sample_format import Columns
from scoring import HardfocusError, ScoreConfig, score
from scoring.units import ShardTask
from tests.conftest import ENGLISH, conversations, write_jsonl

MODES = ("record", "stop")


def run(tmp_path, model, inputs, on_error="record", out="scores", **kw):
    cfg = ScoreConfig(inputs=[str(i) for i in inputs], output=str(tmp_path / out), model=model, executor="local",
                      dtype="float32", on_error=on_error, **kw)
    return score(cfg, progress=False)


def scores(tmp_path, out="scores") -> pl.DataFrame:
    return pl.read_parquet(f"{tmp_path / out}/part-*.parquet").sort("shard", "row")


def _lines(n: int, seed: int = 0) -> bytes:
    """JSONL rows of text that compresses about as well as prose does (several zstd blocks for a few thousand)."""
    rng = random.Random(seed)
    words = [w for t in ENGLISH for w in t.split()] + [f"{rng.getrandbits(40):x}" for _ in range(400)]
    return b"".join(json.dumps({"text": " ".join(rng.choices(words, k=20))}).encode() + b"\n" for _ in range(n))


# ---- 1: a compressed shard cut short ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl.zst", ".jsonl.gz"])
def test_a_compressed_shard_cut_short_is_an_unreadable_shard_in_both_modes(tmp_path, tiny_model_dir, suffix,
                                                                          monkeypatch):
    import hardfocus.readers.jsonl

    monkeypatch.setattr(hardfocus.readers.jsonl, "_READ_BYTES", 16 * 1024)  # rows before the cut are read first
    data = _lines(1200)
    packed = zstandard.ZstdCompressor().compress(data) if suffix.endswith("zst") else gzip.compress(data)
    path = tmp_path / "in" / f"cut{suffix}"
    path.parent.mkdir()
    path.write_bytes(packed[: len(packed) * 3 // 4])  # a partial upload: rows before the cut are read, and scored
    for mode in MODES:
        with pytest.raises(HardfocusError, match=rf"cannot read JSON Lines shard .*cut{suffix}: .*is the file complete"
                           ) as info:
            run(tmp_path, tiny_model_dir, [path], on_error=mode, out=f"scores-{mode}", max_tokens=8, rows_per_unit=200)
        assert "\n" not in str(info.value)
        assert not (tmp_path / f"scores-{mode}" / "manifest.json").exists()
        assert list((tmp_path / f"scores-{mode}").glob("part-*.parquet"))  # the cut came after the first units


def test_a_multi_frame_zstd_shard_is_read_whole_and_a_cut_inside_its_second_frame_is_an_error(tmp_path):
    data = _lines(2000)
    frames = [zstandard.ZstdCompressor().compress(data[:50_000]), zstandard.ZstdCompressor().compress(data[50_000:])]
    (tmp_path / "multi.jsonl.zst").write_bytes(b"".join(frames))
    block = read_shard(find_shards([str(tmp_path / "multi.jsonl.zst")])[0], Columns())
    assert block.values == [json.loads(line)["text"] for line in data.splitlines()]
    (tmp_path / "cut.jsonl.zst").write_bytes(frames[0] + frames[1][: len(frames[1]) // 2])
    with pytest.raises(HardfocusError, match=r"cut.jsonl.zst: .*is the file complete"):
        read_shard(find_shards([str(tmp_path / "cut.jsonl.zst")])[0], Columns())


# ---- 8: a Parquet shard with a corrupt page -------------------------------------------------------------------


@pytest.mark.parametrize("where", ["page header", "compressed page"])
def test_a_parquet_shard_with_a_corrupt_page_names_the_file_and_the_row_group(tmp_path, tiny_model_dir, where):
    path = tmp_path / "in" / "damaged.parquet"
    path.parent.mkdir()
    rng = random.Random(1)
    texts = [f"{ENGLISH[i % 6]} {rng.getrandbits(64):x}" for i in range(160)]
    pq.write_table(pa.table({"text": texts}), path, row_group_size=40, compression="zstd")
    column = pq.read_metadata(path).row_group(2).column(0)
    raw = bytearray(path.read_bytes())
    if where == "page header":
        at = column.data_page_offset
    else:  # the zstd frame of the dictionary page, which holds the texts
        at = raw.index(b"\x28\xb5\x2f\xfd", column.dictionary_page_offset)
    raw[at : at + 8] = b"\xff" * 8
    path.write_bytes(bytes(raw))
    assert pq.read_metadata(path).num_rows == 160  # the footer is intact
    for mode in MODES:
        with pytest.raises(HardfocusError, match=r"row group 2 \(rows 80-119\) of Parquet shard .*damaged.parquet")\
                as info:
            run(tmp_path, tiny_model_dir, [path], on_error=mode, out=f"scores-{mode}", max_tokens=8, rows_per_unit=20)
        assert "\n" not in str(info.value)


@pytest.mark.ray
def test_a_corrupt_parquet_page_comes_through_ray_as_the_same_one_line_error(tmp_path, tiny_model_dir, local_ray):
    path = tmp_path / "in" / "damaged.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"text": ENGLISH * 10}), path, row_group_size=20, compression="zstd")
    column = pq.read_metadata(path).row_group(1).column(0)
    raw = bytearray(path.read_bytes())
    raw[column.data_page_offset : column.data_page_offset + 8] = b"\xff" * 8
    path.write_bytes(bytes(raw))
    cfg = ScoreConfig(inputs=[str(path)], output=str(tmp_path / "scores"), model=tiny_model_dir, executor="ray",
                      max_tokens=8, rows_per_unit=20)
    with pytest.raises(HardfocusError, match=r"row group 1 \(rows 20-39\) of Parquet shard .*damaged.parquet") as info:
        score(cfg, progress=False)
    assert "Traceback" not in str(info.value) and "RayTaskError" not in str(info.value) and "\n" not in str(info.value)


# ---- 17: literal paths with glob characters; http(s) inputs and their credentials -------------------------------


def test_an_existing_path_with_glob_characters_is_taken_literally(tmp_path):
    write_jsonl(tmp_path / "file[1].jsonl", [{"text": "the literal one"}])
    write_jsonl(tmp_path / "file1.jsonl", [{"text": "what the glob matches"}])
    write_jsonl(tmp_path / "run[2024]" / "a.jsonl", [{"text": "in a bracketed directory"}])
    shards = find_shards([str(tmp_path / "file[1].jsonl")])
    assert [s.rel for s in shards] == ["file[1].jsonl"]
    assert read_shard(shards[0], Columns()).values == ["the literal one"]
    assert [s.rel for s in find_shards([str(tmp_path / "run[2024]")])] == ["a.jsonl"]
    assert [s.rel for s in find_shards([str(tmp_path / "run[2024]" / "a.jsonl")])] == ["a.jsonl"]
    # a path that does not exist is still a glob
    assert [s.rel for s in find_shards([str(tmp_path / "file[0-9].jsonl")])] == ["file1.jsonl"]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    """(directory, base URL): a local HTTP server in a thread serving that directory."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_an_http_shard_is_scored_end_to_end(tmp_path, tiny_model_dir, http_root):
    root, base = http_root
    write_jsonl(root / "d.jsonl", [{"text": t} for t in ENGLISH])
    shards = find_shards([f"{base}/d.jsonl"])
    assert [(s.url, s.rel, s.size) for s in shards] == [(f"{base}/d.jsonl", "d.jsonl", (root / "d.jsonl").stat().st_size)]
    result = run(tmp_path, tiny_model_dir, [f"{base}/d.jsonl"], max_tokens=16)
    assert result.manifest.rows == len(ENGLISH) and result.manifest.rows_by_status == {"ok": len(ENGLISH)}
    assert scores(tmp_path)["sample_id"].to_list() == [f"d.jsonl#{i}" for i in range(len(ENGLISH))]


def test_no_error_message_carries_the_credentials_of_an_http_url(tmp_path, tiny_model_dir, http_root):
    root, base = http_root
    secret_base = base.replace("http://", "http://user:secret@")
    with pytest.raises(HardfocusError, match=r"input 'http://\*\*\*@127.0.0.1:\d+/missing.jsonl' does not exist") as info:
        find_shards([f"{secret_base}/missing.jsonl"])
    assert "secret" not in str(info.value)
    (root / "bad.jsonl").write_bytes(b'{"text": "fine"}\n{broken\n')
    with pytest.raises(HardfocusError, match=r"http://\*\*\*@127.0.0.1:\d+/bad.jsonl row 1: error: invalid JSON") as info:
        run(tmp_path, tiny_model_dir, [f"{secret_base}/bad.jsonl"], on_error="stop", max_tokens=16)
    assert "secret" not in str(info.value)
    (root / "no-text.jsonl").write_bytes(b'{"body": "x"}\n')
    with pytest.raises(HardfocusError, match=r"first row of shard http://\*\*\*@.*no-text.jsonl has no field") as info:
        run(tmp_path, tiny_model_dir, [f"{secret_base}/no-text.jsonl"], out="s2")
    assert "secret" not in str(info.value)


# ---- 18: a null id ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_null_id_is_a_counted_row_error(tmp_path, tiny_model_dir, fmt):
    rows = [{"text": ENGLISH[i], "id": f"id{i}"} for i in range(4)]
    rows[2]["id"] = None
    path = tmp_path / "in" / f"d.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, rows)
    else:
        path.parent.mkdir()
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)
    with pytest.raises(HardfocusError, match=rf"d.{fmt} row 2: error: null id in column 'id'"):
        run(tmp_path, tiny_model_dir, [path], on_error="stop", id_column="id", max_tokens=16)
    result = run(tmp_path, tiny_model_dir, [path], id_column="id", max_tokens=16, out="recorded")
    assert result.manifest.rows == 4 and result.manifest.rows_by_status == {"ok": 3, "error": 1}
    assert result.manifest.error_examples == ["error: null id in column 'id'"]
    df = scores(tmp_path, "recorded")
    assert df["status"].to_list() == ["ok", "ok", "error: null id in column 'id'", "ok"]
    assert df["sample_id"].to_list()[:2] == ["id0", "id1"] and df["loss"][2] is None


# ---- 20: cost follows the unit -----------------------------------------------------------------------------------


def _slow_encode(tokenizer, messages, max_tokens, ifd=False):
    """The module docstring's truncation, done the obvious way: every leading-turn cut tried, fewest first."""
    from hardfocus import chat

    if not any(m["role"] == chat.ASSISTANT and m["content"].strip() for m in messages):
        return None, None, chat.Status.NO_RESPONSE.value
    system = messages[:1] if messages[0]["role"] == chat.SYSTEM else []
    body = messages[len(system):]
    last = max(i for i, m in enumerate(body) if m["role"] == chat.ASSISTANT)
    starts = [i for i in chat._turn_starts(body) if i <= last]
    for k, s in enumerate(starts):
        enc = chat._encode(tokenizer, system + body[s:], None, ifd)
        if len(enc.input_ids) <= max_tokens or k == len(starts) - 1:
            break
    truncated = k > 0
    if len(enc.input_ids) > max_tokens:
        enc = chat.Encoded(enc.input_ids[:max_tokens], enc.target[:max_tokens], layout=enc.layout)
        enc.target[:1] = False
        truncated = True
        if not enc.target.any():
            return None, truncated, chat.Status.PROMPT_TOO_LONG.value
    enc.truncated = truncated
    enc.n_bytes = chat._scored_bytes(enc, chat._special_ids(tokenizer))
    turns = chat._ifd_turns(enc, tokenizer.bos_token_id) if ifd else None
    return enc, turns, None


def test_a_long_conversation_costs_what_its_kept_turns_cost_and_encodes_as_before(tiny_chat_model_dir, monkeypatch):
    from transformers import AutoTokenizer

    from hardfocus import chat

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    rendered = {"calls": 0, "chars": 0, "armed": True}
    real_apply = chat._apply

    def counting_apply(*args, **kwargs):
        rendered["calls"] += 1
        text = real_apply(*args, **kwargs)
        rendered["chars"] += len(text)
        if rendered["armed"] and rendered["calls"] > 500:  # the old code renders 2 prefixes per assistant turn of 10,000 messages
            raise AssertionError(f"{rendered['calls']} renderings of a conversation that keeps a few turns")
        return text

    monkeypatch.setattr(chat, "_apply", counting_apply)
    rng = random.Random(2)
    long = [{"role": "system", "content": "Answer briefly."}]
    for k in range(5000):
        long += [{"role": "user", "content": f"Q {k}?"},
                 {"role": "assistant", "content": f"A {k}: {rng.choice(['yes', 'no', 'the sea', 'a river'])}."}]
    for max_tokens in (64, 200):
        rendered.update(calls=0, chars=0)
        enc = chat.encode_conversation(tokenizer, long, max_tokens=max_tokens, ifd=True)
        assert rendered["calls"] <= 200 and rendered["chars"] <= 400 * max_tokens, rendered  # old: > 10,000 calls
        tail = long[:1] + long[-40:]  # more turns than fit: the same result, by the slow path
        rendered["armed"] = False
        ref, turns, status = _slow_encode(tokenizer, tail, max_tokens, ifd=True)
        rendered["armed"] = True
        assert enc.status is status is None and enc.truncated
        np.testing.assert_array_equal(enc.input_ids, ref.input_ids)
        np.testing.assert_array_equal(enc.target, ref.target)
        assert enc.n_bytes == ref.n_bytes
        assert [(t.prefix.tolist(), t.start, t.stop) for t in enc.ifd_turns] == \
            [(t.prefix.tolist(), t.start, t.stop) for t in turns]
    # conversations small enough for the slow path: the same ids, mask, flags, bytes and IFD turns at every budget
    monkeypatch.setattr(chat, "_apply", real_apply)
    for messages in conversations(12, seed=11):
        full = len(chat._encode(tokenizer, messages, None).input_ids)
        for max_tokens in sorted({8, 20, full // 3, full // 2, full - 1, full, full + 5} - {0}):
            enc = chat.encode_conversation(tokenizer, messages, max_tokens=max_tokens, ifd=True)
            ref, turns, status = _slow_encode(tokenizer, messages, max_tokens, ifd=True)
            assert enc.status == status, (max_tokens, full)
            if status is not None:
                continue
            assert enc.truncated == ref.truncated
            np.testing.assert_array_equal(enc.input_ids, ref.input_ids)
            np.testing.assert_array_equal(enc.target, ref.target)
            assert enc.n_bytes == ref.n_bytes
            if turns is None:
                assert enc.status == chat.Status.IFD_UNMATCHED.value
            else:
                assert [(t.prefix.tolist(), t.start, t.stop) for t in enc.ifd_turns] == \
                    [(t.prefix.tolist(), t.start, t.stop) for t in turns]


def test_a_big_row_group_is_read_in_batches_of_at_most_a_unit(tmp_path, monkeypatch):
    rows = [{"text": f"row {i} {ENGLISH[i % 6]}", "doc": f"d{i}", "src": "ab"[i % 2]} for i in range(1000)]
    path = tmp_path / "one-group.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=len(rows))
    shard = find_shards([str(path)])[0]
    columns = Columns(id="doc", group="src")
    asked: list[dict] = []
    real_iter_batches = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        asked.append(kwargs)
        return real_iter_batches(self, *args, **kwargs)

    def whole_reads_refused(self, *args, **kwargs):
        raise AssertionError("a whole row group read at once")

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", whole_reads_refused)
    monkeypatch.setattr(pq.ParquetFile, "read", whole_reads_refused)
    units = list(iter_units(shard, columns, 64, skip=frozenset({128})))
    assert [(u.start, u.stop) for u in units] == [(s, min(s + 64, 1000)) for s in range(0, 1000, 64)]
    assert asked and all(a["batch_size"] <= 64 and a["row_groups"] == [0] for a in asked)
    for u in units:
        if u.start == 128:
            assert u.block is None
            continue
        assert u.block.values == [r["text"] for r in rows[u.start : u.stop]]
        assert u.block.ids == [r["doc"] for r in rows[u.start : u.stop]]
        assert u.block.groups == [r["src"] for r in rows[u.start : u.stop]]
        assert u.block.status == [None] * (u.stop - u.start)


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.zst", "d.parquet"])
def test_a_row_over_the_size_cap_gets_a_status_and_is_not_parsed(tmp_path, tiny_model_dir, name):
    rows = [{"text": ENGLISH[i]} for i in range(4)]
    rows[1]["text"] = "the river " * 300  # 3,000 bytes of text
    path = tmp_path / "in" / name
    path.parent.mkdir()
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
        size = 3000
    else:
        data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
        size = len(json.dumps(rows[1]).encode())
        path.write_bytes(zstandard.ZstdCompressor().compress(data) if name.endswith(".zst") else data)
    status = f"error: row of {size} bytes over the cap of 2000 bytes"
    with pytest.raises(HardfocusError, match=rf"{name} row 1: {status}"):
        run(tmp_path, tiny_model_dir, [path], on_error="stop", max_tokens=16, max_row_bytes=2000)
    result = run(tmp_path, tiny_model_dir, [path], max_tokens=16, out="recorded", max_row_bytes=2000)
    assert result.manifest.rows == 4 and result.manifest.rows_by_status == {"ok": 3, "error": 1}
    df = scores(tmp_path, "recorded")
    assert df["status"][1].startswith(status) and df["status"].to_list()[::2] == ["ok", "ok"]


def test_a_huge_jsonl_line_is_skipped_without_being_held_whole(tmp_path):
    """A 20 MB line over the cap: the reader's peak of Python memory stays far below the line (tracemalloc counts
    allocations, deterministically), and the rows after it are read."""
    import tracemalloc

    line = b'{"text": "' + b"x" * 20_000_000 + b'"}'
    for name, data in (("d.jsonl", b'{"text": "a"}\n' + line + b'\n{"text": "b"}\n'),
                       ("d.jsonl.zst", zstandard.ZstdCompressor().compress(b'{"text": "a"}\n' + line + b'\n{"text": "b"}'))):
        (tmp_path / name).write_bytes(data)
        shard = find_shards([str(tmp_path / name)])[0]
        del data
        tracemalloc.start()
        try:
            block = read_shard(shard, Columns(), max_row_bytes=1000)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert block.values == ["a", None, "b"], name
        assert block.status[1] == f"error: row of {len(line)} bytes over the cap of 1000 bytes (--max-row-bytes)"
        assert peak < 8_000_000, (name, peak)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_jsonl_rows_are_the_same_whatever_the_chunks_the_stream_is_read_in(tmp_path, monkeypatch, chunk):
    import hardfocus.readers.jsonl

    monkeypatch.setattr(hardfocus.readers.jsonl, "_READ_BYTES", chunk)
    long = b'{"text": "' + b"x" * 60 + b'"}'
    data = (b'{"text": "a"}\n\n   \t\n{"text": "b"}\r\n' + long + b"\n" + b" " * 100 + b'\n{"text": "c"}')
    for name, packed in (("d.jsonl", data), ("d.jsonl.zst", zstandard.ZstdCompressor().compress(data)),
                         ("d.jsonl.gz", gzip.compress(data))):
        (tmp_path / name).write_bytes(packed)
        block = read_shard(find_shards([str(tmp_path / name)])[0], Columns(), max_row_bytes=40)
        assert block.values == ["a", "b", None, "c"], name  # blank lines, even long ones, are not rows
        assert block.status == [None, None, f"error: row of {len(long)} bytes over the cap of 40 bytes "
                                "(--max-row-bytes)", None], name


def test_a_messages_cell_over_the_size_cap_gets_a_status(tmp_path):
    convs = conversations(6, seed=12)
    convs[3] = [{"role": "user", "content": "q" * 1200}, {"role": "assistant", "content": "a" * 1200}]
    pq.write_table(pa.Table.from_pylist([{"messages": m} for m in convs]), tmp_path / "c.parquet", row_group_size=4)
    block = read_shard(find_shards([str(tmp_path / "c.parquet")])[0], Columns(format="messages"), max_row_bytes=2000)
    sizes = [sum(len(m["role"].encode()) + len(m["content"].encode()) for m in c) for c in convs]
    for i, (conv, size) in enumerate(zip(convs, sizes)):
        if size > 2000:
            assert block.status[i] == f"error: row of {size} bytes over the cap of 2000 bytes (--max-row-bytes)"
            assert block.values[i] is None
        else:
            assert block.status[i] is None and block.values[i] == conv
    assert block.status[3] is not None and sum(s <= 2000 for s in sizes) >= 2, sizes


# ---- 19 (the shard side): what a listing says about when a shard changed ---------------------------------------


def test_a_shard_carries_its_modification_stamp_from_the_listing(tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": "x"}])
    write_jsonl(tmp_path / "in" / "sub" / "b.jsonl", [{"text": "y"}])
    a, b = tmp_path / "in" / "a.jsonl", tmp_path / "in" / "sub" / "b.jsonl"
    stamps = {str(a): str(os.stat(a).st_mtime_ns), str(b): str(os.stat(b).st_mtime_ns)}
    for spec in (tmp_path / "in", tmp_path / "in" / "*.jsonl", a):
        for shard in find_shards([str(spec)]):
            assert shard.modified == stamps[shard.url], spec
    before = find_shards([str(a)])[0]
    a.write_text('{"text": "z"}\n')  # same size, new content
    os.utime(a, ns=(os.stat(a).st_atime_ns, os.stat(a).st_mtime_ns + 1_000_000_000))
    after = find_shards([str(a)])[0]
    assert after.size == before.size and after.modified != before.modified
    task = ShardTask(after, (0,))
    assert ShardTask.from_json(task.to_row()["task"]) == task


def test_an_http_shard_carries_the_servers_last_modified(http_root):
    root, base = http_root
    write_jsonl(root / "d.jsonl", [{"text": "x"}])
    shard = find_shards([f"{base}/d.jsonl"])[0]
    from email.utils import formatdate

    assert shard.modified == formatdate(os.stat(root / "d.jsonl").st_mtime, usegmt=True)
    # a server's directory index lists a directory: its shards, with their sizes and versions
    write_jsonl(root / "sub" / "e.jsonl.gz", [])
    (root / "notes.txt").write_text("not a shard")
    listed = find_shards([f"{base}/"])
    assert [(s.url, s.rel) for s in listed] == [(f"{base}/d.jsonl", "d.jsonl"), (f"{base}/sub/e.jsonl.gz", "sub/e.jsonl.gz")]
    assert listed[0].size == (root / "d.jsonl").stat().st_size and listed[0].modified == shard.modified


def test_s3_shards_take_their_etag_from_the_listing_without_a_request_per_file(s3_url, monkeypatch):
    import s3fs

    fs = s3fs.S3FileSystem()
    for name in ("a.jsonl", "b/c.jsonl"):
        fs.pipe_file(f"{s3_url}/in/{name}", b'{"text": "x"}\n')
    etags = {f"{s3_url}/in/{name}": fs.info(f"{s3_url}/in/{name}")["ETag"] for name in ("a.jsonl", "b/c.jsonl")}
    fs.invalidate_cache()
    per_file = []
    real_info = s3fs.S3FileSystem._info

    async def counting_info(self, path, **kwargs):
        per_file.append(path)
        return await real_info(self, path, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_info", counting_info)
    shards = find_shards([f"{s3_url}/in"])
    assert {s.url: s.modified for s in shards} == etags
    assert not [p for p in per_file if p.endswith(".jsonl")], per_file


def test_redact_hides_userinfo_and_secret_query_values_and_nothing_else():
    from hardfocus.storage import redact

    text = "cannot read 'https://alice:s3cr3t@host/x.jsonl?X-Amz-Signature=abc&X-Amz-Date=20260101&sig=q&token=t'"
    out = redact(text)
    assert "s3cr3t" not in out and "alice" not in out and "abc" not in out and "=q" not in out and "=t'" not in out
    assert "X-Amz-Date=20260101" in out and "https://***@host/x.jsonl" in out
    assert redact("s3://bucket/data/part-1.parquet and /local/path#3") == "s3://bucket/data/part-1.parquet and /local/path#3"
