"""Problems found by an adversarial review of the stage-directory protocol and the readers (each test fails on
the code as reviewed, and passes once the problem is fixed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scoring import HardfocusError, ScoreConfig, score
from tests.scoring.helpers import read_scores


def _jsonl(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


TEXTS = [f"The committee met on day {i} to discuss the budget for the coming year." for i in range(8)]


def _score_cfg(inputs, output, model, **kw) -> ScoreConfig:
    return ScoreConfig(inputs=[str(i) for i in inputs], output=str(output), model=model, executor="local",
                       dtype="float32", device="cpu", max_tokens=32, rows_per_unit=4, **kw)


def test_a_shard_changed_after_a_kill_mid_shard_is_not_resumed_on_its_old_parts(tmp_path, tiny_model_dir):
    """A run killed after the first part of a shard (no done marker yet), then the shard edited, then a rerun:
    the rerun reuses the part scored from the shard's *old* text (its losses and input_ids) and exits 0."""
    _jsonl(tmp_path / "in" / "a.jsonl", TEXTS)
    cfg = _score_cfg([tmp_path / "in"], tmp_path / "scores", tiny_model_dir)
    score(cfg, progress=False)
    scores = tmp_path / "scores"
    # the state a SIGKILL between the shard's two parts leaves: the first part, no done marker, no manifest
    parts = sorted(scores.glob("part-*.parquet"))
    assert len(parts) == 2
    parts[1].unlink()
    for marker in (scores / "done").glob("*.json"):
        marker.unlink()
    (scores / "manifest.json").unlink()
    # the user fixes a row of the shard, then reruns the same command
    edited = ["A completely different first document about rivers and stones."] + TEXTS[1:]
    _jsonl(tmp_path / "in" / "a.jsonl", edited)
    try:
        score(cfg, progress=False)
    except HardfocusError as exc:  # refusing, naming the changed shard, is an acceptable answer
        assert "a.jsonl" in str(exc)
        return
    fresh = score(_score_cfg([tmp_path / "in"], tmp_path / "fresh", tiny_model_dir), progress=False)
    assert fresh.manifest.rows == 8
    got, want = read_scores(scores), read_scores(tmp_path / "fresh")
    assert got["input_ids"].to_list() == want["input_ids"].to_list(), "scores/ holds token ids of text that is gone"
    np.testing.assert_allclose(got["loss"].to_numpy(), want["loss"].to_numpy(), atol=1e-5)


def test_score_never_empties_a_directory_of_the_users_that_happens_to_hold_a_job_json(tmp_path, tiny_model_dir):
    """`identify` calls any directory holding a file named job.json an (unfinished) scores/ directory; `open` then
    finds its "identity" different and, since it holds no part files, *replaces* it without --overwrite:
    `clear()` deletes every file in it. job.json is a common name (CI jobs, schedulers, experiment trackers)."""
    _jsonl(tmp_path / "in" / "a.jsonl", TEXTS)
    mine = tmp_path / "experiment"
    mine.mkdir()
    (mine / "job.json").write_text(json.dumps({"name": "my sweep", "gpus": 8}))
    (mine / "results.csv").write_text("step,loss\n1,2.0\n")
    (mine / "notes.md").write_text("do not lose")
    try:
        score(_score_cfg([tmp_path / "in"], mine, tiny_model_dir), progress=False)
    except HardfocusError as exc:
        assert "experiment" in str(exc)
    assert (mine / "notes.md").exists() and (mine / "results.csv").exists(), "the user's files were deleted"
    assert json.loads((mine / "job.json").read_text()) == {"name": "my sweep", "gpus": 8}


