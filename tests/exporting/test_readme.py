"""docs/export.md's sections run as written against an outputs/demo-like layout: its `hardfocus export` commands
(in process, with --executor local), the audit recipe verbatim, and the stock Trainer loop with the tiny model in
place of SmolLM2 and 2 steps in place of 40."""

from __future__ import annotations

import random
import shlex
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from scoring import ScoreConfig, score
from selection import SelectConfig, select
from tests.conftest import real_texts, write_jsonl
from tests.docs import blocks, page, section

EXPORT = page("export.md")


def _section(heading: str) -> str:
    return section(EXPORT, heading)


def _blocks(text: str, language: str) -> list[str]:
    return blocks(text, language)


@pytest.fixture
def demo(tmp_path, tiny_model_dir, monkeypatch):
    """``outputs/demo`` as ``make demo`` leaves it, small: two groups of JSON Lines with a ``noise`` column (null but
    in a few shuffled-word copies), their scores and a selection per group."""
    demo = tmp_path / "outputs" / "demo"
    texts = real_texts(80, seed=9)
    rng = random.Random(0)
    for g, group in enumerate(("licenses", "python-code")):
        rows = [{"text": t, "group": group, "noise": None} for t in texts[g * 40:(g + 1) * 40]]
        for row in rows[::8]:
            words = row["text"].split()
            rng.shuffle(words)
            row.update(text=" ".join(words), noise="shuffled_words")
        write_jsonl(demo / "corpus" / "train" / f"{group}.jsonl", rows)
    score(ScoreConfig(inputs=[str(demo / "corpus" / "train")], output=str(demo / "scores"), model=tiny_model_dir,
                      group_column="group", executor="local", dtype="float32", max_tokens=64), progress=False)
    select(SelectConfig(scores=[str(demo / "scores")], output=str(demo / "selected"), per_group=True, report=False),
           progress=False)
    monkeypatch.chdir(tmp_path)
    return demo


def _run_commands(section: str) -> None:
    for block in _blocks(section, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("hardfocus export"):
                result = CliRunner().invoke(app, ["-q", *shlex.split(line)[1:], "--executor", "local"])
                assert result.exit_code == 0, result.output


def test_the_audit_recipe_runs_and_shows_the_dropped_rows(demo, capsys):
    section = _section("# Auditing what was dropped")
    _run_commands(section)
    (recipe,) = _blocks(section, "python")
    ns: dict = {}
    exec(compile(recipe, "docs/export.md", "exec"), ns)  # noqa: S102 - the docs' own code
    decided = pl.read_parquet("outputs/demo/selected/decisions/*.parquet").filter(pl.col("band").cast(pl.String) == "dropped")
    assert ns["dropped"].height == decided.height > 0
    assert set(ns["dropped"]["sample_id"]) == set(decided["sample_id"])
    assert "shuffled_words" in capsys.readouterr().out  # the injected noise the demo drops


def test_the_trainer_loop_trains_on_the_resampled_export(demo, tiny_model_dir):
    section = _section("# Using the selection with another trainer")
    _run_commands(section)
    assert list(Path("outputs/demo/export").glob("part-*.parquet")) and list(Path("outputs/demo/export-jsonl").glob("part-*.jsonl.zst"))
    (loop,) = _blocks(section, "python")
    assert 'model_id = "HuggingFaceTB/SmolLM2-135M"' in loop and "max_steps=40" in loop
    loop = loop.replace('"HuggingFaceTB/SmolLM2-135M"', repr(tiny_model_dir)).replace("max_steps=40", "max_steps=2")
    ns: dict = {}
    exec(compile(loop, "docs/export.md", "exec"), ns)  # noqa: S102 - the docs' own code
    assert ns["trainer"].state.global_step == 2
    assert len(ns["data"]) == pl.read_parquet("outputs/demo/resampled/part-*.parquet").height > 0
