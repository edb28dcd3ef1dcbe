"""Instruction data end to end: `hardfocus run` on conversations (score on Ray -> select -> train -> eval),
with the loss on the assistant turns at every stage."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from hardfocus.contracts.scores import mask_from_spans
from pipelines.cli import app
from tests.conftest import CHATML_GENERATION, conversations, write_jsonl

runner = CliRunner()


def _has_response(row: dict) -> bool:
    return any(m["role"] == "assistant" and m["content"].strip() for m in row["messages"])


def _direct_group_loss(model_dir: str, rows: list[dict]) -> dict[str, float]:
    """Token-level response-only loss per group: each conversation through the model on its own, the labels
    from transformers' assistant mask (the generation-marker template), never from hardfocus."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    sums: dict[str, list[float]] = {}
    for row in rows:
        out = tok.apply_chat_template(row["messages"], chat_template=CHATML_GENERATION, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        ids = torch.tensor([out["input_ids"]])
        labels = torch.where(torch.tensor([out["assistant_masks"]], dtype=torch.bool), ids, -100)
        with torch.inference_mode():
            loss = float(model(input_ids=ids, labels=labels).loss)
        n = int((labels[0, 1:] != -100).sum())
        acc = sums.setdefault(row["group"], [0.0, 0])
        acc[0] += loss * n
        acc[1] += n
    return {g: s / n for g, (s, n) in sums.items()}


@pytest.mark.ray
def test_run_on_conversations(tmp_path, tiny_chat_model_dir, local_ray):
    convs = conversations(70, seed=11)
    rows = [{"id": f"conv-{i}", "group": "short" if len(m) < 5 else "long", "messages": m,
             "noise": "shuffled" if i % 10 == 0 else None} for i, m in enumerate(convs)]
    write_jsonl(tmp_path / "corpus" / "train" / "chat.jsonl", rows[:56])
    write_jsonl(tmp_path / "corpus" / "heldout" / "chat.jsonl", rows[56:])
    config = tmp_path / "run.toml"
    config.write_text(f"""
[run]
workdir = "{tmp_path / 'work'}"
data = ["{tmp_path / 'corpus' / 'train'}"]
heldout = ["{tmp_path / 'corpus' / 'heldout'}"]
model = "{tiny_chat_model_dir}"
format = "messages"
id_column = "id"
label_column = "noise"

[score]
executor = "ray"
dtype = "float32"
max_tokens = 512

[select]
drop_top = 0.1
keep = 0.5

[train]
max_steps = 3
batch_size = 4
max_seq_len = 512
precision = "fp32"
learning_rate = 1e-3

[eval]
dtype = "float32"
max_tokens = 2048  # nothing cut: the direct computation below sees whole conversations
""")
    result = runner.invoke(app, ["-q", "run", str(config)])
    assert result.exit_code == 0, result.output
    assert "'noise' by selection band:" in result.output
    work = tmp_path / "work"

    scores = pl.read_parquet(work / "scores" / "part-*.parquet").sort("row")
    assert scores["status"].to_list() == ["ok" if _has_response(r) else "no_response" for r in rows[:56]]
    scores = scores.filter(pl.col("status") == "ok")
    assert scores["truncated"].sum() > 0  # long conversations lost leading turns to fit 512 tokens
    for row in scores.iter_rows(named=True):  # n_tokens counts the assistant tokens only
        assert row["n_tokens"] == mask_from_spans(row["loss_spans"], len(row["input_ids"])).sum()
        assert row["n_tokens"] < len(row["input_ids"]) - 1
    selected = pl.read_parquet(work / "selected" / "part-*.parquet")
    assert selected.height == scores.height // 2
    joined = selected.join(scores, on="sample_id", suffix="_scores")
    assert joined.height == selected.height and joined["loss_spans"].to_list() == joined["loss_spans_scores"].to_list()

    report = json.loads((work / "eval" / "eval.json").read_text())
    heldout = [r for r in rows[56:] if _has_response(r)]
    for entry, model_dir in zip(report["models"], [tiny_chat_model_dir, str(work / "model")]):
        expected = _direct_group_loss(model_dir, heldout)
        for group, loss in expected.items():
            assert math.isclose(entry["groups"][group]["loss"], loss, abs_tol=1e-5), (entry["name"], group)
    base, trained = (np.exp(m["groups"]["(all)"]["loss"]) for m in report["models"])
    assert base != trained
