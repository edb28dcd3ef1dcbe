"""``hardfocus export`` over a real scored and selected corpus (two scores/ directories: a Parquet shard with an id
column, a JSON Lines .zst shard with default ids), against an independent computation: the decisions filtered with
polars, the source rows read with pyarrow, joined by (shard, row)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from exporting.manifest import reconcile
from exporting.rows import joined
from exporting.selection import ShardJob
from hardfocus.parts import STAMP_KEY
from pipelines.cli import app
from scoring import HardfocusError, ScoreConfig, score
from selection import SelectConfig, select
from tests.conftest import real_texts
from tests.exporting.helpers import decisions, expected_rows, read_parts, run_export, snapshot, source_table

SHARDS = {0: Path("a/docs.parquet"), 1: Path("b/b.jsonl.zst")}  # shard index -> path under in/


def _expected(selected_rows, band: str) -> dict[int, list[dict]]:
    decided = decisions(selected_rows["selected"])
    return {index: expected_rows(decided.filter(pl.col("scores") == index), source_table(selected_rows["inputs"] / path),
                                 band) for index, path in SHARDS.items()}


def _f32(rows: list[dict]) -> list[dict]:
    """Floats as float32 holds them (a JSON reader reads float64 back from float32's shortest repr)."""
    return [{k: float(np.float32(v)) if isinstance(v, float) else v for k, v in r.items()} for r in rows]


def test_parquet_export_loads_with_datasets_and_equals_the_source_rows_and_decisions(selected_rows, tmp_path):
    import datasets

    out = tmp_path / "out"
    result = run_export(selected_rows["selected"], out, shard_rows=6)
    want = _expected(selected_rows, "kept")
    for index, rows in want.items():
        files = sorted(str(p) for p in out.glob(f"part-{index:05d}-*.parquet"))
        got = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
        assert got.to_list() == rows
        assert [pq.read_metadata(f).num_rows for f in files] == [min(6, len(rows) - 6 * k) for k in range(len(files))]
    m = result.manifest
    summary = json.loads((selected_rows["selected"] / "summary.json").read_text())
    assert m.rows == m.bands["kept"] == summary["bands"]["kept"] == sum(map(len, want.values()))
    assert {s.rel: s.rows for s in m.shards} == {"docs.parquet": len(want[0]), "b.jsonl.zst": len(want[1])}
    assert json.loads((out / "export.json").read_text())["rows"] == m.rows  # the marker, written last
    assert not list(out.glob(".tmp-*")) and not (out / "spill").exists()


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.zst"])
def test_jsonl_export_read_with_polars(selected_rows, tmp_path, fmt):
    out = tmp_path / "out"
    run_export(selected_rows["selected"], out, format=fmt, shard_rows=1000)
    want = _expected(selected_rows, "kept")
    for index, rows in want.items():
        (part,) = out.glob(f"part-{index:05d}-*")
        assert part.name.endswith("." + fmt)
        assert _f32(read_parts([part])) == _f32(rows)


@pytest.mark.parametrize("band", ["kept", "dropped", "easy", "excluded", "all"])
def test_every_band(selected_rows, tmp_path, band):
    out = tmp_path / band
    result = run_export(selected_rows["selected"], out, band=band, shard_rows=10)
    want = _expected(selected_rows, band)
    for index, rows in want.items():
        assert read_parts(list(out.glob(f"part-{index:05d}-*"))) == rows
    decided = decisions(selected_rows["selected"])
    counts = dict(decided.group_by("band").len().iter_rows()) if band == "all" else \
        {band: decided.filter(pl.col("band") == band).height}
    assert result.manifest.bands == dict(sorted(counts.items()))
    if band in ("excluded", "all"):
        reasons = [r["reason"] for rows in want.values() for r in rows if r["band"] == "excluded"]
        assert reasons and all(reasons)  # each excluded row says why
        assert result.manifest.columns["reason"] == "reason"


def test_a_rerun_is_complete_and_other_settings_are_refused_or_replaced(selected_rows, tmp_path):
    out = tmp_path / "out"
    first = run_export(selected_rows["selected"], out, shard_rows=5)
    before = snapshot(out)
    again = run_export(selected_rows["selected"], out, shard_rows=5)
    assert again.skipped and again.manifest == first.manifest and snapshot(out) == before
    with pytest.raises(HardfocusError, match="differs in: parameters.shard_rows.*--overwrite"):
        run_export(selected_rows["selected"], out, shard_rows=7)
    replaced = run_export(selected_rows["selected"], out, shard_rows=7, overwrite=True)
    assert all(p.rows <= 7 for p in replaced.manifest.parts) and set(snapshot(out)) == {p.name for p in replaced.manifest.parts}


def test_an_interrupted_export_keeps_whole_parts_and_rewrites_the_rest_exactly(selected_rows, tmp_path):
    out = tmp_path / "out"
    run_export(selected_rows["selected"], out, shard_rows=4)
    reference = snapshot(out)
    names = sorted(reference)
    (out / "export.json").unlink()  # as if killed before its marker: three parts lost, one cut short, one emptied
    for name in names[1:4]:
        (out / name).unlink()
    (out / names[5]).write_bytes(reference[names[5]][:100])
    (out / names[6]).write_bytes(b"")
    resumed = run_export(selected_rows["selected"], out, shard_rows=4)
    assert resumed.parts_written == 5
    assert snapshot(out) == reference


def test_a_column_named_like_ours_is_refused_naming_the_prefix_flag(tiny_model_dir, tmp_path):
    rows = [{"text": t, "weight": i, "band": "x"} for i, t in enumerate(["a b c d e f", "g h i j k l m", "n o p q r"] * 4)]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in" / "w.parquet")
    score(ScoreConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "scores"), model=tiny_model_dir,
                      executor="local", dtype="float32", max_tokens=32), progress=False)
    select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), report=False), progress=False)
    with pytest.raises(HardfocusError, match=r"columns named like those export adds \(band, weight\): pass --prefix"):
        run_export(tmp_path / "sel", tmp_path / "out")
    assert not list((tmp_path / "out").glob("part-*"))
    result = run_export(tmp_path / "sel", tmp_path / "out", prefix="hf_")
    got = pl.read_parquet(tmp_path / "out" / "part-*.parquet")
    assert got.columns == ["text", "weight", "band", "hf_sample_id", "hf_band", "hf_weight", "hf_score", "hf_loss"]
    assert got["weight"].to_list() == [rows[int(i.split("#")[1])]["weight"] for i in got["hf_sample_id"]]  # theirs kept
    assert result.manifest.columns["weight"] == "hf_weight"


