"""Training faults: weights that are not numbers, a loss or gradient that stops being one, a checkpoint cut short by a
kill while it was written, a run killed after its last checkpoint, a checkpoint copied to Ray while being written."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

import training.build
import training.job
from scoring import HardfocusError
from tests.training.helpers import (
    equal_length_sequences,
    max_param_diff,
    mixed_length_sequences,
    parameters,
    run_killed_at_step,
    small_config,
    write_selected,
)
from training import train
from training.data import load_training_data
from training.output import TRAIN_MANIFEST_FILE
from training.trainer import WeightedTrainer

MARKER = "hardfocus_complete.json"  # training.checkpoints.COMPLETE_MARKER, spelled out: the contract on disk


def run(cfg, model_dir):
    return train(cfg.model_copy(update={"model": model_dir}), progress=False)


# --- weights that are not numbers ---------------------------------------------------------------------------------


def _weights_with(bad: float) -> list[float]:
    return [1.0, bad, 1.0, 1.0, bad, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -0.5], ids=["nan", "inf", "-inf", "negative"])
def test_weights_that_are_not_finite_or_are_negative_are_refused_before_training(tiny_model_dir, tmp_path, bad):
    data = write_selected(tmp_path / "sel", equal_length_sequences(8, 10, vocab=290), weights=_weights_with(bad))
    with pytest.raises(HardfocusError, match=rf"2 rows of '{tmp_path / 'sel'}' have a weight that is (not finite|negative)"):
        load_training_data([data])
    out = tmp_path / "out"
    with pytest.raises(HardfocusError, match="2 rows of .* have a weight that is"):
        run(small_config([data], out, max_steps=2), tiny_model_dir)
    assert not (out / "model.safetensors").exists() and not (out / TRAIN_MANIFEST_FILE).exists()
    assert not (out / "checkpoints").exists()  # not one step was trained


@pytest.mark.ray
def test_the_ray_reader_refuses_the_weights_the_in_process_reader_refuses(local_ray, tmp_path):
    """Ray Train's blocks go through the same training_rows (map_batches): the same error, from a Ray task."""
    from training.ray_train import training_dataset, user_error

    data = write_selected(tmp_path / "sel", equal_length_sequences(8, 10, vocab=290), weights=_weights_with(math.nan))
    with pytest.raises(HardfocusError) as in_process:
        load_training_data([data])
    with pytest.raises(Exception) as on_ray:  # noqa: PT011 - Ray wraps errors raised in its tasks
        training_dataset([data]).take_all()
    error = user_error(on_ray.value)
    assert error is not None, repr(on_ray.value)
    assert str(error) == str(in_process.value)


# --- a loss or a gradient that is not finite ----------------------------------------------------------------------


class _Poison(TrainerCallback):
    """After optimizer step ``after``, make the next step non-finite: a NaN parameter (the forward, hence the loss, is
    NaN), or an infinite gradient of a finite loss (a backward hook)."""

    def __init__(self, after: int, kind: str):
        self.after, self.kind = after, kind

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step != self.after:
            return
        param = model.get_input_embeddings().weight
        if self.kind == "loss":
            with torch.no_grad():
                param.view(-1)[:] = math.nan
        else:
            param.register_hook(lambda grad: torch.full_like(grad, math.inf))


def _with_callback(monkeypatch, callback) -> None:
    original = training.build.build_trainer

    def build(*args, extra_callbacks=None, **kwargs):
        return original(*args, extra_callbacks=[*(extra_callbacks or []), callback], **kwargs)

    monkeypatch.setattr(training.job, "build_trainer", build)