def test_overwrite_never_empties_a_directory_no_stage_wrote_that_holds_a_manifest_json(tmp_path):
    """README: --overwrite replaces "never ... a directory no stage wrote". A directory with a manifest.json of
    its own (a web app, a dataset card) is taken for a finished scores/ directory, and `select -o it --overwrite`
    replaces it whole (the old directory is renamed aside and deleted)."""
    from selection import SelectConfig, select
    from tests.selection.fake_scores import write_scores

    write_scores(tmp_path / "scores", list(np.linspace(1, 5, 40)))
    site = tmp_path / "site"
    site.mkdir()
    (site / "summary.json").write_text(json.dumps({"title": "my site"}))
    (site / "index.html").write_text("<h1>hello</h1>")
    try:
        select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(site), overwrite=True), progress=False)
    except HardfocusError as exc:
        assert "site" in str(exc)
    assert (site / "index.html").exists(), "a directory no hardfocus stage wrote was replaced"


def test_one_output_reached_through_a_symlink_has_one_lock(tmp_path):
    """The lock is `.NAME.lock` beside the path *as spelled*: a run writing `out/` and another writing `link/`
    (a symlink to out/) take two different locks and both write the same directory."""
    from hardfocus.kinds import SELECTED
    from hardfocus.stagedir import StageDir
    from selection import SelectConfig, select
    from tests.selection.fake_scores import write_scores

    write_scores(tmp_path / "scores", list(np.linspace(1, 5, 40)))
    (tmp_path / "out").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "out")
    holder = StageDir(str(tmp_path / "out"), SELECTED)
    holder.lock()  # a run writing out/ (the select of another terminal)
    try:
        with pytest.raises(HardfocusError, match="another hardfocus run is writing to"):
            select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "link")), progress=False)
    finally:
        holder.unlock()


def test_an_output_spelled_with_a_trailing_dot_is_the_same_directory(tmp_path):
    """`-o sel/.` names sel/, but StageDir takes '.' as the output's name: its lock is `sel/...lock` (inside the
    output, another lock than `-o sel`'s), its staging directory `sel/...tmp-*`, and the final rename of `sel/.`
    fails with a raw `OSError: [Errno 16] Device or resource busy` (on the very first run too), leaving the
    staging directory inside the output."""
    from hardfocus.kinds import SELECTED
    from hardfocus.stagedir import StageDir
    from selection import SelectConfig, select
    from tests.selection.fake_scores import write_scores

    assert StageDir(f"{tmp_path}/sel/.", SELECTED).lock_path == StageDir(f"{tmp_path}/sel", SELECTED).lock_path
    write_scores(tmp_path / "scores", list(np.linspace(1, 5, 40)))
    try:
        select(SelectConfig(scores=[str(tmp_path / "scores")], output=f"{tmp_path}/sel/."), progress=False)
    except HardfocusError:
        return
    assert (tmp_path / "sel" / "summary.json").exists()


@pytest.mark.parametrize("how", ["wrong type", "newer field", "a directory"])
def test_a_scores_manifest_that_is_json_but_not_a_manifest_is_named_not_a_traceback(tmp_path, how):
    """read_json names a manifest that is not JSON; one that is JSON but not a manifest (a field of the wrong
    type, a field a newer hardfocus added: extra="forbid") escapes as a raw pydantic ValidationError, and a
    directory in its place as a raw IsADirectoryError."""
    from selection import SelectConfig, select
    from tests.selection.fake_scores import write_scores

    scores = write_scores(tmp_path / "scores", list(np.linspace(1, 5, 40)))
    manifest = json.loads((scores / "manifest.json").read_text())
    if how == "a directory":
        (scores / "manifest.json").unlink()
        (scores / "manifest.json").mkdir()
    else:
        extra = {"rows": "forty"} if how == "wrong type" else {"written_by": "hardfocus 2.0"}
        (scores / "manifest.json").write_text(json.dumps(manifest | extra))
    if how == "newer field":  # a field a newer version added is read past: an older reader knows what it needs
        assert select(SelectConfig(scores=[str(scores)], output=str(tmp_path / "sel")), progress=False).summary.rows == 40
        return
    with pytest.raises(HardfocusError, match="manifest.json"):
        select(SelectConfig(scores=[str(scores)], output=str(tmp_path / "sel")), progress=False)


