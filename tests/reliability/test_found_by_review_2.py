"""Problems found by a second adversarial review (object stores, Ray, `hardfocus run` across config changes, the
raw-shard tokenisation cache, `report`, and ways around the first review's fixes). Each test fails on the code as
reviewed and passes once the problem is fixed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from scoring import HardfocusError, ScoreConfig, score


def _jsonl(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


TEXTS = [f"The committee met on day {i} to discuss the budget for the coming year." for i in range(8)]
OTHER = [f"A river flows from mountain {i} to the sea, carrying sand and stones." for i in range(8)]


def _score_cfg(inputs, output, model, **kw) -> ScoreConfig:
    return ScoreConfig(inputs=[str(i) for i in inputs], output=str(output), model=model, executor="local",
                       dtype="float32", device="cpu", max_tokens=32, rows_per_unit=4, **kw)


def _select(scores, output, **kw):
    from selection import SelectConfig, select

    return select(SelectConfig(scores=[str(s) for s in scores], output=str(output), **kw), progress=False)


# ---- part stamps --------------------------------------------------------------------------------------------


def test_a_part_of_another_shard_of_the_same_job_under_a_wrong_name_is_refused(tmp_path, tiny_model_dir):
    """Each part's stamp records its shard and its rows (start, stop), but `select` (selection/scores.py
    _check_stamp) compares only the job and the shard's size: a part of a.jsonl in the place of a part of
    b.jsonl (same row count; a partial copy, a mv of the wrong file) passes, and the selection holds a.jsonl's rows
    twice and none of b.jsonl's, exit 0."""
    _jsonl(tmp_path / "in" / "a.jsonl", TEXTS)
    _jsonl(tmp_path / "in" / "b.jsonl", OTHER)
    scores = tmp_path / "scores"
    score(_score_cfg([tmp_path / "in"], scores, tiny_model_dir), progress=False)
    parts = sorted(scores.glob("part-*.parquet"))
    by_shard = {}
    for p in parts:
        by_shard.setdefault(pq.read_table(p)["shard"][0].as_py(), []).append(p)
    a0, b0 = by_shard["a.jsonl"][0], by_shard["b.jsonl"][0]
    b0.write_bytes(a0.read_bytes())
    try:
        result = _select([scores], tmp_path / "sel", drop_top=0.0, keep=1.0, report=False)
    except HardfocusError as exc:
        assert b0.name in str(exc)
        return
    ids = [i for p in sorted((tmp_path / "sel").glob("part-*.parquet")) for i in pq.read_table(p)["sample_id"].to_pylist()]
    assert len(ids) == len(set(ids)), f"the selection holds rows twice ({result.summary.bands})"


def test_a_part_without_a_stamp_in_a_directory_of_stamped_parts_is_refused(tmp_path, tiny_model_dir):
    """A part whose metadata was dropped (rewritten by a tool that does not keep Parquet key-value metadata: polars,
    DuckDB, Spark) is taken for a part of an older version and accepted unchecked (`_check_stamp` returns when the
    stamp is None), so the first review's case, a part copied in from another scores/ directory, passes again as soon
    as the copy went through such a tool: the selection ranks losses of other settings, exit 0."""
    _jsonl(tmp_path / "in" / "a.jsonl", TEXTS)
    score(_score_cfg([tmp_path / "in"], tmp_path / "A", tiny_model_dir), progress=False)
    score(_score_cfg([tmp_path / "in"], tmp_path / "B", tiny_model_dir).model_copy(update={"max_tokens": 8}), progress=False)
    part = sorted((tmp_path / "A").glob("part-*.parquet"))[0]
    foreign = pq.read_table(tmp_path / "B" / part.name)
    pq.write_table(foreign.replace_schema_metadata(None), part)  # B's rows, no stamp
    with pytest.raises(HardfocusError, match=part.name):
        _select([tmp_path / "A"], tmp_path / "sel")


