"""Hugging Face ``datasets`` directories (``save_to_disk``) and ``.arrow`` files as inputs: scored as the same rows
written as Parquet are, a DatasetDict's splits as shards, only the data files ``state.json`` lists, damage named."""

from __future__ import annotations

import logging

import datasets
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hardfocus.readers import check_columns, find_shards, iter_units, read_shard
from hardfocus.readers.source_rows import source_batches
from hardfocus.sample_format import Columns
from scoring import HardfocusError, ScoreConfig, score
from tests.conftest import conversations, real_texts
from tests.scoring.helpers import read_scores, reference_losses

datasets.disable_progress_bars()


def _rows(n: int, seed: int = 3) -> list[dict]:
    rows = [{"text": t, "doc": f"doc-{i}", "domain": "alpha" if i % 3 else "beta"}
            for i, t in enumerate(real_texts(n, seed=seed))]
    rows[4]["text"] = ""  # empty
    rows[9]["text"] = None  # null
    return rows


def _dataset(rows: list[dict]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]})


def _cfg(tmp_path, model, inputs, output, **kw) -> ScoreConfig:
    base = dict(inputs=[str(i) for i in inputs], output=str(tmp_path / output), model=model, dtype="float32",
                device="cpu", max_tokens=64, rows_per_unit=10, executor="local", token_budget=512, chunk_tokens=100)
    return ScoreConfig(**(base | kw))


def _cache_file(path) -> str:
    """A ``.map()`` over the saved dataset: its cache-*.arrow lands in the dataset's directory."""
    mapped = datasets.load_from_disk(str(path)).map(lambda r: {"chars": len(r["text"] or "")})
    (cache,) = [f["filename"] for f in mapped.cache_files]
    assert cache.startswith(str(path)) and "/cache-" in cache
    return cache


def test_a_saved_dataset_scores_as_the_same_rows_as_parquet_do(tmp_path, tiny_model_dir, caplog):
    rows = _rows(45)
    _dataset(rows).save_to_disk(str(tmp_path / "hf"), num_shards=2)
    cache = _cache_file(tmp_path / "hf")
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pq" / "all.parquet", row_group_size=8)

    caplog.set_level(logging.INFO, logger="hardfocus.readers")
    common = dict(id_column="doc", group_column="domain")
    arrow = score(_cfg(tmp_path, tiny_model_dir, [tmp_path / "hf"], "s_arrow", **common), progress=False).manifest
    parquet = score(_cfg(tmp_path, tiny_model_dir, [tmp_path / "pq"], "s_pq", **common), progress=False).manifest
    assert any("left out" in r.message and cache.rsplit("/", 1)[1] in r.message for r in caplog.records)

    assert [(s.rel, s.format, s.compression) for s in arrow.shards] == [
        ("data-00000-of-00002.arrow", "arrow", None), ("data-00001-of-00002.arrow", "arrow", None)]
    assert sum(s.rows for s in arrow.shards) == 45 and all(s.rows > 10 for s in arrow.shards)  # several units each
    assert all(s.size > 0 and s.modified for s in arrow.shards)
    assert arrow.rows_by_status == parquet.rows_by_status and arrow.tokens == parquet.tokens

    a, p = read_scores(tmp_path / "s_arrow"), read_scores(tmp_path / "s_pq")
    # the rows in (shard, row) order are the dataset's rows in order, each row index its place in its shard
    assert a["sample_id"].to_list() == [r["doc"] for r in rows]
    first = arrow.shards[0].rows
    assert a["row"].to_list() == list(range(first)) + list(range(45 - first))
    p = p.sort("row")
    for col in ("sample_id", "group", "n_tokens", "truncated", "status", "input_ids"):
        assert a[col].to_list() == p[col].to_list(), col
    np.testing.assert_allclose(a["loss"].fill_null(-1).to_numpy(), p["loss"].fill_null(-1).to_numpy(), atol=1e-6)
    ok = a.filter(pl.col("status") == "ok")
    texts = {r["doc"]: r["text"] for r in rows}
    want = reference_losses(tiny_model_dir, [texts[s] for s in ok["sample_id"]], max_tokens=64)
    np.testing.assert_allclose(ok["loss"].to_numpy(), want, atol=1e-5)
    assert dict(zip(a["sample_id"], a["status"]))["doc-4"] == dict(zip(a["sample_id"], a["status"]))["doc-9"] == "empty"