@pytest.mark.parametrize("kind, what", [("loss", "loss"), ("gradient", "gradient norm")])
def test_a_run_whose_loss_or_gradient_stops_being_finite_fails_naming_the_step(tiny_model_dir, tmp_path, monkeypatch, kind, what):
    data = write_selected(tmp_path / "sel", equal_length_sequences(16, 12, vocab=290))
    out = tmp_path / "out"
    _with_callback(monkeypatch, _Poison(after=1, kind=kind))
    with pytest.raises(HardfocusError, match=rf"training step 2 of 4: the {what} is not finite") as failed:
        run(small_config([data], out, max_steps=4, save_steps=1, keep_checkpoints=True), tiny_model_dir)
    assert "\n" not in str(failed.value)
    assert not (out / "model.safetensors").exists() and not (out / TRAIN_MANIFEST_FILE).exists()
    # stopped before the optimizer applied step 2: the last checkpoint is step 1's, and its parameters are numbers
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-1"]
    assert all(torch.isfinite(v).all() for v in parameters(str(out / "checkpoints" / "checkpoint-1")).values())


def test_the_trainer_logs_a_non_finite_loss_as_it_is(tiny_model_dir, tmp_path):
    """The Trainer's logging_nan_inf_filter would log a NaN step as the mean of the others: it is off."""
    data = write_selected(tmp_path / "sel", equal_length_sequences(8, 10, vocab=290))
    trainer = training.build.build_trainer(
        small_config([data], tmp_path / "out"), tiny_model_dir,
        training.build.training_arguments(small_config([data], tmp_path / "out"), bf16=False, progress=False, with_eval=False),
        None,
    )
    assert trainer.args.logging_nan_inf_filter is False


# --- checkpoints cut short, a run killed after its last one -------------------------------------------------------


def _cut_short(checkpoint: Path) -> None:
    """What a kill during the checkpoint's save leaves: weights cut short, no trainer_state.json, no marker."""
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (checkpoint / "trainer_state.json").unlink()
    (checkpoint / MARKER).unlink(missing_ok=True)


def _train_steps(log_file: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, open(log_file)) if "loss" in r]


def test_a_checkpoint_cut_short_resumes_from_the_newest_complete_one(tiny_model_dir, tmp_path, monkeypatch):
    seqs = mixed_length_sequences(40, vocab=290, seed=11)
    weights = torch.rand(40, generator=torch.Generator().manual_seed(3)).add(0.5).tolist()
    data = write_selected(tmp_path / "sel", seqs, weights=weights)
    common = dict(weighting="static+online", temperature=0.5, max_steps=7, save_steps=2, save_total_limit=3)
    uninterrupted = parameters(run(small_config([data], tmp_path / "full", **common), tiny_model_dir).output)
    out = tmp_path / "out"
    cfg = small_config([data], out, keep_checkpoints=True, **common)
    run_killed_at_step(7, cfg, tiny_model_dir, monkeypatch)  # after checkpoints 2, 4 and 6
    checkpoints = out / "checkpoints"
    _cut_short(checkpoints / "checkpoint-6")
    (checkpoints / "checkpoint-4" / MARKER).unlink(missing_ok=True)  # as written before markers existed: still whole
    resumed = run(cfg, tiny_model_dir)
    assert resumed.resumed_from.endswith("checkpoint-4") and resumed.steps == 7
    assert max_param_diff(parameters(resumed.output), uninterrupted) < 1e-6
    assert _train_steps(out / "train_log.jsonl") == [1, 2, 3, 4, 5, 6, 7]
    for step in (6,):  # the checkpoint written again after the resume is whole and marked complete
        state = json.loads((checkpoints / f"checkpoint-{step}" / "trainer_state.json").read_text())
        assert state["global_step"] == step
        assert json.loads((checkpoints / f"checkpoint-{step}" / MARKER).read_text())["step"] == step


def test_only_cut_short_checkpoints_start_the_run_afresh(tiny_model_dir, tmp_path, monkeypatch):
    data = write_selected(tmp_path / "sel", equal_length_sequences(16, 12, vocab=290))
    reference = parameters(run(small_config([data], tmp_path / "full", max_steps=3, save_steps=2), tiny_model_dir).output)
    cfg = small_config([data], tmp_path / "out", max_steps=3, save_steps=2)
    run_killed_at_step(3, cfg, tiny_model_dir, monkeypatch)
    _cut_short(tmp_path / "out" / "checkpoints" / "checkpoint-2")
    restarted = run(cfg, tiny_model_dir)
    assert restarted.resumed_from is None and restarted.steps == 3
    assert max_param_diff(parameters(restarted.output), reference) < 1e-6