def test_a_changed_input_shard_is_refused_naming_it(selected_rows, tmp_path):
    """The manifests name the shards as they were scored: a shard rewritten since (another size, or the same size and
    a new modification stamp) or gone is refused in one line naming it, before anything is written."""
    inputs = shutil.copytree(selected_rows["inputs"], tmp_path / "in")
    scores = [shutil.copytree(d, tmp_path / Path(d).name) for d in selected_rows["scores"]]
    for d in scores:  # the copied manifests point at the copied shards, with their stamps
        manifest = json.loads((d / "manifest.json").read_text())
        for shard in manifest["shards"]:
            path = inputs / ("a" if shard["rel"] == "docs.parquet" else "b") / shard["rel"]
            shard["url"], shard["modified"] = str(path), str(os.stat(path).st_mtime_ns)
        (d / "manifest.json").write_text(json.dumps(manifest))
    sel = tmp_path / "sel"
    select(SelectConfig(scores=[str(d) for d in scores], output=str(sel), per_group=True, drop_top=0.15, keep=0.5,
                        report=False), progress=False)
    shard = inputs / "a" / "docs.parquet"
    stat = os.stat(shard)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten with the same bytes
    with pytest.raises(HardfocusError, match=f"the input shard {shard} changed since it was scored .modified since"):
        run_export(sel, tmp_path / "out")
    shard.write_bytes(shard.read_bytes() + b"\0")
    with pytest.raises(HardfocusError, match=f"the input shard {shard} changed since it was scored .size"):
        run_export(sel, tmp_path / "out")
    shard.unlink()
    with pytest.raises(HardfocusError, match=f"the input shard {shard} .scored as 'docs.parquet'. is missing: .*--input-root"):
        run_export(sel, tmp_path / "out")
    assert not list((tmp_path / "out").glob("part-*"))