def test_a_dataset_dict_scores_each_split_and_selects(tmp_path, tiny_model_dir):
    from selection import SelectConfig, select

    train, test = _rows(30, seed=5), _rows(12, seed=6)
    for i, r in enumerate(train + test):
        r["label"] = "odd" if i % 2 else "even"
    datasets.DatasetDict({"train": _dataset(train), "test": _dataset(test)}).save_to_disk(str(tmp_path / "dd"))
    assert sorted(p.name for p in (tmp_path / "dd").iterdir()) == ["dataset_dict.json", "test", "train"]
    manifest = score(_cfg(tmp_path, tiny_model_dir, [tmp_path / "dd"], "scores", group_column="domain"),
                     progress=False).manifest
    assert [(s.rel, s.rows) for s in manifest.shards] == [("test/data-00000-of-00001.arrow", 12),
                                                          ("train/data-00000-of-00001.arrow", 30)]
    df = read_scores(tmp_path / "scores")
    assert df["sample_id"].to_list() == [f"test/data-00000-of-00001.arrow#{i}" for i in range(12)] + [
        f"train/data-00000-of-00001.arrow#{i}" for i in range(30)]
    ok = df.filter(pl.col("status") == "ok")
    by_id = {f"{split}/data-00000-of-00001.arrow#{i}": r["text"] for split, rs in (("test", test), ("train", train))
             for i, r in enumerate(rs)}
    want = reference_losses(tiny_model_dir, [by_id[s] for s in ok["sample_id"]], max_tokens=64)
    np.testing.assert_allclose(ok["loss"].to_numpy(), want, atol=1e-5)
    assert df["group"].to_list() == [r["domain"] for r in test + train]

    # select reads scores/ only: nothing there says the inputs were Arrow
    result = select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), drop_top=0.1,
                                 keep=0.5), progress=False)
    assert result.summary.rows == 42 and result.summary.eligible == ok.height
    selected = pl.read_parquet(f"{tmp_path / 'sel'}/part-*.parquet")
    assert 0 < selected.height < ok.height and set(selected["sample_id"]) <= set(ok["sample_id"])

    # pipelines/labels.py reads the shards again for a label column, as group (its own signature is another matter)
    labels = [g for shard in find_shards([str(tmp_path / "dd")]) for g in read_shard(shard, Columns(group="label")).groups]
    assert labels == [r["label"] for r in test + train]


def test_only_the_data_files_state_json_lists_are_shards(tmp_path, caplog):
    _dataset(_rows(12)).save_to_disk(str(tmp_path / "hf"))
    cache = _cache_file(tmp_path / "hf")
    caplog.set_level(logging.INFO, logger="hardfocus.readers")
    (shard,) = find_shards([str(tmp_path / "hf")])  # not the cache, not state.json / dataset_info.json as JSON Lines
    assert shard.rel == "data-00000-of-00001.arrow" and shard.format == "arrow"
    assert [r.levelno for r in caplog.records if "left out" in r.message] == [logging.INFO]
    assert cache.rsplit("/", 1)[1] in caplog.text
    # a directory above it: the same rule for the datasets directory inside
    (tmp_path / "plain.jsonl").write_text('{"text": "a plain shard beside it"}\n')
    assert [s.rel for s in find_shards([str(tmp_path)])] == ["hf/data-00000-of-00001.arrow", "plain.jsonl"]
    # the data file named alone, or by a glob, is a shard like any file
    assert [s.rel for s in find_shards([str(tmp_path / "hf" / "data-*.arrow")])] == ["data-00000-of-00001.arrow"]

    (tmp_path / "hf" / "data-00000-of-00001.arrow").unlink()
    with pytest.raises(HardfocusError, match=r"state.json lists data-00000-of-00001.arrow, which is not there"):
        find_shards([str(tmp_path / "hf")])
    (tmp_path / "hf" / "state.json").write_text('{"_fingerprint": "x"}')
    with pytest.raises(HardfocusError, match=r"cannot read the list of data files \(_data_files\) in .*state.json"):
        find_shards([str(tmp_path / "hf")])