def test_a_selection_summary_that_is_json_but_not_an_object_is_named_not_a_traceback(tmp_path):
    from tests.training.helpers import write_selected
    from training.sources import find_sources

    sel = write_selected(tmp_path / "sel", [[5, 6, 7, 8]] * 4)
    (tmp_path / "sel" / "summary.json").write_text("[]")
    with pytest.raises(HardfocusError, match="summary.json"):
        find_sources([sel])


def _token_part(path: Path, sequences: list[list[int]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"input_ids": pa.array(sequences, pa.list_(pa.int32()))}), path / "part-00000.parquet")


def test_a_token_directory_whose_token_ids_changed_is_not_already_trained(tmp_path, tiny_model_dir):
    """A directory of token parts without a marker ("parts") gets the identity digest([[num_rows, footer size]]):
    other token ids in the same shape leave it unchanged, so the same `train` says 'already trained' and keeps
    the model of data that is gone."""
    from tests.training.helpers import small_config
    from training import train

    rng = np.random.default_rng(0)
    _token_part(tmp_path / "tokens", rng.integers(3, 250, size=(8, 12)).tolist())
    cfg = small_config([str(tmp_path / "tokens")], tmp_path / "model", max_steps=1, weighting="none", model=tiny_model_dir)
    assert not train(cfg, progress=False).skipped
    _token_part(tmp_path / "tokens", rng.integers(3, 250, size=(8, 12)).tolist())  # other data, same shape
    try:
        again = train(cfg, progress=False)
    except HardfocusError as exc:
        assert "differs in: data" in str(exc)
        return
    assert not again.skipped, "a model of the old token ids was kept as the model of the new ones"


def test_a_part_copied_in_from_another_scores_directory_is_refused_by_select(tmp_path, tiny_model_dir):
    """Two scores/ of the same corpus (here: other max_tokens) have parts of the same names and row counts. A part
    of one copied over the other's (an rsync of the wrong directory) passes every check `select` makes (part count,
    footer row counts, manifest rows), so the selection ranks losses of other settings than its manifest says. The
    shard markers record each part's size, and a rerun of `score` does notice; `select` does not look."""
    from selection import SelectConfig, select

    _jsonl(tmp_path / "in" / "a.jsonl", TEXTS)
    score(_score_cfg([tmp_path / "in"], tmp_path / "A", tiny_model_dir), progress=False)
    cfg_b = _score_cfg([tmp_path / "in"], tmp_path / "B", tiny_model_dir).model_copy(update={"max_tokens": 8})
    score(cfg_b, progress=False)
    part = sorted((tmp_path / "A").glob("part-*.parquet"))[0]
    assert (tmp_path / "B" / part.name).exists()
    part.write_bytes((tmp_path / "B" / part.name).read_bytes())
    with pytest.raises(HardfocusError, match=part.name):
        select(SelectConfig(scores=[str(tmp_path / "A")], output=str(tmp_path / "sel")), progress=False)


def test_train_overwrite_never_deletes_the_model_it_trains_from(tmp_path, tiny_model_dir):
    """A second round of continual training from a model hardfocus trained, written over it:
    `train sel2 --model out/model -o out/model --overwrite`. The model is an input of the run, but `train` checks
    only the data against the output, finds a model/ of another identity, and `clear()`s it (the weights it was
    about to load) before loading it."""
    from tests.training.helpers import small_config
    from training import train

    rng = np.random.default_rng(0)
    _token_part(tmp_path / "round1", rng.integers(3, 250, size=(8, 12)).tolist())
    _token_part(tmp_path / "round2", rng.integers(3, 250, size=(8, 12)).tolist())
    model = tmp_path / "model"
    train(small_config([str(tmp_path / "round1")], model, max_steps=1, weighting="none", model=tiny_model_dir), progress=False)
    weights = (model / "model.safetensors").read_bytes()
    cfg = small_config([str(tmp_path / "round2")], model, max_steps=1, weighting="none", overwrite=True, model=str(model))
    with pytest.raises(HardfocusError, match="model"):
        train(cfg, progress=False)
    assert (model / "model.safetensors").exists() and (model / "model.safetensors").read_bytes() == weights


