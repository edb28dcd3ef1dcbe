"""Training straight from raw conversation shards tokenises them as scoring does: same ids, same loss spans."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from scoring import ScoreConfig, score
from tests.conftest import conversations, write_jsonl
from training import TrainConfig, train


def test_raw_conversation_shards_are_tokenised_with_the_scoring_spans(tmp_path, tiny_chat_model_dir):
    rows = [{"id": f"c{i}", "messages": m} for i, m in enumerate(conversations(12, seed=21))]
    rows.append({"id": "silent", "messages": [{"role": "user", "content": "anyone there?"}]})
    write_jsonl(tmp_path / "chat" / "a.jsonl", rows)
    fmt = {"format": "messages", "messages_column": "messages"}
    score(ScoreConfig(inputs=[str(tmp_path / "chat")], output=str(tmp_path / "scores"), model=tiny_chat_model_dir,
                      id_column="id", max_tokens=200, executor="local", dtype="float32", **fmt), progress=False)
    train(TrainConfig(data=[str(tmp_path / "chat")], output=str(tmp_path / "model"), model=tiny_chat_model_dir,
                          weighting="none", max_steps=1, batch_size=2, max_seq_len=200, precision="fp32", **fmt),
              progress=False)
    tokenized = next(iter(json.loads((tmp_path / "model" / "train_manifest.json").read_text())["data"]))
    counts = json.loads((Path(tokenized) / "tokenized.json").read_text())["rows_per_status"]
    assert sum(counts.values()) == 13 and counts["no_response"] == 1  # every row counted, the silent one not trained on
    tokens = pl.read_parquet(Path(tokenized) / "part-00000.parquet")
    scores = pl.read_parquet(tmp_path / "scores" / "part-*.parquet").filter(pl.col("status") == "ok")
    by_row = scores.with_columns(sample_id=pl.lit("a.jsonl#") + pl.col("row").cast(pl.String))
    joined = tokens.join(by_row, on="sample_id", suffix="_scored")
    assert joined.height == tokens.height == scores.height
    assert joined["input_ids"].to_list() == joined["input_ids_scored"].to_list()
    assert joined["loss_spans"].to_list() == joined["loss_spans_scored"].to_list()
    assert scores.filter(pl.col("sample_id") == "silent").height == 0
