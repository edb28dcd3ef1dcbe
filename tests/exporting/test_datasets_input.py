"""A Hugging Face ``datasets`` directory (``save_to_disk``) through the whole chain: scored, selected and exported
with its own columns and features, then loaded back by ``datasets`` itself."""

from __future__ import annotations

import polars as pl
import pytest

from scoring import ScoreConfig, score
from selection import SelectConfig, select
from tests.conftest import real_texts
from tests.exporting.helpers import decisions, run_export

datasets = pytest.importorskip("datasets")


def test_a_saved_dataset_is_scored_selected_and_exported_with_its_own_columns(tmp_path, tiny_model_dir):
    texts = [t for t in real_texts(60, seed=23) if t.strip()][:40]
    features = datasets.Features({"text": datasets.Value("string"), "topic": datasets.ClassLabel(names=["news", "code"]),
                                  "n": datasets.Value("int32")})
    source = datasets.Dataset.from_dict({"text": texts, "topic": [i % 2 for i in range(len(texts))],
                                         "n": list(range(len(texts)))}, features=features)
    source.train_test_split(test_size=0.25, seed=0, shuffle=False)["train"].save_to_disk(str(tmp_path / "ds"))
    saved = datasets.load_from_disk(str(tmp_path / "ds"))
    score(ScoreConfig(inputs=[str(tmp_path / "ds")], output=str(tmp_path / "scores"), model=tiny_model_dir,
                      executor="local", dtype="float32", device="cpu", max_tokens=64), progress=False)
    select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "selected"), report=False),
           progress=False)
    result = run_export(tmp_path / "selected", tmp_path / "export")

    decided = decisions(tmp_path / "selected").filter(pl.col("band") == "kept").sort("row")
    assert decided.height > 0 and result.manifest.rows == decided.height
    exported = datasets.load_dataset("parquet", data_files=str(tmp_path / "export" / "part-*.parquet"), split="train")
    assert exported.features["topic"] == features["topic"]  # the source's own features survive the export
    assert exported.num_rows == decided.height
    want = saved.select(decided["row"].to_list())  # the kept rows of the saved dataset, by the rows scoring numbered
    for column in ("text", "topic", "n"):
        assert exported[column] == want[column], column
    assert exported["sample_id"] == decided["sample_id"].to_list()
    assert exported["weight"] == pytest.approx(decided["weight"].to_list(), rel=1e-6)