def test_train_refuses_a_data_directory_given_twice(tmp_path):
    """`select S S` is refused ("every row would count twice"); `train sel sel/` trains every row twice."""
    from tests.training.helpers import write_selected
    from training.sources import find_sources

    sel = write_selected(tmp_path / "sel", [[5, 6, 7, 8]] * 4)
    with pytest.raises(HardfocusError, match="twice"):
        find_sources([sel, sel + "/"])


@pytest.mark.parametrize("key", ["learning_rate", "weight_decay"])
def test_an_infinite_learning_rate_or_weight_decay_never_publishes_a_nan_model(tmp_path, tiny_model_dir, key):
    """TrainConfig refuses NaN (gt=0 is false for NaN) but takes inf. One step of it turns every weight into
    NaN/inf; the finiteness check looks at the loss and the gradient *before* the step, so a run whose last step
    is the bad one writes the NaN model and its manifest, and exits 0."""
    import torch

    from tests.training.helpers import parameters, small_config
    from training import train

    _token_part(tmp_path / "tokens", np.random.default_rng(0).integers(3, 250, size=(8, 12)).tolist())
    try:
        cfg = small_config([str(tmp_path / "tokens")], tmp_path / "model", max_steps=1, weighting="none",
                           **{key: float("inf")}, model=tiny_model_dir)
        train(cfg, progress=False)
    except (HardfocusError, ValueError) as exc:  # refused by the config (pydantic's ValidationError), or by the run
        assert key in str(exc)
        return
    broken = [name for name, value in parameters(str(tmp_path / "model")).items() if not torch.isfinite(value).all()]
    assert not broken, f"a finished run published non-finite weights ({broken[:2]})"


def test_adding_a_model_to_an_evaluation_does_not_rescore_the_models_already_scored(tmp_path, tiny_model_dir,
                                                                                  tiny_chat_model_dir):
    """pipelines/evaluation/job.py says "any change rescores what changed (each scores-<name>/ resumes or is replaced by
    its own identity)", but `open(identity, overwrite=True)` answers REPLACE to any change and `clear()` deletes
    every scores-<name>/ first: adding a model (or retraining one) rescores the baseline's held-out set too."""
    from pipelines.evaluation import EvalConfig, evaluate

    _jsonl(tmp_path / "held" / "h.jsonl", TEXTS)
    cfg = EvalConfig(models=[f"base={tiny_model_dir}"], data=[str(tmp_path / "held")], output=str(tmp_path / "eval"),
                     group_column=None, max_tokens=32, dtype="float32")
    evaluate(cfg, progress=False)
    base = tmp_path / "eval" / "scores-base"

    def stamps():
        return {p.name: p.stat().st_mtime_ns for p in sorted(base.iterdir()) if p.is_file()}

    before = stamps()
    assert "manifest.json" in before
    evaluate(cfg.model_copy(update={"models": [f"base={tiny_model_dir}", f"chat={tiny_chat_model_dir}"]}),
             progress=False)
    assert stamps() == before, "the baseline's held-out scores were deleted and scored again"


def test_train_removes_its_checkpoints_only_while_it_holds_the_output_lock(tmp_path, tiny_model_dir, monkeypatch):
    """After a run, `remove_checkpoints(local)` runs after `with out.locked()` has released the lock: a second run
    that took the lock meanwhile (a resume, a --overwrite) has its checkpoints deleted under it."""
    from hardfocus.kinds import MODEL
    from hardfocus.stagedir import StageDir
    from tests.training.helpers import small_config
    from training import job, train

    _token_part(tmp_path / "tokens", np.random.default_rng(0).integers(3, 250, size=(8, 12)).tolist())
    out = tmp_path / "model"
    held = []
    real = job.remove_checkpoints

    def remove_checkpoints(path):
        other = StageDir(str(out), MODEL)
        try:
            other.lock()  # what another run does now
        except HardfocusError:
            held.append(True)  # refused: this run still holds the lock
        else:
            other.unlock()
            held.append(False)
        real(path)

    monkeypatch.setattr(job, "remove_checkpoints", remove_checkpoints)
    train(small_config([str(tmp_path / "tokens")], out, max_steps=1, weighting="none", model=tiny_model_dir), progress=False)
    assert held and all(held), "checkpoints were removed by a run that no longer held the output's lock"


