"""A rerun of ``train`` on its output: 'already trained' only for the same data, a resume only of the same run
(batching and buffer included), a damaged manifest named; the model it trains from and another run's checkpoints
are never deleted."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hardfocus.errors import HardfocusError
from tests.training.helpers import (
    mixed_length_sequences,
    run_killed_at_step,
    small_config,
    train_with,
    write_selected,
    write_token_part,
)
from training import WeightedTrainer


def test_a_token_directory_whose_token_ids_changed_is_not_already_trained(tmp_path, tiny_model_dir):
    """A directory of token parts without a marker ("parts") gets the identity digest([[num_rows, footer size]]):
    other token ids in the same shape leave it unchanged, so the same `train` says 'already trained' and keeps
    the model of data that is gone."""
    from tests.training.helpers import small_config
    from training import train

    rng = np.random.default_rng(0)
    write_token_part(tmp_path / "tokens", rng.integers(3, 250, size=(8, 12)).tolist())
    cfg = small_config([str(tmp_path / "tokens")], tmp_path / "model", max_steps=1, weighting="none", model=tiny_model_dir)
    assert not train(cfg, progress=False).skipped
    write_token_part(tmp_path / "tokens", rng.integers(3, 250, size=(8, 12)).tolist())  # other data, same shape
    try:
        again = train(cfg, progress=False)
    except HardfocusError as exc:
        assert f"made from other inputs (its input '{tmp_path / 'tokens'}' is new or changed since)" in str(exc)
        return
    assert not again.skipped, "a model of the old token ids was kept as the model of the new ones"


def test_a_train_manifest_that_is_json_but_not_a_manifest_is_named_not_a_traceback(tmp_path, tiny_model_dir):
    """The 'already trained' path reads train_manifest.json with `manifest["steps"]`: a manifest damaged into other
    JSON (`{}`) ends the rerun with a raw KeyError."""
    from tests.training.helpers import small_config
    from training import train

    write_token_part(tmp_path / "tokens", np.random.default_rng(0).integers(3, 250, size=(8, 12)).tolist())
    cfg = small_config([str(tmp_path / "tokens")], tmp_path / "model", max_steps=1, weighting="none", model=tiny_model_dir)
    train(cfg, progress=False)
    (tmp_path / "model" / "train_manifest.json").write_text("{}")
    with pytest.raises(HardfocusError, match="train_manifest.json"):
        train(cfg, progress=False)


def test_train_overwrite_never_deletes_the_model_it_trains_from(tmp_path, tiny_model_dir):
    """A second round of continual training from a model hardfocus trained, written over it:
    `train sel2 --model out/model -o out/model --overwrite`. The model is an input of the run, but `train` checks
    only the data against the output, finds a model/ of another identity, and `clear()`s it (the weights it was
    about to load) before loading it."""
    from tests.training.helpers import small_config
    from training import train

    rng = np.random.default_rng(0)
    write_token_part(tmp_path / "round1", rng.integers(3, 250, size=(8, 12)).tolist())
    write_token_part(tmp_path / "round2", rng.integers(3, 250, size=(8, 12)).tolist())
    model = tmp_path / "model"
    train(small_config([str(tmp_path / "round1")], model, max_steps=1, weighting="none", model=tiny_model_dir), progress=False)
    weights = (model / "model.safetensors").read_bytes()
    cfg = small_config([str(tmp_path / "round2")], model, max_steps=1, weighting="none", overwrite=True, model=str(model))
    with pytest.raises(HardfocusError, match="model"):
        train(cfg, progress=False)
    assert (model / "model.safetensors").exists() and (model / "model.safetensors").read_bytes() == weights


def test_train_removes_its_checkpoints_only_while_it_holds_the_output_lock(tmp_path, tiny_model_dir, monkeypatch):
    """After a run, `remove_checkpoints(local)` runs after `with out.locked()` has released the lock: a second run
    that took the lock meanwhile (a resume, a --overwrite) has its checkpoints deleted under it."""
    from hardfocus.kinds import MODEL
    from hardfocus.stagedir import StageDir
    from tests.training.helpers import small_config
    from training import job, train

    write_token_part(tmp_path / "tokens", np.random.default_rng(0).integers(3, 250, size=(8, 12)).tolist())
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


def test_a_run_started_with_auto_batching_does_not_resume_with_another_batching(tiny_model_dir, tmp_path, monkeypatch):
    """``batching = "auto"`` means ``packed`` where flash attention is available and ``grouped`` elsewhere
    (``training.build.batching``), but the run's identity (``train_job.json``) records ``"auto"``, not what it
    resolved to. A run started on a GPU machine with ``flash_attn`` (packed: the ``random`` order of each window),
    killed, and resumed where ``flash_attn`` is missing (another node, the package uninstalled, or Ray workers of
    another kind) is taken for the same run: it resumes mid-epoch with ``grouped`` batches, another permutation of
    the window, so some rows of that epoch are trained twice and others not at all, and the weights are not those
    of an uninterrupted run; nothing says so. Expected: the identity records the resolved batching (the resume is
    refused as another run, or resumes with the batching it started with)."""
    import training.build

    data = write_selected(tmp_path / "sel", mixed_length_sequences(24, vocab=290, seed=4))
    cfg = small_config([data], tmp_path / "out", max_steps=5, save_steps=2, shuffle_buffer=8, batching="auto",
                       precision="bf16")  # bf16 autocast, as on a GPU where auto packs
    kinds: list[str] = []
    original = WeightedTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        kinds.append("packed" if "sample_index" in inputs else "padded")
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(WeightedTrainer, "compute_loss", recording)
    with monkeypatch.context() as gpu:  # a machine where flash attention is available (SDPA stands in for it here)
        gpu.setattr(training.build, "flash_attention_available", lambda: True)
        gpu.setattr(training.build, "attention_implementation", lambda: "sdpa")
        run_killed_at_step(4, cfg, tiny_model_dir, gpu)  # checkpoint-2 written, killed in step 4
    assert kinds and set(kinds) == {"packed"}
    kinds.clear()
    try:
        train_with(cfg, tiny_model_dir)  # the same output, where auto means grouped
    except HardfocusError:
        return  # refused as another run: what should happen (or a resume with packed batches)
    assert set(kinds) == {"packed"}, f"resumed a packed run with {sorted(set(kinds))} batches"


def test_a_killed_run_rerun_with_another_batching_or_buffer_is_another_run(tiny_model_dir, tmp_path, monkeypatch):
    """Batching and the buffer decide which rows meet in a step: a rerun that changes either is refused (unless
    --overwrite), never resumed from the other run's checkpoint."""
    data = write_selected(tmp_path / "sel", mixed_length_sequences(12, vocab=290, seed=8))
    cfg = small_config([data], tmp_path / "out", max_steps=4, save_steps=2, batching="grouped", shuffle_buffer=8)
    run_killed_at_step(3, cfg, tiny_model_dir, monkeypatch)
    for change in ({"batching": "packed"}, {"shuffle_buffer": 16}):
        with pytest.raises(HardfocusError):
            train_with(cfg.model_copy(update=change), tiny_model_dir)
    job = json.loads((tmp_path / "out" / "train_job.json").read_text())
    assert job["identity"]["config"]["batching"] == "grouped" and job["identity"]["config"]["shuffle_buffer"] == 8