def test_train_on_a_scores_directory_refuses_a_part_copied_in_from_another_one(tmp_path, tiny_model_dir):
    """The first review's fix (a part stamped with its job) is checked by `select` only: `train scores/` (ERM on
    everything scored ok) reads the same directory through training/sources.py, which compares part and row counts
    with the manifest and nothing else, and trains on the token ids of another scoring run, exit 0."""
    from training.sources import find_sources

    _jsonl(tmp_path / "in" / "a.jsonl", TEXTS)
    score(_score_cfg([tmp_path / "in"], tmp_path / "A", tiny_model_dir), progress=False)
    score(_score_cfg([tmp_path / "in"], tmp_path / "B", tiny_model_dir).model_copy(update={"max_tokens": 8}),
          progress=False)
    part = sorted((tmp_path / "A").glob("part-*.parquet"))[0]
    part.write_bytes((tmp_path / "B" / part.name).read_bytes())
    with pytest.raises(HardfocusError, match=part.name):
        find_sources([str(tmp_path / "A")])


# ---- the raw-shard tokenisation cache -----------------------------------------------------------------------


def _raw_train_cfg(tmp_path, model, output="model", **kw):
    from training import TrainConfig

    values = dict(data=[str(tmp_path / "raw")], output=str(tmp_path / output), model=model, weighting="none",
                  max_steps=1, batch_size=4, precision="fp32", learning_rate=1e-3, save_steps=100, max_seq_len=32,
                  group_column=None)
    return TrainConfig(**(values | kw))


def test_two_trainings_on_the_same_raw_shards_share_the_cache_instead_of_refusing(tmp_path, tiny_model_dir,
                                                                                  monkeypatch):
    """Raw shards are tokenised into $HARDFOCUS_CACHE/tokenized/<identity>, under that entry's output lock, which
    *refuses* a second holder: two `train raw/ -o A`, `train raw/ -o B` started together (a learning-rate sweep)
    fail, all but one, with 'another hardfocus run is writing to .../tokenized/...; choose another --output', an
    output the user never chose. A cache entry two runs may both need is waited for (as `waiting_lock` does for a
    converted model), not refused."""
    import threading

    from hardfocus.kinds import TOKENS
    from hardfocus.stagedir import StageDir
    from training import train

    monkeypatch.setenv("HARDFOCUS_CACHE", str(tmp_path / "cache"))
    _jsonl(tmp_path / "raw" / "a.jsonl", TEXTS)
    train(_raw_train_cfg(tmp_path, tiny_model_dir, "A"), progress=False)
    (entry,) = (tmp_path / "cache" / "tokenized").iterdir()
    other = StageDir(str(entry), TOKENS)
    other.lock()  # the other training of the sweep, checking (or writing) the entry right now
    timer = threading.Timer(2.0, other.unlock)
    timer.start()
    try:
        result = train(_raw_train_cfg(tmp_path, tiny_model_dir, "B"), progress=False)
    finally:
        timer.join()
    assert result.steps == 1


def test_a_damaged_tokenisation_cache_entry_is_tokenised_again(tmp_path, tiny_model_dir, monkeypatch):
    """A cache entry whose part was cut short (a full disk, a power cut, a cache copied half) is found COMPLETE by
    its marker and handed to training, which refuses it ('rerun the stage that wrote it with --overwrite'); but no
    stage the user can run writes the cache: `train --overwrite` finds the entry complete again. Every later run
    fails the same way until the user finds and deletes the entry by hand."""
    from training import train

    monkeypatch.setenv("HARDFOCUS_CACHE", str(tmp_path / "cache"))
    _jsonl(tmp_path / "raw" / "a.jsonl", TEXTS)
    train(_raw_train_cfg(tmp_path, tiny_model_dir), progress=False)
    (part,) = (tmp_path / "cache" / "tokenized").glob("*/part-*.parquet")
    part.write_bytes(part.read_bytes()[:100])
    result = train(_raw_train_cfg(tmp_path, tiny_model_dir, overwrite=True, max_steps=2), progress=False)
    assert result.steps == 2


# ---- report ---------------------------------------------------------------------------------------------------


def test_report_refuses_a_selection_that_was_not_made_from_the_scores_it_is_given(tmp_path):
    """`hardfocus report SCORES SELECTED` re-ranks SCORES with SELECTED's parameters and draws SELECTED's kept rows
    beside them, without checking that SELECTED was made from SCORES (its summary names the scores' directories and
    fingerprints): given another scores/ directory it writes a report whose bands and kept rows belong to two different
    datasets, and it writes it over the selection's own report.html, exit 0."""
    from selection.job import build_report
    from tests.selection.fake_scores import write_scores

    write_scores(tmp_path / "A", list(np.linspace(1, 5, 40)))
    write_scores(tmp_path / "B", list(np.linspace(10, 20, 60)), shard="other.jsonl")
    _select([tmp_path / "A"], tmp_path / "sel")
    before = (tmp_path / "sel" / "report.html").read_bytes()
    try:
        build_report([str(tmp_path / "B")], str(tmp_path / "sel"))
    except HardfocusError as exc:
        assert "sel" in str(exc)
    assert (tmp_path / "sel" / "report.html").read_bytes() == before, \
        "the selection's report was replaced by one of other scores"


