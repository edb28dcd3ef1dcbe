"""The library calls docs/architecture.md shows run verbatim (the model swapped for the tiny one) and do what the
commands do: the model resolved from its spec, raw shards tokenised for ERM exactly as scoring tokenises them."""

from __future__ import annotations

import json
import os

import polars as pl
import pytest

from tests.conftest import real_texts, write_jsonl
from tests.docs import blocks, page, section

pytestmark = pytest.mark.ray


def test_the_architecture_pages_library_calls(tmp_path, tiny_model_dir, local_ray, monkeypatch):
    (code,) = blocks(section(page("architecture.md"), "## The stages as library calls"), "python")
    assert code.count('model = "smollm2-135m"') == 1
    shards = tmp_path / "outputs" / "demo" / "corpus" / "train"
    texts = real_texts(60, seed=5)
    write_jsonl(shards / "alpha.jsonl", [{"text": t, "group": "alpha"} for t in texts[:30]] + [{"text": ""}])
    write_jsonl(shards / "beta.jsonl", [{"text": t, "group": "beta"} for t in texts[30:]])
    monkeypatch.chdir(tmp_path)  # the session's Ray was started elsewhere: its workers must get these paths absolute
    ns: dict = {}
    exec(compile(code.replace('model = "smollm2-135m"', f"model = {tiny_model_dir!r}"), "docs", "exec"), ns)  # noqa: S102

    trained, erm = ns["trained"], ns["erm"]
    assert trained.steps == erm.steps == 40 and not trained.skipped
    assert (tmp_path / "work" / "model" / "model.safetensors").is_file()
    scores = pl.read_parquet("work/scores/part-*.parquet")
    ok = scores.filter(pl.col("status") == "ok")
    assert scores.height == 61 and set(scores.filter(pl.col("status") != "ok")["status"]) == {"empty"}  # recorded
    kept = pl.read_parquet("work/selected/part-*.parquet")
    assert trained.train_rows == kept.height
    # ERM trained on every row scoring scored, with the token ids scoring gave it (cut at train's max_seq_len)
    assert erm.train_rows == ok.height
    (tokens,) = json.loads((tmp_path / "work" / "erm" / "train_manifest.json").read_text())["data"]
    assert tokens.startswith(os.environ["HARDFOCUS_CACHE"])  # the raw shards' cache entry
    ids = dict(pl.read_parquet(f"{tokens}/part-*.parquet").select("sample_id", "input_ids").iter_rows())
    assert set(ids) == set(ok["sample_id"])
    max_len = ns["TrainConfig"].model_fields["max_seq_len"].default
    assert any(len(v) > max_len for v in ok["input_ids"])  # some were cut, so the cut is checked too
    for sample_id, scored in ok.select("sample_id", "input_ids").iter_rows():
        assert ids[sample_id] == scored[:max_len]