def test_eval_under_a_directory_with_brackets_reads_its_own_scores_not_a_lookalike(tmp_path, tiny_model_dir,
                                                                                   tiny_chat_model_dir):
    """pipelines/evaluation/tables.py group_perplexity hands the part URLs to `pl.scan_parquet`, which takes every path as a
    glob: the parts of `run[1]/eval/scores-base/` are read from `run1/eval/scores-base/` when that exists (another
    experiment over the same held-out shards has parts of the same names). eval.json then reports the other
    model's perplexity. (Also: scoring/manifest.py count_duplicate_ids, selection/scores.py _check_unique_ids,
    pipelines/labels.py, selection/job.py build_report.)"""
    from pipelines.evaluation import EvalConfig, evaluate

    _jsonl(tmp_path / "held" / "h.jsonl", TEXTS)

    def run(model, output):
        cfg = EvalConfig(models=[f"base={model}"], data=[str(tmp_path / "held")], output=str(output),
                         group_column=None, max_tokens=32, dtype="float32")
        return evaluate(cfg, progress=False).models[0].table["loss"].to_list()

    other = run(tiny_chat_model_dir, tmp_path / "run1" / "eval")  # another experiment, another model
    want = run(tiny_model_dir, tmp_path / "clean" / "eval")
    assert other != want
    got = run(tiny_model_dir, tmp_path / "run[1]" / "eval")
    assert got == want, "eval.json of run[1]/ holds the perplexity computed from run1/'s scores"


@pytest.mark.parametrize("bad", [5000, -1])
def test_token_ids_outside_the_models_vocabulary_are_refused_naming_the_directory(tmp_path, tiny_model_dir, bad):
    """Token ids with no tokenizer recorded (a token directory of parts) are not checked against the model: an id
    >= the vocabulary size (or negative) crashes the first forward pass with a raw `IndexError: index out of range
    in self` (on a GPU: a device-side assert that takes the process down). The footers' statistics give the
    maximum and minimum id for free."""
    from tests.training.helpers import small_config
    from training import train

    sequences = np.random.default_rng(0).integers(3, 250, size=(8, 12)).tolist()
    sequences[3][5] = bad
    _token_part(tmp_path / "tokens", sequences)
    with pytest.raises(HardfocusError, match="tokens"):
        train(small_config([str(tmp_path / "tokens")], tmp_path / "model", max_steps=2, weighting="none", model=tiny_model_dir), progress=False)


def test_asking_for_the_report_again_is_not_another_selection(tmp_path):
    """`report` writes report.html and changes nothing else (summary.json leaves it out), yet it is part of the
    selection's identity: `select S -o sel --no-report` after `select S -o sel` is refused ("differs in:
    parameters.report") and with --overwrite reselects; `hardfocus run` reselects when it is toggled."""
    from selection import SelectConfig, select
    from tests.selection.fake_scores import write_scores

    write_scores(tmp_path / "scores", list(np.linspace(1, 5, 40)))
    cfg = SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"))
    select(cfg, progress=False)
    assert select(cfg.model_copy(update={"report": False}), progress=False).skipped


