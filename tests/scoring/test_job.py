"""The scoring job in-process: one row per input row, exact losses, resume, refusals, manifest."""

from __future__ import annotations

import json
import os

import pytest

from hardfocus.readers import find_shards
from scoring import HardfocusError, ScoreConfig, score
from scoring.output import ScoresDir
from scoring.units import shard_digest
from tests.scoring.helpers import make_corpus, read_scores, reference_losses


def _cfg(tmp_path, model, **kw) -> ScoreConfig:
    base = dict(
        inputs=[str(tmp_path / "in")], output=str(tmp_path / "scores"), model=model, dtype="float32",
        device="cpu", group_column="domain", max_tokens=64, rows_per_unit=10, executor="local",
        token_budget=512, chunk_tokens=100,
    )
    return ScoreConfig(**(base | kw))


def test_one_row_per_input_row_with_exact_losses(tmp_path, tiny_model_dir):
    rows = make_corpus(tmp_path)
    result = score(_cfg(tmp_path, tiny_model_dir), progress=False)
    df = read_scores(tmp_path / "scores")

    assert df.height == 37 + 30 and df["sample_id"].n_unique() == df.height
    assert df.filter(df["shard"] == "one.parquet")["row"].to_list() == list(range(37))
    assert df["sample_id"][0] == "one.parquet#0"
    status = dict(zip(df["sample_id"], df["status"]))
    assert status["one.parquet#4"] == status["one.parquet#9"] == status["two.jsonl.gz#2"] == "empty"
    assert status["two.jsonl.gz#29"].startswith("error: invalid JSON")

    ok = df.filter(df["status"] == "ok")
    texts = {f"{shard}#{i}": r["text"] for shard, rs in rows.items() for i, r in enumerate(rs) if r}
    expected = reference_losses(tiny_model_dir, [texts[s] for s in ok["sample_id"]], max_tokens=64)
    for got, want in zip(ok["loss"].to_list(), expected):
        assert got == pytest.approx(want, abs=1e-5)
    assert (ok["nll_sum"] / ok["n_tokens"] - ok["loss"]).abs().max() < 1e-5
    assert ok["truncated"].sum() > 0 and (ok.filter(ok["truncated"])["n_tokens"] == 63).all()
    assert (ok["input_ids"].list.len() == ok["n_tokens"] + 1).all()
    assert df.filter(df["status"] != "ok")["loss"].null_count() == df.height - ok.height

    m = result.manifest
    assert m.rows == 67 and sum(m.rows_by_status.values()) == 67
    blank = sum(1 for rs in rows.values() for r in rs if r and not (r["text"] or "").strip())
    assert blank >= 3
    assert m.rows_by_status == {"empty": blank, "error": 1, "ok": ok.height}
    assert m.tokens == int(ok["n_tokens"].sum()) and m.dtype == "float32"
    assert [(s.rel, s.rows) for s in m.shards] == [("one.parquet", 37), ("two.jsonl.gz", 30)]
    assert json.loads((tmp_path / "scores" / "manifest.json").read_text())["rows"] == 67


def test_resume_scores_only_missing_units_and_finished_rerun_is_a_noop(tmp_path, tiny_model_dir):
    make_corpus(tmp_path)
    cfg = _cfg(tmp_path, tiny_model_dir)
    score(cfg, progress=False)
    before = read_scores(cfg.output)
    out = ScoresDir(cfg.output)
    parts = out.parts()
    mtimes = {p: os.path.getmtime(os.path.join(cfg.output, p)) for p in parts}

    assert score(cfg, progress=False).units_scored == 0  # finished: nothing to do
    assert {p: os.path.getmtime(os.path.join(cfg.output, p)) for p in parts} == mtimes

    # simulate a crash: two parts never written, a half-written temporary left behind, no manifest
    out.remove([parts[1], parts[5], "manifest.json"])
    (tmp_path / "scores" / f".tmp-deadbeef-{parts[1]}").write_bytes(b"PAR1 half")
    result = score(cfg, progress=False)
    assert result.units_scored == 2
    after = read_scores(cfg.output)
    assert after.drop("input_ids").equals(before.drop("input_ids"))
    assert not list((tmp_path / "scores").glob(".tmp-*"))
    assert [r.units_scored for r in result.manifest.runs] == [len(parts), 2]