# ---- symlinks, and a user's job.json --------------------------------------------------------------------------


def test_an_output_that_is_a_symlink_loop_is_a_one_line_error(tmp_path):
    """The first review resolved symlinks (one spelling, one lock); a link that loops (`ln -s out out`, or two links to
    each other) makes `StageDir.open` list it (`os.listdir`): a raw `OSError: [Errno 40] Too many levels of symbolic
    links` traceback, exit 1, instead of the one-line error every other unusable output gets."""
    import os

    from typer.testing import CliRunner

    from pipelines.cli import app
    from tests.selection.fake_scores import write_scores

    write_scores(tmp_path / "scores", list(np.linspace(1, 5, 40)))
    os.symlink("a", tmp_path / "b")
    os.symlink("b", tmp_path / "a")
    result = CliRunner().invoke(app, ["-q", "select", str(tmp_path / "scores"), "-o", str(tmp_path / "a")])
    assert result.exit_code == 2, (result.exit_code, repr(result.exception))
    assert "Traceback" not in result.output and str(tmp_path / "a") in result.output


def test_score_never_empties_a_users_directory_whose_job_json_has_the_legacy_keys(tmp_path, tiny_model_dir):
    """The first review's fix recognises a scores/ job file by its stage tag *or* by the keys of an untagged one of
    an earlier version, {"identity", "runs"}: a job.json of the user's with those two (common) keys, e.g. a scheduler's
    {"identity": "svc-account", "runs": [...]}, is again taken for an unfinished scores/ directory, found to hold no
    parts, and *replaced* without --overwrite: `clear()` deletes every file in it."""
    _jsonl(tmp_path / "in" / "a.jsonl", TEXTS)
    mine = tmp_path / "experiment"
    mine.mkdir()
    (mine / "job.json").write_text(json.dumps({"identity": "svc-training", "runs": [{"id": 1}]}))
    (mine / "notes.md").write_text("do not lose")
    try:
        score(_score_cfg([tmp_path / "in"], mine, tiny_model_dir), progress=False)
    except HardfocusError as exc:
        assert "experiment" in str(exc)
    assert (mine / "notes.md").exists(), "the user's files were deleted"


# ---- Ray ---------------------------------------------------------------------------------------------------------


@pytest.mark.ray
def test_ray_train_reads_the_weights_of_a_selection_under_a_directory_named_with_an_equals_sign(tmp_path, local_ray):
    """Ray Train reads the parts with `ray.data.read_parquet(urls)`, whose default partitioning is Hive's: a path
    segment `weight=2` *replaces* the weight column of every row with 2.0 (and `sample_id=...`, `group=...` likewise).
    Sweep directories are named so (the first review fixed `-m sweep/lr=0.1/model` for eval); the in-process path
    reads the real weights, Ray Train trains on others, exit 0."""
    from tests.training.helpers import write_selected
    from training.ray_train import training_dataset

    weights = [0.5, 1.0, 1.5, 1.0]
    sel = write_selected(tmp_path / "sweep" / "weight=2" / "selected", [[5, 6, 7, 8]] * 4, weights=weights)
    rows = training_dataset([sel]).take_all()
    assert sorted(float(r["weight"]) for r in rows) == sorted(weights)


# ---- eval on models (and templates) that changed -----------------------------------------------------------------