def test_a_shard_removed_from_the_corpus_is_removed_from_the_manifest_too(tmp_path, tiny_model_dir):
    """`score in/ -o S`, then a shard deleted from in/, then `score in/ -o S --overwrite` (what `hardfocus run`
    passes): planning removes the shard's parts and marker, finds nothing left to score and, since the old
    manifest.json is there, returns 'complete, nothing to score' with the *old* manifest (which still lists the
    deleted shard and its rows). `select` then refuses S ("holds 2 part files but its manifest lists 4") and every
    later `score` run says complete again: a state that never recovers."""
    from selection import SelectConfig, select

    _jsonl(tmp_path / "in" / "a.jsonl", TEXTS)
    _jsonl(tmp_path / "in" / "b.jsonl", TEXTS[::-1])
    cfg = _score_cfg([tmp_path / "in"], tmp_path / "scores", tiny_model_dir)
    assert score(cfg, progress=False).manifest.rows == 16
    (tmp_path / "in" / "b.jsonl").unlink()
    again = score(cfg.model_copy(update={"overwrite": True}), progress=False)
    assert again.manifest.rows == 8 and [s.rel for s in again.manifest.shards] == ["a.jsonl"]
    manifest = json.loads((tmp_path / "scores" / "manifest.json").read_text())
    assert manifest["rows"] == 8
    assert select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel")), progress=False)


def test_a_train_manifest_that_is_json_but_not_a_manifest_is_named_not_a_traceback(tmp_path, tiny_model_dir):
    """The 'already trained' path reads train_manifest.json with `manifest["steps"]`: a manifest damaged into other
    JSON (`{}`) ends the rerun with a raw KeyError."""
    from tests.training.helpers import small_config
    from training import train

    _token_part(tmp_path / "tokens", np.random.default_rng(0).integers(3, 250, size=(8, 12)).tolist())
    cfg = small_config([str(tmp_path / "tokens")], tmp_path / "model", max_steps=1, weighting="none", model=tiny_model_dir)
    train(cfg, progress=False)
    (tmp_path / "model" / "train_manifest.json").write_text("{}")
    with pytest.raises(HardfocusError, match="train_manifest.json"):
        train(cfg, progress=False)


def test_an_eval_model_path_with_an_equals_sign_is_a_path(tmp_path, monkeypatch):
    """`--model sweep/lr=0.1/model` (sweep directories are named so) is split into the name 'sweep/lr' and the spec
    '0.1/model', which is then looked up on the Hugging Face hub; the scores go to 'scores-sweep/lr'."""
    from pipelines.evaluation.config import EvalConfig

    (tmp_path / "sweep" / "lr=0.1" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    cfg = EvalConfig(models=["sweep/lr=0.1/model"], data=["held"], output="eval")
    assert cfg.named_models() == [("model", "sweep/lr=0.1/model")]


def test_a_workdir_under_home_written_with_a_tilde_is_not_a_directory_named_tilde(tmp_path, monkeypatch):
    """`workdir = "~/work"` in a run config (TOML has no shell to expand it) becomes ./~/work under the current
    directory; the classic clean-up of that, `rm -rf ~`, deletes the user's home."""
    from pipelines.run_config import load_run_config

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "run.toml"
    config.write_text('[run]\nworkdir = "~/work"\ndata = ["corpus"]\nmodel = "m"\n')
    try:
        cfg = load_run_config(config)
    except HardfocusError as exc:  # refusing it, naming the key, is as good
        assert "workdir" in str(exc)
        return
    assert not cfg.score_config().output.startswith("~"), cfg.score_config().output


def test_taking_the_lock_never_truncates_the_file_a_planted_lock_symlink_points_to(tmp_path):
    """`_acquire_local` opens `.NAME.lock` with O_RDWR | O_CREAT (following a symlink), then `ftruncate`s it and
    writes its record: a `.out.lock` symlink left in a shared output parent truncates whatever file it names."""
    from hardfocus.kinds import SCORES
    from hardfocus.stagedir import StageDir

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / ".out.lock").symlink_to(victim)
    out = StageDir(str(tmp_path / "shared" / "out"), SCORES)
    try:
        out.lock()
        out.unlock()
    except HardfocusError:
        pass  # refusing a lock that is a symlink is fine
    assert victim.read_text() == "precious\n"