def test_a_moved_corpus_is_read_under_input_root_and_moved_scores_with_scores(selected_rows, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(selected_rows["inputs"] / "a", moved, dirs_exist_ok=True)
    shutil.copytree(selected_rows["inputs"] / "b", moved, dirs_exist_ok=True)
    time.sleep(0.01)
    scores = [str(shutil.copytree(d, tmp_path / Path(d).name)) for d in selected_rows["scores"]]
    result = run_export(selected_rows["selected"], tmp_path / "out", input_root=str(moved), scores=scores)
    reference = run_export(selected_rows["selected"], tmp_path / "ref")
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "ref") and result.manifest.rows == reference.manifest.rows
    with pytest.raises(HardfocusError, match="--scores gives 1 directories.*selected from 2"):
        run_export(selected_rows["selected"], tmp_path / "x", scores=scores[:1])
    with pytest.raises(HardfocusError, match="is not the one the selection was made from"):
        run_export(selected_rows["selected"], tmp_path / "x", scores=scores[::-1])


def test_a_source_row_whose_id_is_not_the_decided_one_is_refused():
    job = ShardJob(0, 0, "x.parquet", "/data/x.parquet", "parquet", None, 1, None, 3, "doc", "text", False, (), (), "",
                   "", "text", ("text",))
    source = pa.table({"doc": ["a", "b", "c"], "text": ["one", "two", "three"]})
    decided = pa.table({"row": pa.array([0, 2], pa.int64()), "sample_id": ["a", "z"], "band": ["kept", "kept"],
                        "weight": pa.array([1.0, 1.0], pa.float32()), "source_digest": pa.nulls(2, pa.uint64())})
    added = {"sample_id": "sample_id", "band": "band", "weight": "weight"}
    with pytest.raises(HardfocusError, match="row 2 of the input shard /data/x.parquet has the sample id 'c' where the "
                                             "selection decided on 'z': the input changed"):
        joined(source, 0, decided, job, added, "window", resampled=False)
    ok = joined(source, 0, decided.slice(0, 1), job, added, "window", resampled=False)
    assert ok.to_pylist() == [{"doc": "a", "text": "one", "sample_id": "a", "band": "kept", "weight": 1.0}]


def test_counts_that_do_not_match_the_decisions_are_an_error():
    job = ShardJob(0, 0, "x.parquet", "/data/x.parquet", "parquet", None, 1, None, 10, None, "text", False, (), (), "",
                   "", "text", ("text",))
    records = {"part-00000-00000.parquet": {"kind": "part", "shard": 0, "name": "part-00000-00000.parquet", "rows": 4,
                                            "bands": {"kept": 4}, "written": True}}
    assert reconcile([job], {0: {"kept": 4}}, records, resampled=False)[0].rows == 4
    with pytest.raises(HardfocusError, match=r"wrote \{'kept': 4\} where the selection decided on \{'kept': 5\}"):
        reconcile([job], {0: {"kept": 5}}, records, resampled=False)