def test_eval_after_its_chat_template_file_was_edited_is_not_up_to_date(tmp_path, tiny_chat_model_dir):
    """Eval's identity records the settings as given: `chat_template` is the *path* of the template file, and the
    models' fingerprints cover config and weights, not the tokenizer (nor the template it carries). Edit the template
    (or the model's tokenizer_config.json) and rerun: 'already holds this evaluation', the perplexities of the old
    rendering, exit 0. (The scoring stage itself would notice: its identity has the template's sha256.)"""
    from pipelines.evaluation import EvalConfig, evaluate
    from tests.conftest import CHATML, conversations, write_jsonl

    write_jsonl(tmp_path / "held" / "h.jsonl", [{"messages": m} for m in conversations(6)])
    template = tmp_path / "chat.jinja"
    template.write_text(CHATML)
    cfg = EvalConfig(models=[f"base={tiny_chat_model_dir}"], data=[str(tmp_path / "held")], output=str(tmp_path / "eval"),
                     group_column=None, max_tokens=200, dtype="float32", format="messages", chat_template=str(template))
    first = evaluate(cfg, progress=False).models[0].table["loss"].to_list()
    template.write_text(CHATML.replace("You are a helpful assistant", "Reply in one short sentence, always politely"))
    again = evaluate(cfg, progress=False)
    assert not again.skipped, "eval.json of the old template was kept"
    assert again.models[0].table["loss"].to_list() != first


def test_raw_chat_shards_are_tokenised_again_after_their_chat_template_file_was_edited(tmp_path, tiny_chat_model_dir,
                                                                                     monkeypatch):
    """The tokenisation cache's key (training/raw_shards.py `as_token_dir`) holds `chat_template` as the *path* given, not
    the template: after the file is edited, `train raw/ --chat-template t.jinja` reuses the token ids rendered with the
    old template, and the training run's identity (which holds the same path) says the model is up to date."""
    from tests.conftest import CHATML, conversations, write_jsonl
    from training.raw_shards import as_token_dir

    monkeypatch.setenv("HARDFOCUS_CACHE", str(tmp_path / "cache"))
    write_jsonl(tmp_path / "raw" / "c.jsonl", [{"messages": m} for m in conversations(6)])
    template = tmp_path / "chat.jinja"
    template.write_text(CHATML)
    cfg = _raw_train_cfg(tmp_path, tiny_chat_model_dir, format="messages", chat_template=str(template), max_seq_len=64)
    first = as_token_dir(str(tmp_path / "raw"), cfg, tiny_chat_model_dir, "train")
    template.write_text(CHATML.replace("You are a helpful assistant", "Reply in one short sentence, always politely"))
    second = as_token_dir(str(tmp_path / "raw"), cfg, tiny_chat_model_dir, "train")
    ids = [pq.read_table(Path(d) / "part-00000.parquet")["input_ids"].to_pylist() for d in (first, second)]
    assert ids[0] != ids[1], "token ids rendered with the old chat template were reused"


def test_train_refuses_an_output_inside_the_raw_shards_it_reads(tmp_path, tiny_model_dir, monkeypatch):
    """`train` checks its output against its inputs *after* raw shards were swapped for their cache entry
    (`refuse_overlap(cfg.output, [cache entry, model])`): `train corpus/ -o corpus/model` is accepted, and writes
    train_log.jsonl, config.json, tokenizer.json, train_job.json ... into the corpus, every one of them a shard
    (.jsonl/.json) of the next run, which is then 'other data' and refused, or with --overwrite trains on them."""
    from training import train

    monkeypatch.setenv("HARDFOCUS_CACHE", str(tmp_path / "cache"))
    _jsonl(tmp_path / "raw" / "a.jsonl", TEXTS)
    with pytest.raises(HardfocusError, match="raw"):
        train(_raw_train_cfg(tmp_path, tiny_model_dir, output="raw/model"), progress=False)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["a.jsonl"]


def test_eval_with_its_models_in_another_order_compares_against_the_new_first_model(tmp_path, tiny_model_dir,
                                                                                    tiny_chat_model_dir):
    """The first model is the baseline ("the change against the first"); eval's identity holds the models as a dict
    {name: fingerprint}, which compares equal in any order, so `-m trained=M -m base=B` after `-m base=B -m
    trained=M` is 'already done' and returns the old order: the table compares against the old baseline."""
    from pipelines.evaluation import EvalConfig, evaluate

    _jsonl(tmp_path / "held" / "h.jsonl", TEXTS)

    def run(models):
        cfg = EvalConfig(models=models, data=[str(tmp_path / "held")], output=str(tmp_path / "eval"), group_column=None,
                         max_tokens=32, dtype="float32")
        return [m.name for m in evaluate(cfg, progress=False).models]

    assert run([f"a={tiny_model_dir}", f"b={tiny_chat_model_dir}"]) == ["a", "b"]
    assert run([f"b={tiny_chat_model_dir}", f"a={tiny_model_dir}"]) == ["b", "a"]