def _ipc(path, table: pa.Table, stream: bool = True, batch: int = 7) -> str:
    with pa.OSFile(str(path), "wb") as sink:
        writer = (pa.ipc.new_stream if stream else pa.ipc.new_file)(sink, table.schema)
        for b in table.to_batches(max_chunksize=batch):
            writer.write_batch(b)
        writer.close()
    return str(path)


@pytest.mark.parametrize("stream", [True, False])
def test_units_are_cut_across_record_batches(tmp_path, stream):
    rows = _rows(30)
    _ipc(tmp_path / "x.arrow", pa.Table.from_pylist(rows), stream=stream)
    (shard,) = find_shards([str(tmp_path / "x.arrow")])
    columns = Columns(text="text", id="doc", group="domain")
    check_columns(shard, columns)
    for n in (1, 4, 7, 10, 30, 100):
        units = list(iter_units(shard, columns, n))
        assert [(u.start, u.stop) for u in units] == [(s, min(s + n, 30)) for s in range(0, 30, n)]
        assert units[-1].consumed == 1.0 and all(a.consumed <= b.consumed for a, b in zip(units, units[1:]))
        for u in units:
            assert u.block.values == [r["text"] for r in rows[u.start : u.stop]]
            assert u.block.ids == [r["doc"] for r in rows[u.start : u.stop]]
            assert u.block.groups == [r["domain"] for r in rows[u.start : u.stop]]
        skipped = list(iter_units(shard, columns, n, skip=frozenset(range(0, 30, 2 * n))))
        assert [(u.start, u.stop) for u in skipped] == [(u.start, u.stop) for u in units]
        assert [u.block is None for u in skipped] == [u.start % (2 * n) == 0 for u in units]
    with pytest.raises(HardfocusError, match=r"x.arrow has no column 'body'.*pass --text-column"):
        check_columns(shard, Columns(text="body"))
    with pytest.raises(HardfocusError, match=r"column 'doc' of shard .*x.arrow is .*pass --messages-column"):
        list(iter_units(shard, Columns(format="messages", messages="doc"), 10))


def test_chat_formats_read_as_from_parquet(tmp_path):
    convs = conversations(9, seed=2)
    pairs = [{"prompt": c[-2]["content"], "response": c[-1]["content"], "sys": "Be brief." if i % 2 else None,
              "messages": c} for i, c in enumerate(convs)]
    _dataset(pairs).save_to_disk(str(tmp_path / "hf"))
    pq.write_table(pa.Table.from_pylist(pairs), tmp_path / "p.parquet")
    (arrow,) = find_shards([str(tmp_path / "hf")])
    (parquet,) = find_shards([str(tmp_path / "p.parquet")])
    for columns in (Columns(format="prompt_response", system="sys"), Columns(format="messages")):
        got, want = read_shard(arrow, columns), read_shard(parquet, columns)
        assert got.values == want.values and got.status == want.status == [None] * 9
    assert read_shard(arrow, Columns(format="messages")).values[0] == [
        {"role": m["role"], "content": m["content"]} for m in convs[0]]


def test_messages_format_scores_as_from_parquet(tmp_path, tiny_chat_model_dir):
    convs = [{"messages": c} for c in conversations(12, seed=4)]
    _dataset(convs).save_to_disk(str(tmp_path / "hf"))
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.Table.from_pylist(convs), tmp_path / "pq" / "data-00000-of-00001.parquet")
    for name, inputs in (("s_arrow", tmp_path / "hf"), ("s_pq", tmp_path / "pq")):
        score(_cfg(tmp_path, tiny_chat_model_dir, [inputs], name, format="messages", max_tokens=128), progress=False)
    a, p = read_scores(tmp_path / "s_arrow"), read_scores(tmp_path / "s_pq")
    assert a["row"].to_list() == p["row"].to_list() == list(range(12))
    assert a["status"].to_list() == p["status"].to_list() and (a["status"] == "ok").sum() >= 9
    assert a["input_ids"].to_list() == p["input_ids"].to_list()
    np.testing.assert_allclose(a["loss"].fill_null(-1).to_numpy(), p["loss"].fill_null(-1).to_numpy(), atol=1e-6)


