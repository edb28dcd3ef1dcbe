"""score -> select -> train -> eval through the CLI on a tiny model and real text; eval checked directly."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from pipelines.cli import app
from tests.conftest import real_texts, write_jsonl

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, ["-q", *args])
    assert result.exit_code == 0, result.output
    return result


def direct_group_perplexity(model_dir: str, rows: list[dict], max_tokens: int) -> dict[str, float]:
    """exp(sum NLL / tokens) per group, document by document with model(labels=ids)."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    nll, tokens = {}, {}
    with torch.inference_mode():
        for r in rows:
            ids = tok(r["text"])["input_ids"][:max_tokens]
            if len(ids) < 2:
                continue
            t = torch.tensor([ids])
            n = len(ids) - 1
            nll[r["group"]] = nll.get(r["group"], 0.0) + float(model(input_ids=t, labels=t).loss) * n
            tokens[r["group"]] = tokens.get(r["group"], 0) + n
    return {g: math.exp(nll[g] / tokens[g]) for g in nll}


def test_score_select_train_eval(tmp_path, tiny_model_dir):
    texts = real_texts(120, seed=11)
    groups = ["code" if ("def " in t or "import" in t) else "prose" for t in texts]
    rows = [{"text": t, "group": g} for t, g in zip(texts, groups)]
    write_jsonl(tmp_path / "train" / "a.jsonl", rows[:90])
    write_jsonl(tmp_path / "heldout" / "h.jsonl", rows[90:] + [{"text": "", "group": "prose"}])
    common = ["--model", tiny_model_dir]
    invoke("score", str(tmp_path / "train"), "-o", str(tmp_path / "scores"), "--group-column", "group",
           "--executor", "local", "--dtype", "float32", "--max-tokens", "64", *common)
    invoke("select", str(tmp_path / "scores"), "-o", str(tmp_path / "sel"), "--drop-top", "0.1", "--keep", "0.6")
    trained = invoke("train", str(tmp_path / "sel"), "-o", str(tmp_path / "model"), "--max-steps", "6", "--batch-size", "4",
                     "--learning-rate", "3e-3", "--weighting", "static+online", "--precision", "fp32", "--logging-steps", "2",
                     *common)
    assert "trained 6 steps on 54 rows" in trained.output  # 0.6 of the 90 scored rows (all ok)
    # the ERM baseline straight from raw shards: tokenised by `train` itself
    invoke("train", str(tmp_path / "train"), "-o", str(tmp_path / "erm"), "--max-steps", "2", "--weighting", "none",
           "--precision", "fp32", "--max-seq-len", "64", *common)
    tokenized = next(iter(json.loads((tmp_path / "erm" / "train_manifest.json").read_text())["data"]))
    erm_rows = pl.read_parquet(f"{tokenized}/part-00000.parquet")
    assert erm_rows.height == 90 and erm_rows["input_ids"].list.len().max() <= 64

    result = invoke("eval", "-m", f"base={tiny_model_dir}", "-m", str(tmp_path / "model"), "-d", str(tmp_path / "heldout"),
                    "-o", str(tmp_path / "eval"), "--dtype", "float32", "--max-tokens", "64")
    assert "base loss / ppl" in result.output and "model vs base" in result.output
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert [m["name"] for m in report["models"]] == ["base", "model"]
    heldout = rows[90:]
    for entry, model_dir in zip(report["models"], [tiny_model_dir, str(tmp_path / "model")]):
        assert entry["rows_not_ok"] == 1  # the empty document is counted, not averaged
        expected = direct_group_perplexity(model_dir, heldout, max_tokens=64)
        for group, ppl in expected.items():
            assert entry["groups"][group]["perplexity"] == approx(ppl)
        assert entry["groups"]["(all)"]["docs"] == len(heldout)
        macro = np.mean([math.log(expected[g]) for g in expected])
        assert entry["groups"]["(macro)"]["loss"] == approx(macro)
    base, model = report["models"]
    assert base["groups"]["(all)"]["perplexity"] != model["groups"]["(all)"]["perplexity"]


def approx(x):
    return pytest.approx(x, rel=1e-4)