def test_other_configuration_or_changed_inputs_are_refused_then_overwritten(tmp_path, tiny_model_dir):
    make_corpus(tmp_path)
    score(_cfg(tmp_path, tiny_model_dir), progress=False)
    with pytest.raises(HardfocusError, match=r"made with other settings \(differs in: max_tokens\)"):
        score(_cfg(tmp_path, tiny_model_dir, max_tokens=32), progress=False)
    result = score(_cfg(tmp_path, tiny_model_dir, max_tokens=32, overwrite=True), progress=False)
    assert result.manifest.max_tokens == 32 and read_scores(tmp_path / "scores")["n_tokens"].max() == 31

    (tmp_path / "in" / "two.jsonl.gz").unlink()  # inputs changed: old parts no longer belong
    with pytest.raises(HardfocusError, match="part files that the current inputs do not produce"):
        score(_cfg(tmp_path, tiny_model_dir, max_tokens=32), progress=False)


def test_duplicate_ids_are_detected_and_reported(tmp_path, tiny_model_dir):
    from tests.conftest import write_jsonl

    write_jsonl(tmp_path / "in" / "d.jsonl", [{"text": f"text number {i}", "id": f"doc{i % 4}"} for i in range(10)])
    result = score(_cfg(tmp_path, tiny_model_dir, id_column="id", group_column=None), progress=False)
    assert result.manifest.duplicate_ids == 6
    assert result.manifest.duplicate_id_examples == ["doc0", "doc1", "doc2", "doc3"]


def test_concurrent_run_on_same_output_is_refused(tmp_path, tiny_model_dir):
    make_corpus(tmp_path)
    cfg = _cfg(tmp_path, tiny_model_dir)
    holder = ScoresDir(cfg.output)
    holder.lock()
    try:
        with pytest.raises(HardfocusError, match="another hardfocus run is writing to"):
            score(cfg, progress=False)
    finally:
        holder.unlock()


def test_gpu_actors_planned_by_a_driver_without_a_gpu_get_cuda_and_bf16(tmp_path, monkeypatch):
    """The driver decides device and dtype once for every actor; it must not resolve 'auto' to its own CPU."""
    import torch

    from scoring.job import _device_and_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    base = dict(inputs=["x"], output=str(tmp_path / "o"))
    assert _device_and_dtype(ScoreConfig(**base, gpus_per_actor=1)) == {"device": "cuda", "dtype": "bfloat16"}
    assert _device_and_dtype(ScoreConfig(**base, gpus_per_actor=1, dtype="float16", device="cuda:1")) == {
        "device": "cuda:1", "dtype": "float16"}
    assert _device_and_dtype(ScoreConfig(**base, dtype="float32")) == {"device": "cpu", "dtype": "float32"}
    with pytest.raises(HardfocusError, match="no CUDA GPU is visible"):  # in-process, the GPU must be here
        _device_and_dtype(ScoreConfig(**base, executor="local", device="cuda"))


def test_a_shard_that_changed_since_it_was_scored_is_refused_then_rescored(tmp_path, tiny_model_dir):
    import gzip

    make_corpus(tmp_path)
    cfg = _cfg(tmp_path, tiny_model_dir)
    score(cfg, progress=False)
    # the JSONL shard replaced by a file of another size: its scores are stale
    with gzip.open(tmp_path / "in" / "two.jsonl.gz", "wt") as f:
        f.write("\n".join(f'{{"text": "row {i}", "domain": "delta"}}' for i in range(13)) + "\n")
    with pytest.raises(HardfocusError, match=r"scores of 1 shards that changed since \(e.g. .*two.jsonl.gz\)"):
        score(cfg, progress=False)
    result = score(cfg.model_copy(update={"overwrite": True}), progress=False)
    df = read_scores(tmp_path / "scores")
    assert result.manifest.rows == df.height == 37 + 13 and df["sample_id"].n_unique() == df.height
    assert df.filter(df["shard"] == "two.jsonl.gz")["group"].unique().to_list() == ["delta"]
    assert [(s.rel, s.rows) for s in result.manifest.shards] == [("one.parquet", 37), ("two.jsonl.gz", 13)]
    assert result.units_scored == 2  # only the changed shard's units; one.parquet's were kept


def test_a_directory_scored_before_done_markers_is_completed_without_scoring(tmp_path, tiny_model_dir):
    import shutil

    make_corpus(tmp_path)
    cfg = _cfg(tmp_path, tiny_model_dir)
    first = score(cfg, progress=False)
    before = read_scores(cfg.output)
    shutil.rmtree(tmp_path / "scores" / "done")  # as written by hardfocus before the markers existed
    again = score(cfg, progress=False)
    assert again.units_scored == 0 and again.manifest.runs[-1].units_reused == first.manifest.parts
    assert sorted(p.name for p in (tmp_path / "scores" / "done").iterdir()) == sorted(
        f"{shard_digest(s)}.json" for s in find_shards(cfg.inputs))
    keys = ("rows", "rows_by_status", "error_examples", "tokens", "truncated")
    assert {k: getattr(again.manifest, k) for k in keys} == {k: getattr(first.manifest, k) for k in keys}
    assert read_scores(cfg.output).equals(before)
