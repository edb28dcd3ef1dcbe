"""What training reads: data of another tokenizer is refused; the data's identity is part of the run's, so a new
selection is never 'already trained' nor resumed from an old selection's checkpoint (issue findings 3 and 4)."""

from __future__ import annotations

import json

import pytest

from scoring import HardfocusError, ScoreConfig, score
from selection import SelectConfig, select
from tests.conftest import write_jsonl
from tests.training.helpers import run_killed_at_step, small_config
from training import train


@pytest.fixture
def selected(tmp_path, tiny_model_dir):
    """Real scores of a small corpus with the tiny model, and a selection of them."""
    from tests.conftest import real_texts

    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": t} for t in real_texts(40, seed=4)])
    score(ScoreConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "scores"), model=tiny_model_dir,
                      executor="local", dtype="float32", max_tokens=32), progress=False)
    select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "selected")), progress=False)
    return tmp_path / "selected"


def test_data_tokenised_by_another_tokenizer_is_refused_naming_both(tmp_path, selected, tiny_chat_model_dir):
    """Before: trained on foreign token ids without a word."""
    recorded = json.loads((selected / "summary.json").read_text())["scores"][0]["tokenizer_fingerprint"]
    cfg = small_config([str(selected)], tmp_path / "model", max_steps=1, model=tiny_chat_model_dir)
    with pytest.raises(HardfocusError, match=rf"holds token ids of another tokenizer \({recorded}\) than the model's .*\(\w{{32}}\)"):
        train(cfg, progress=False)
    assert not (tmp_path / "model" / "model.safetensors").exists()
    with pytest.raises(HardfocusError, match="another tokenizer"):  # scores/ as data, likewise
        train(cfg.model_copy(update={"data": [str(tmp_path / "scores")], "weighting": "none"}), progress=False)


def test_a_new_selection_is_not_already_trained(tmp_path, selected, tiny_model_dir):
    """Before: after `select --overwrite` with other parameters the same `train` said 'already trained'."""
    cfg = small_config([str(selected)], tmp_path / "model", max_steps=2, model=tiny_model_dir)
    first = train(cfg, progress=False)
    assert not first.skipped and first.train_rows == 20
    assert train(cfg, progress=False).skipped  # same run, same data: nothing to do
    select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(selected), keep=0.25, overwrite=True), progress=False)
    with pytest.raises(HardfocusError, match=rf"made from other inputs \(its input '{selected}' is new or changed since\); pass "
                                             "--overwrite"):  # the selection that changed, named
        train(cfg, progress=False)
    again = train(cfg.model_copy(update={"overwrite": True}), progress=False)
    assert not again.skipped and again.train_rows == 10 and again.resumed_from is None


def test_an_unfinished_run_is_not_resumed_on_a_new_selection(tmp_path, selected, tiny_model_dir, monkeypatch):
    """Before: a checkpoint of the old selection's run was resumed on the new rows."""
    cfg = small_config([str(selected)], tmp_path / "model", max_steps=4, save_steps=2, model=tiny_model_dir)
    run_killed_at_step(3, cfg, tiny_model_dir, monkeypatch)
    assert (tmp_path / "model" / "checkpoints" / "checkpoint-2").is_dir()
    select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(selected), drop_top=0.2, overwrite=True),
           progress=False)
    with pytest.raises(HardfocusError, match=rf"holds an unfinished training run made from other inputs \(its input "
                                             rf"'{selected}' is new or changed since\)"):
        train(cfg, progress=False)
    fresh = train(cfg.model_copy(update={"overwrite": True}), progress=False)
    assert fresh.resumed_from is None and fresh.steps == 4
    manifest = json.loads((tmp_path / "model" / "train_manifest.json").read_text())
    assert manifest["data"] == {str(selected): "selected"} and manifest["train_rows"] == fresh.train_rows == 20