def test_resample_writes_each_kept_row_its_copies_shuffled_with_weight_one(tiny_model_dir, selected_rows, tmp_path):
    """A selection at a low temperature (weights from 0.04 to 3.6), K = 2.5: each row floor(2.5 w) or one more times,
    in about shard_rows rows per part, all parts of one schema, in an order that is not the source's."""
    sel = tmp_path / "sel"
    select(SelectConfig(scores=selected_rows["scores"], output=str(sel), drop_top=0.15, keep=0.5, temperature=0.01,
                        report=False), progress=False)
    kept = decisions(sel).filter(pl.col("band") == "kept")
    assert kept["weight"].max() > 2 * kept["weight"].min()
    out = tmp_path / "out"
    result = run_export(sel, out, resample=2.5, seed=4, shard_rows=8)
    got = pl.concat([pl.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))], how="vertical")
    schemas = {pq.read_schema(p) for p in out.glob("part-*.parquet")}  # one schema but for each part's own stamp
    assert len({s.with_metadata({k: v for k, v in s.metadata.items() if k != STAMP_KEY}) for s in schemas}) == 1
    assert (got["weight"] == 1.0).all() and got.height == result.manifest.rows
    copies = dict(got.group_by("sample_id").len().iter_rows())
    for sample, w in kept.select("sample_id", "weight").iter_rows():
        assert copies.get(sample, 0) in (int(np.floor(2.5 * w)), int(np.floor(2.5 * w)) + 1), sample
    n = kept.height
    assert abs(got.height - 2.5 * n) < np.sqrt(n * np.log(2 / 1e-9) / 2)  # the bound of tests/exporting/test_copies.py
    assert result.manifest.expected_copies == pytest.approx(2.5 * float(kept["weight"].cast(pl.Float64).sum()))
    order = got["sample_id"].to_list()
    assert order != sorted(order) and sorted(set(order)) != order[: len(set(order))]
    assert {r.rel: r.copies for r in result.manifest.shards} == {
        rel: got.filter(pl.col("sample_id").is_in(kept.filter(pl.col("shard") == rel)["sample_id"].to_list())).height
        for rel in ("docs.parquet", "b.jsonl.zst")}
    assert not (out / "spill").exists()
    # the same seed draws the same; an interrupted run (a part lost, the marker not written) ends the same
    reference = snapshot(out)
    (out / "export.json").unlink()
    (out / sorted(reference)[2]).unlink()
    assert run_export(sel, out, resample=2.5, seed=4, shard_rows=8).parts_written == 1
    assert snapshot(out) == reference
    other = run_export(sel, tmp_path / "other", resample=2.5, seed=5, shard_rows=8)
    assert snapshot(tmp_path / "other") != reference and other.manifest.rows != 0


def test_resample_needs_the_kept_band():
    from exporting import ExportConfig

    with pytest.raises(ValueError, match="only the kept band has"):
        ExportConfig(selected="s", output="o", band="dropped", resample=2.0)


def test_export_command_reads_its_toml_table_and_prints_a_summary(selected_rows, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[export]\nformat = "jsonl"\nshard_rows = 9\nexecutor = "local"\n')
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["-q", "export", str(selected_rows["selected"]), "-o", str(out), "-c", str(config),
                                      "--band", "dropped"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("exported ") and "(dropped " in result.output and "jsonl parts" in result.output
    assert all(p.name.endswith(".jsonl") for p in out.glob("part-*"))
    bad = CliRunner().invoke(app, ["-q", "export", str(tmp_path / "nothing"), "-o", str(tmp_path / "o2"), "--executor", "local"])
    assert bad.exit_code == 2 and bad.stderr.strip().startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1


def test_a_line_scoring_could_not_parse_is_stepped_around_unless_it_is_exported(tiny_model_dir, tmp_path):
    """Scoring records an unparseable JSON line as a row with an error status; the export of the other bands reads
    around it (the source reader refuses such a line), and exporting it says which line it is."""
    texts = [t for t in real_texts(60, seed=2) if t.strip()][:40]
    lines = [json.dumps({"text": t, "i": i}) for i, t in enumerate(texts)]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jsonl").write_text("\n".join(lines[:20] + ["{not json"] + lines[20:]) + "\n")
    score(ScoreConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "scores"), model=tiny_model_dir,
                      executor="local", dtype="float32", max_tokens=32, rows_per_unit=8), progress=False)
    select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), drop_top=0.2, keep=0.5,
                        report=False), progress=False)
    decided = decisions(tmp_path / "sel")
    assert decided.filter(pl.col("row") == 20)["reason"].to_list() == ["status: error"]
    source = [json.loads(line) for line in lines]
    for band in ("kept", "easy", "dropped"):
        run_export(tmp_path / "sel", tmp_path / band, band=band)
        got = read_parts(list((tmp_path / band).glob("part-*")))
        rows = decided.filter(pl.col("band") == band).sort("row")["row"].to_list()
        assert [{"text": r["text"], "i": r["i"]} for r in got] == [source[r - (r > 20)] for r in rows]
    assert any(r > 20 for r in decided.filter(pl.col("band") == "kept")["row"]) and \
        any(r < 20 for r in decided.filter(pl.col("band") == "kept")["row"])  # rows on both sides of the bad line
    with pytest.raises(HardfocusError, match="row 20 of JSON Lines shard .*x.jsonl is not valid JSON"):
        run_export(tmp_path / "sel", tmp_path / "excluded", band="excluded")
