"""Exports at the edges: a band with no rows, copies that all round to none, values a format cannot hold as they
are, columns whose types differ between shards, and rows whose text is not the one scored. Scores are made up in
the exact contract (tests/selection/fake_scores.py) over real input shards: no model needed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from scoring import HardfocusError
from selection import SelectConfig, select
from tests.exporting.helpers import read_parts, run_export
from tests.selection.fake_scores import write_scores


def _scored(d: Path, shard: Path, n: int, fmt: str = "jsonl", seed: int = 0, **kw) -> Path:
    """Made-up scores of the ``n`` rows of ``shard``, its manifest naming the file as scoring would."""
    rng = np.random.default_rng(seed)
    write_scores(d, rng.gamma(4, 0.7, n).tolist(), rng.choice(["a", "b"], n).tolist(), shard=shard.name,
                 rows_per_part=max(n // 3, 1), **kw)
    manifest = json.loads((d / "manifest.json").read_text())
    stat = shard.stat()
    manifest["shards"][0] |= {"url": str(shard), "size": stat.st_size, "modified": str(stat.st_mtime_ns), "format": fmt}
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def _selected(root: Path, scores: list[Path], **kw) -> Path:
    select(SelectConfig(scores=[str(s) for s in scores], output=str(root / "selected"), report=False, **kw), progress=False)
    return root / "selected"


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _texts(n: int) -> list[str]:
    return [f"document {i} " * (1 + i % 4) for i in range(n)]


def test_an_empty_band_exports_no_rows_and_says_so(tmp_path):
    shard = _jsonl(tmp_path / "in" / "e.jsonl", [{"text": t} for t in _texts(20)])
    sel = _selected(tmp_path, [_scored(tmp_path / "scores", shard, 20)])
    result = run_export(sel, tmp_path / "out", band="excluded")  # every row was ranked: none excluded
    assert (result.manifest.rows, result.manifest.parts, result.manifest.shards) == (0, [], [])
    assert json.loads((tmp_path / "out" / "export.json").read_text())["rows"] == 0
    assert run_export(sel, tmp_path / "out", band="excluded").skipped
    cli = CliRunner().invoke(app, ["-q", "export", str(sel), "-o", str(tmp_path / "cli"), "--band", "excluded",
                                   "--executor", "local"])
    assert cli.exit_code == 0, cli.output
    assert cli.output.startswith("exported 0 rows")


def test_resample_whose_copies_all_round_to_none_exports_zero_copies(tmp_path):
    shard = _jsonl(tmp_path / "in" / "e.jsonl", [{"text": t} for t in _texts(20)])
    sel = _selected(tmp_path, [_scored(tmp_path / "scores", shard, 20)])
    result = run_export(sel, tmp_path / "out", resample=1e-9)
    assert result.manifest.rows == 0 and result.manifest.parts == []
    assert [s.copies for s in result.manifest.shards] == [0] and not (tmp_path / "out" / "spill").exists()


def test_bytes_that_are_not_utf8_are_refused_in_json_lines_in_one_line(tmp_path):
    shard = tmp_path / "in" / "b.parquet"
    shard.parent.mkdir(parents=True)
    texts = _texts(12)
    blob = [b"\xff\xfe" + bytes([i]) for i in range(12)]
    pq.write_table(pa.table({"text": texts, "blob": pa.array(blob, pa.binary())}), shard)
    sel = _selected(tmp_path, [_scored(tmp_path / "scores", shard, 12, fmt="parquet")])
    with pytest.raises(HardfocusError, match="the column 'blob' holds bytes that are not UTF-8 text.*--format parquet") as err:
        run_export(sel, tmp_path / "out", format="jsonl")
    assert "\n" not in str(err.value)
    assert run_export(sel, tmp_path / "pq").manifest.rows > 0  # Parquet holds bytes


def test_an_empty_struct_nested_in_a_struct_or_list_exports_to_parquet_and_back_to_json(tmp_path):
    rows = [{"text": t, "meta": {"n": i, "extra": {}}, "tags": [{}] * (i % 3)} for i, t in enumerate(_texts(24))]
    shard = _jsonl(tmp_path / "in" / "e.jsonl", rows)
    sel = _selected(tmp_path, [_scored(tmp_path / "scores", shard, 24)])
    run_export(sel, tmp_path / "pq", band="all")
    schema = pq.read_schema(next((tmp_path / "pq").glob("part-*")))
    assert schema.field("meta").type.field("extra").type == pa.json_()
    got = read_parts(list((tmp_path / "pq").glob("part-*")))
    assert [r["meta"]["extra"] for r in got] == ["{}"] * 24
    run_export(sel, tmp_path / "jsonl", band="kept", resample=3.0, format="jsonl")  # through Parquet phase-one files
    lines = [json.loads(line) for p in (tmp_path / "jsonl").glob("part-*") for line in p.read_text().splitlines()]
    assert lines and all(r["meta"]["extra"] == {} and r["tags"] == rows[r["meta"]["n"]]["tags"] for r in lines)


def test_resample_refuses_a_nested_column_of_other_types_in_two_shards_naming_both(tmp_path):
    a = _jsonl(tmp_path / "in" / "a.jsonl", [{"text": f"alpha {t}", "m": {"x": 1}} for t in _texts(20)])
    b = _jsonl(tmp_path / "in" / "b.jsonl", [{"text": f"beta {t}", "m": 3} for t in _texts(20)])
    sel = _selected(tmp_path, [_scored(tmp_path / "sa", a, 20, seed=1), _scored(tmp_path / "sb", b, 20, seed=2)])
    with pytest.raises(HardfocusError, match=r"the column 'm' is struct<x: int64> in a.jsonl but int64 in b.jsonl"):
        run_export(sel, tmp_path / "out", resample=1.0)


@pytest.mark.parametrize("last", [8192, 9000], ids=["alone-in-its-batch", "with-hashes"])
def test_a_json_lines_column_of_hashes_and_negative_numbers_is_refused_naming_it(tmp_path, last):
    rows = [{"text": f"t{i}", "h": 2**63 + i} for i in range(last)] + [{"text": "last", "h": -1}]
    shard = _jsonl(tmp_path / "in" / "h.jsonl", rows)
    sel = _selected(tmp_path, [_scored(tmp_path / "scores", shard, len(rows))])
    with pytest.raises(HardfocusError, match=rf"row {last} .*column 'h'.*integers past 2\*\*63 and negative ones"):
        run_export(sel, tmp_path / "out", band="all")


def test_a_row_whose_text_has_other_bytes_than_scored_is_refused(tmp_path):
    texts = _texts(12)
    shard = _jsonl(tmp_path / "in" / "e.jsonl", [{"text": t} for t in texts])
    n_bytes = [len(t.encode()) for t in texts]
    scores = _scored(tmp_path / "scores", shard, 12, columns={"n_bytes": n_bytes})
    sel = _selected(tmp_path, [scores])
    assert run_export(sel, tmp_path / "ok", band="all").manifest.rows == 12
    scores_bad = _scored(tmp_path / "bad" / "scores", shard, 12, columns={"n_bytes": n_bytes[:5] + [1] + n_bytes[6:]})
    bad = _selected(tmp_path / "bad", [scores_bad])
    with pytest.raises(HardfocusError, match=r"row 5 of the input shard .*e\.jsonl has \d+ bytes of text where scoring "
                                             r"read 1: it is not the row that was scored"):
        run_export(bad, tmp_path / "out", band="all")


def test_hugging_face_features_survive_a_resampled_export(tmp_path):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    shard = tmp_path / "in" / "d.parquet"
    shard.parent.mkdir(parents=True)
    datasets.Dataset.from_dict({"text": _texts(30), "label": [i % 2 for i in range(30)]},
                               features=features).to_parquet(str(shard))
    sel = _selected(tmp_path, [_scored(tmp_path / "scores", shard, 30, fmt="parquet")])
    run_export(sel, tmp_path / "out", resample=2.0)
    got = datasets.load_dataset("parquet", data_files=str(tmp_path / "out" / "part-*.parquet"), split="train",
                                cache_dir=str(tmp_path / "hf"))
    assert got.features["label"] == features["label"] and got.features["weight"] == datasets.Value("float32")