def test_a_row_over_the_byte_cap_gets_a_status(tmp_path, tiny_model_dir):
    rows = [{"text": t} for t in ["A short document about rivers and the sea.", "x " * 3000, "Another short one here."]]
    _dataset(rows).save_to_disk(str(tmp_path / "hf"))
    manifest = score(_cfg(tmp_path, tiny_model_dir, [tmp_path / "hf"], "scores", max_row_bytes=1000), progress=False).manifest
    df = read_scores(tmp_path / "scores")
    assert df["status"].to_list() == ["ok", "error: row of 6000 bytes over the cap of 1000 bytes (--max-row-bytes)", "ok"]
    assert manifest.rows == 3 and manifest.rows_by_status == {"error": 1, "ok": 2}


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], r"Arrow shard .*data-00000-of-00001.arrow \(\d+ bytes\) does not end with the "
                                 r"end-of-stream marker .*cut short"),
    (lambda b: b[:-8], r"does not end with the end-of-stream marker"),  # cut exactly between two batches
    (lambda b: b"", r"Arrow shard .*data-00000-of-00001.arrow is empty \(0 bytes\)"),
    (lambda b: b[:300] + b"\x00" * 40 + b[340:], r"of Arrow shard .*data-00000-of-00001.arrow.*the file is damaged"),
    (lambda b: b[: len(b) // 3] + b"\xff" * 200 + b[len(b) // 3 + 200 :],
     r"rows \d+-\d+ of Arrow shard .*data-00000-of-00001.arrow are not valid Arrow data.*the file is damaged"),
])
def test_a_damaged_arrow_file_is_one_clear_error(tmp_path, tiny_model_dir, damage, message):
    _dataset([{"text": f"document number {i} about the weather"} for i in range(2500)]).save_to_disk(str(tmp_path / "hf"))
    path = tmp_path / "hf" / "data-00000-of-00001.arrow"
    path.write_bytes(damage(path.read_bytes()))
    for on_error in ("record", "stop"):
        with pytest.raises(HardfocusError, match=message) as err:
            score(_cfg(tmp_path, tiny_model_dir, [tmp_path / "hf"], "scores", on_error=on_error, rows_per_unit=1000),
                  progress=False)
        assert "\n" not in str(err.value)
    with pytest.raises(HardfocusError, match=message):
        list(source_batches(str(path), "arrow", None))


def test_source_batches_are_the_datasets_rows(tmp_path):
    rows = _rows(2300)
    ds = _dataset(rows)
    ds.save_to_disk(str(tmp_path / "hf"))  # record batches of 1000 rows
    (shard,) = find_shards([str(tmp_path / "hf")])
    for start, stop in ((0, None), (990, 1010), (1999, 2300), (2299, 5000)):
        out = list(source_batches(shard.url, shard.format, shard.compression, start, stop, batch_rows=64))
        end = 2300 if stop is None else min(stop, 2300)
        assert [first for first, _ in out] == list(range(start, end, 64))
        got = pa.concat_tables([t for _, t in out])
        assert got.schema.names == ["text", "doc", "domain"]
        assert got.to_pylist() == ds.select(range(start, end)).to_list()


def test_training_on_a_saved_dataset_tokenises_its_rows(tmp_path, tiny_model_dir, monkeypatch):
    from transformers import AutoTokenizer

    from training import TrainConfig
    from training.raw_shards import as_token_dir

    monkeypatch.setenv("HARDFOCUS_CACHE", str(tmp_path / "cache"))
    rows = _rows(20)
    datasets.DatasetDict({"train": _dataset(rows[:14]), "more": _dataset(rows[14:])}).save_to_disk(str(tmp_path / "dd"))
    cfg = TrainConfig(data=[str(tmp_path / "dd")], output=str(tmp_path / "model"), model=tiny_model_dir,
                      weighting="none", max_steps=1, batch_size=4, precision="fp32", max_seq_len=32, group_column=None)
    tokens = as_token_dir(str(tmp_path / "dd"), cfg, tiny_model_dir, "train")
    got = pq.read_table(f"{tokens}/part-00000.parquet").to_pylist()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    order = rows[14:] + rows[:14]  # more/ before train/
    want = {f"{split}/data-00000-of-00001.arrow#{i}": tok(r["text"])["input_ids"][:32]
            for split, rs in (("more", rows[14:]), ("train", rows[:14])) for i, r in enumerate(rs) if r["text"]}
    assert {r["sample_id"]: r["input_ids"] for r in got} == want
    assert len(got) == sum(1 for r in order if r["text"])