def test_a_run_killed_after_its_last_checkpoint_finishes_without_another_step(tiny_model_dir, tmp_path, monkeypatch):
    data = write_selected(tmp_path / "sel", mixed_length_sequences(24, vocab=290, seed=12))
    common = dict(weighting="static+online", temperature=0.5, max_steps=4, save_steps=2)
    uninterrupted = parameters(run(small_config([data], tmp_path / "full", **common), tiny_model_dir).output)
    out = tmp_path / "out"
    cfg = small_config([data], out, **common)

    def killed(*args, **kwargs):
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:  # the model is written, then the run dies before its manifest
        patch.setattr(training.job, "_write_manifest", killed)
        with pytest.raises(RuntimeError, match="killed"):
            run(cfg, tiny_model_dir)
    assert (out / "checkpoints" / "checkpoint-4").is_dir() and not (out / TRAIN_MANIFEST_FILE).exists()
    (out / "model.safetensors").unlink()  # or the kill came before the model was written: it is written again

    steps, original = [], WeightedTrainer.training_step
    monkeypatch.setattr(WeightedTrainer, "training_step", lambda self, *a, **k: steps.append(1) or original(self, *a, **k))
    finished = run(cfg, tiny_model_dir)
    assert steps == []  # not one more step
    assert finished.steps == 4 and finished.resumed_from.endswith("checkpoint-4")
    assert finished.final_loss == pytest.approx(json.loads((tmp_path / "full" / TRAIN_MANIFEST_FILE).read_text())["final_loss"])
    assert max_param_diff(parameters(finished.output), uninterrupted) == 0.0
    manifest = json.loads((out / TRAIN_MANIFEST_FILE).read_text())
    assert manifest["steps"] == 4
    assert _train_steps(out / "train_log.jsonl") == [1, 2, 3, 4]
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).pad_token == "<pad>"  # model and tokenizer, as save_model writes them
    assert not (out / "checkpoints").exists()  # finished: nothing left to resume


# --- Ray Train: a checkpoint is reported whole, by rank 0 --------------------------------------------------------


# (how Ray Train's checkpoints reach its storage, once each and whole: with the resumed Ray run in
# tests/training/test_ray_train.py, whose uninterrupted run writes them)


# --- a published model whose keys lead outside the download directory ----------------------------------------------


@pytest.mark.s3
def test_fetch_model_refuses_a_key_that_leads_outside_its_directory(s3_url, tmp_path, monkeypatch):
    import boto3

    from hardfocus.cache import cache_dir
    from tests.s3 import BUCKET, s3_fs
    from training.store import fetch_model

    monkeypatch.setenv("HARDFOCUS_CACHE", str(tmp_path / "cache" / "hardfocus"))
    url = f"{s3_url}/model"
    fs = s3_fs()
    fs.pipe_file(f"{url}/config.json", b"{}")
    fs.pipe_file(f"{url}/{TRAIN_MANIFEST_FILE}", b'{"steps": 1}')
    prefix = url.removeprefix(f"s3://{BUCKET}/")
    escaping = f"{prefix}/../../../../escaped.txt"  # resolved under the cache's models/<hash>: four levels up
    boto3.client("s3").put_object(Bucket=BUCKET, Key=escaping, Body=b"outside")  # botocore keeps the key as it is
    assert escaping in [k.removeprefix(f"{BUCKET}/") for k in s3_fs().find(url)]
    try:
        fetch_model(url)
    except HardfocusError as exc:
        error = str(exc)
    else:
        error = None
    assert not list(tmp_path.rglob("escaped.txt"))  # nothing written outside the cache's models/ ...
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and (cache_dir() / "models") not in p.parents]
    assert not [p for p in (cache_dir() / "models").rglob("*") if p.is_file() and p.suffix != ".lock"]  # nor a partial model
    assert error is not None and re.search(r"'.*/\.\./\.\./\.\./\.\./escaped\.txt' .*outside", error), error
    assert "\n" not in error
