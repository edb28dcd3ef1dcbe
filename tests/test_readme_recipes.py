"""Every polars recipe in the docs (docs/selection.md, instruction-data.md, choosing-a-score.md) runs verbatim against a real outputs/demo-like layout, and returns what it claims.

The recipes name the demo's own paths (``outputs/demo/...``, ``outputs/demo-chat/...``), so a newcomer can
paste them after ``make demo``; the fixtures build the same layout (same file names, the same ``noise``
column, null in most rows) with a tiny model in a temporary directory and run the recipes from there.
"""

from __future__ import annotations

import json

import polars as pl
import pytest

from scoring import ScoreConfig, score
from selection import SelectConfig, select
from tests.conftest import conversations, real_texts, write_jsonl
from tests.docs import blocks, page, section


def _recipes(name: str, heading: str) -> list[str]:
    return blocks(section(page(name), heading), "python")


@pytest.fixture
def workdir(tmp_path, tiny_model_dir, monkeypatch):
    """``outputs/demo`` as ``make demo`` leaves it: corpus/train/<group>.jsonl, scores/, selected/ (per group)."""
    demo = tmp_path / "outputs" / "demo"
    train = demo / "corpus" / "train"
    texts = real_texts(140, seed=3)
    # alpha: its only noise mark after row 100, beyond polars' default schema inference; beta: no noise at all
    alpha = [{"text": t, "group": "alpha", "noise": "shuffled_words" if i == 105 else None} for i, t in enumerate(texts[:110])]
    write_jsonl(train / "alpha.jsonl", alpha)
    lines = (train / "alpha.jsonl").read_text().splitlines(keepends=True)
    (train / "alpha.jsonl").write_text("".join(lines[:10] + ["\n", "  \n"] + lines[10:]))  # blank lines are not rows
    write_jsonl(train / "beta.jsonl", [{"text": t, "group": "beta", "noise": None} for t in texts[110:]] + [{"text": ""}])
    score(ScoreConfig(inputs=[str(train)], output=str(demo / "scores"), model=tiny_model_dir,
                      group_column="group", executor="local", dtype="float32", max_tokens=64), progress=False)
    select(SelectConfig(scores=[str(demo / "scores")], output=str(demo / "selected"), per_group=True), progress=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_recipes_run_and_are_right(workdir):
    recipes = _recipes("selection.md", "## Inspecting scores with polars")
    assert len(recipes) == 5
    ns: dict = {}
    for code in recipes:
        exec(compile(code, "docs", "exec"), ns)  # noqa: S102 - the docs' own code

    scores = pl.read_parquet("outputs/demo/scores/part-*.parquet")
    ok = scores.filter(pl.col("status") == "ok")
    assert ns["status"]["len"].sum() == scores.height
    assert set(ns["per_group"]["group"]) == {"alpha", "beta"} and ns["per_group"]["rows"].sum() == ok.height
    # every score row found its source row, and it is the right one
    texts = ns["texts"]
    assert texts.height == scores.height and texts["text"].null_count() == 0
    for name in ("alpha.jsonl", "beta.jsonl"):
        src = [json.loads(line) for line in (workdir / "outputs/demo/corpus/train" / name).read_text().splitlines() if line.strip()]
        got = texts.filter(pl.col("shard") == name).sort("row").select("row", "text", "noise").to_dicts()
        assert got == [{"row": i, "text": r["text"], "noise": r.get("noise")} for i, r in enumerate(src)]
    assert texts["noise"].drop_nulls().to_list() == ["shuffled_words"]
    hardest = ns["hardest"]
    assert hardest["loss"].to_list() == sorted(hardest["loss"].to_list(), reverse=True)
    assert hardest["loss"][0] == ok["loss"].max()
    assert set(ns["thresholds"]) == {"alpha", "beta"}  # per group, as the demo selects
    assert ns["kept_per_group"]["kept"].sum() == ns["summary"]["bands"]["kept"]
    # the decisions: every scored row once, counted as the summary counts it; dropped rows by score, with text
    per_band = ns["per_band"].with_columns(pl.col("band").cast(pl.String))
    assert per_band["len"].sum() == scores.height
    bands = {b: n for b, n in per_band.group_by("band").agg(pl.col("len").sum()).iter_rows() if b != "excluded"}
    assert bands == ns["summary"]["bands"]
    excluded = {r: n for b, r, n in per_band.iter_rows() if b == "excluded"}
    assert excluded == ns["summary"]["excluded"] and excluded  # the empty beta row is excluded, with its reason
    dropped = ns["dropped"]
    assert dropped.height == min(20, bands["dropped"]) and dropped["text"].null_count() == 0
    assert dropped["score"].to_list() == sorted(dropped["score"].to_list(), reverse=True)


def test_readme_conversation_recipes_run_and_are_right(tmp_path, tiny_chat_model_dir, monkeypatch):
    convs = conversations(24, seed=13)
    rows = [{"id": f"c{i}", "group": "a" if i % 2 else "b", "messages": m, "noise": "swapped" if i == 20 else None}
            for i, m in enumerate(convs)]
    rows.append({"id": "silent", "group": "a", "messages": [{"role": "user", "content": "anyone?"}], "noise": None})
    demo = tmp_path / "outputs" / "demo-chat"
    write_jsonl(demo / "corpus" / "train" / "a.jsonl", [r for r in rows if r["group"] == "a"])
    write_jsonl(demo / "corpus" / "train" / "b.jsonl", [r for r in rows if r["group"] == "b"])
    score(ScoreConfig(inputs=[str(demo / "corpus" / "train")], output=str(demo / "scores"), format="messages",
                      model=tiny_chat_model_dir, id_column="id", group_column="group", executor="local",
                      dtype="float32", max_tokens=256), progress=False)
    monkeypatch.chdir(tmp_path)
    recipes = _recipes("instruction-data.md", "## Inspecting conversations with polars")
    assert len(recipes) == 2
    ns: dict = {}
    for code in recipes:
        exec(compile(code, "docs", "exec"), ns)  # noqa: S102 - the docs' own code

    scores = pl.read_parquet("outputs/demo-chat/scores/part-*.parquet")
    top = scores.filter(pl.col("status") == "ok").sort("loss", descending=True).head(5)
    turns = ns["hardest_turns"]
    assert turns["sample_id"].unique(maintain_order=True).to_list() == top["sample_id"].to_list()
    source = {r["id"]: r["messages"] for r in rows}
    for sample_id in top["sample_id"]:
        got = turns.filter(pl.col("sample_id") == sample_id).sort("turn").select("role", "content").to_dicts()
        assert got == source[sample_id]
    per_group = ns["per_group_chat"]
    ok = scores.filter(pl.col("status") == "ok")
    assert per_group["conversations"].sum() == len(rows) and per_group["ok"].sum() == ok.height
    assert scores.filter(pl.col("sample_id") == "silent")["status"].to_list() == ["no_response"]
    for row in per_group.iter_rows(named=True):
        assert row["assistant_tokens"] == pytest.approx(ok.filter(pl.col("group") == row["group"])["n_tokens"].mean())
    assert per_group["truncated"].sum() == scores["truncated"].sum() > 0


def test_readme_choosing_a_score_recipes_run_and_are_right(tmp_path, tiny_chat_model_dir, monkeypatch):
    import numpy as np

    from tests.conftest import CHATML, _tiny_llama

    reference_model = _tiny_llama(tmp_path / "ref-model", ["<pad>", "<|im_start|>", "<|im_end|>"], 300, seed=2,
                                  chat_template=CHATML)  # another tokenizer, ChatML's special tokens
    write_jsonl(tmp_path / "data" / "c.jsonl", [{"id": f"c{i}", "messages": m} for i, m in enumerate(conversations(20, seed=17))])
    common = dict(inputs=[str(tmp_path / "data")], format="messages", id_column="id", executor="local", dtype="float32",
                  max_tokens=4096)
    score(ScoreConfig(output=str(tmp_path / "scores"), model=tiny_chat_model_dir, ifd=True, **common), progress=False)
    score(ScoreConfig(output=str(tmp_path / "ref-scores"), model=reference_model, **common), progress=False)
    monkeypatch.chdir(tmp_path)
    recipes = _recipes("choosing-a-score.md", "# Choosing a score")
    assert len(recipes) == 2
    ns: dict = {}
    for code in recipes:
        exec(compile(code, "docs", "exec"), ns)  # noqa: S102 - the docs' own code

    ours = pl.read_parquet("scores/part-*.parquet").filter(pl.col("status") == "ok").sort("sample_id")
    theirs = pl.read_parquet("ref-scores/part-*.parquet").filter(pl.col("status") == "ok").sort("sample_id")
    assert ours.height == theirs.height == 20
    ranks = [np.argsort(np.argsort(ours[c].to_numpy())) for c in ("loss", "ifd")]  # no ties in random floats
    assert ns["spearman"] == pytest.approx(np.corrcoef(*ranks)[0, 1], abs=1e-6)
    assert ns["prompt_does_not_help"] == int((ours["ifd"] >= 1).sum())
    assert ns["disagree"].height == 10 and ns["disagree"]["gap"].to_list() == sorted(ns["disagree"]["gap"], reverse=True)
    # both tokenizers count the same response bytes, so every sample pairs up
    assert ours["n_bytes"].to_list() == theirs["n_bytes"].to_list() and ns["pair"].height == 20
    want = dict(zip(ours["sample_id"], (ours["nll_sum"] - theirs["nll_sum"]).to_numpy() / (ours["n_bytes"].to_numpy() * np.log(2))))
    got = dict(zip(ns["pair"]["sample_id"], ns["pair"]["excess_bpb"]))
    assert got == pytest.approx(want, rel=1e-9)
