"""Every polars recipe in the README runs against a real scores/ and selected/, and returns what it claims."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from scoring import ScoreConfig, score
from selection import SelectConfig, select
from tests.conftest import conversations, real_texts, write_jsonl

README = Path(__file__).resolve().parents[1] / "README.md"


def _recipes(heading: str = "### Inspecting scores with polars") -> list[str]:
    text = README.read_text()
    section = text[text.index(heading) :]
    section = section[: section.index("\n## ")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.fixture
def workdir(tmp_path, tiny_model_dir, monkeypatch):
    texts = real_texts(60, seed=3)
    write_jsonl(tmp_path / "data" / "shards" / "a.jsonl", [{"text": t, "group": "alpha"} for t in texts[:30]])
    lines = (tmp_path / "data" / "shards" / "a.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "data" / "shards" / "a.jsonl").write_text("".join(lines[:10] + ["\n", "  \n"] + lines[10:]))  # blank lines are not rows
    write_jsonl(tmp_path / "data" / "shards" / "sub" / "b.jsonl", [{"text": t, "group": "beta"} for t in texts[30:]] + [{"text": ""}])
    score(ScoreConfig(inputs=[str(tmp_path / "data" / "shards")], output=str(tmp_path / "scores"), model=tiny_model_dir,
                      group_column="group", executor="local", dtype="float32", max_tokens=64), progress=False)
    select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "selected")), progress=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_recipes_run_and_are_right(workdir):
    recipes = _recipes()
    assert len(recipes) == 4
    ns: dict = {}
    for code in recipes:
        exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - the README's own code

    scores = pl.read_parquet("scores/part-*.parquet")
    ok = scores.filter(pl.col("status") == "ok")
    assert ns["status"]["len"].sum() == scores.height
    assert set(ns["per_group"]["group"]) == {"alpha", "beta"} and ns["per_group"]["rows"].sum() == ok.height
    # every score row found its source row, and it is the right one
    texts = ns["texts"]
    assert texts.height == scores.height and texts["text"].null_count() == 0
    src = {(r["group"], r["text"]) for r in pl.read_ndjson("data/shards/a.jsonl").to_dicts()}
    assert {(g, t) for g, t in texts.filter(pl.col("shard") == "a.jsonl").select("group", "text").iter_rows()} == src
    hardest = ns["hardest"]
    assert hardest["loss"].to_list() == sorted(hardest["loss"].to_list(), reverse=True)
    assert hardest["loss"][0] == ok["loss"].max()
    assert set(ns["thresholds"]) == {"all"}
    assert ns["kept_per_group"]["kept"].sum() == ns["summary"]["bands"]["kept"]


def test_readme_conversation_recipes_run_and_are_right(tmp_path, tiny_chat_model_dir, monkeypatch):
    convs = conversations(24, seed=13)
    rows = [{"id": f"c{i}", "group": "a" if i % 2 else "b", "messages": m} for i, m in enumerate(convs)]
    rows.append({"id": "silent", "group": "a", "messages": [{"role": "user", "content": "anyone?"}]})
    write_jsonl(tmp_path / "data" / "chat" / "c.jsonl", rows)
    score(ScoreConfig(inputs=[str(tmp_path / "data" / "chat")], output=str(tmp_path / "chat-scores"), format="messages",
                      model=tiny_chat_model_dir, id_column="id", group_column="group", executor="local",
                      dtype="float32", max_tokens=256), progress=False)
    monkeypatch.chdir(tmp_path)
    recipes = _recipes("### Inspecting conversations with polars")
    assert len(recipes) == 2
    ns: dict = {}
    for code in recipes:
        exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - the README's own code

    scores = pl.read_parquet("chat-scores/part-*.parquet")
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
