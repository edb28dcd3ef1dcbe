"""Ray Train: 2 CPU workers on a local Ray, streaming selected/ from an object store, follow the single-process
loss trajectory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.s3 import upload
from tests.training.helpers import max_param_diff, mixed_length_sequences, parameters, small_config, train_with, write_selected
from training import train

pytestmark = [pytest.mark.ray, pytest.mark.s3]


def losses(log_file: str) -> list[float]:
    return [r["loss"] for r in map(json.loads, open(log_file)) if "loss" in r]


def test_two_workers_reading_s3_match_one_process(local_ray, s3_url, tiny_model_dir, tmp_path):
    """Full-batch steps (16 rows: 8 per worker, or 16 in one process) with non-uniform static weights.

    Per-worker (1/8) sum w*l, averaged by DDP, equals (1/16) sum w*l over all rows, whatever rows
    each worker gets: the gradients, and so the trajectories, must agree up to float rounding. The workers
    stream selected/ from the store (they find its endpoint in the environment the session's Ray started
    with); the single process reads a local copy. 3 steps: each is an epoch; the rows are read once and
    iterated from Ray's object store every epoch.
    """
    seqs = mixed_length_sequences(16, vocab=290, seed=5)
    weights = torch.rand(16, generator=torch.Generator().manual_seed(2)).add(0.5).tolist()
    data = write_selected(tmp_path / "sel", seqs, weights=weights)
    on_s3 = upload(data, f"{s3_url}/selected")
    common = dict(weighting="static", max_steps=3, optim="sgd", learning_rate=0.5, save_steps=3)
    single = train(small_config([data], tmp_path / "single", batch_size=16, **common, model=tiny_model_dir), progress=False)
    ray_cfg = small_config([on_s3], tmp_path / "ray", batch_size=8, ray_workers=2, **common, model=tiny_model_dir)
    distributed = train(ray_cfg, progress=False)
    assert distributed.steps == 3 and distributed.train_rows == single.train_rows == 16
    single_losses, ray_losses = losses(single.log_file), losses(distributed.log_file)
    assert len(ray_losses) == 3 and single_losses[0] > single_losses[-1] + 0.05  # it trains
    assert ray_losses == pytest.approx(single_losses, rel=1e-4)
    assert max_param_diff(parameters(single.output), parameters(distributed.output)) < 1e-5


def test_a_run_of_several_epochs_reads_its_rows_once(local_ray, tmp_path):
    """More steps than one epoch holds: the rows are read and checked once, then every epoch iterates the same
    rows from Ray's object store: with the parts deleted after that read, two more epochs still yield every row."""
    from training.ray_train import _read_once, training_dataset

    seqs = mixed_length_sequences(12, vocab=290, seed=6)
    data = write_selected(tmp_path / "sel", seqs)
    cfg = small_config([data], tmp_path / "out", batch_size=4, max_steps=5, ray_workers=1)  # 20 samples > 12 rows
    ds = _read_once(training_dataset([data]), cfg, rows=12)
    (tmp_path / "sel" / "part-00000.parquet").unlink()
    for _ in range(2):
        rows = sorted(tuple(int(t) for t in r["input_ids"]) for r in ds.iter_rows())
        assert rows == sorted(map(tuple, seqs))


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


@pytest.mark.ray
def test_a_resumed_ray_run_of_grouped_batches_lands_on_the_uninterrupted_weights(local_ray, tiny_model_dir, tmp_path):
    """Two workers, 12 rows each in batches of 4 from windows of 4 (3 batches an epoch), 4 steps: the second epoch
    starts at step 4. A run that stopped after checkpoint-2 (its manifest, model and last checkpoint removed, as a
    kill leaves it) resumes by counting its shard's batches and lands on the uninterrupted run's weights.

    The uninterrupted run also shows how checkpoints reach Ray's storage: rank 0 copies each one after it is marked
    complete, once; the other ranks copy nothing (they used to copy the directory while rank 0 still wrote it)."""
    import shutil

    from training.output import TRAIN_MANIFEST_FILE

    marker = "hardfocus_complete.json"  # training.checkpoints.COMPLETE_MARKER, spelled out: the contract on disk

    data = write_selected(tmp_path / "sel", mixed_length_sequences(24, vocab=290, seed=13),
                          weights=np.linspace(0.5, 1.5, 24).tolist())
    cfg = small_config([data], tmp_path / "ray", batch_size=4, ray_workers=2, max_steps=4, save_steps=2,
                       keep_checkpoints=True, optim="sgd", learning_rate=0.5, shuffle_buffer=4, batching="grouped")
    full = train_with(cfg, tiny_model_dir)
    uninterrupted = parameters(full.output)
    copies = sorted((tmp_path / "ray" / "ray_results").rglob(marker))
    assert sorted(json.loads(p.read_text())["step"] for p in copies) == [2, 4], [str(p) for p in copies]
    for copy in copies:  # each copy is whole: its weights load
        assert all(torch.isfinite(v).all() for v in parameters(str(copy.parent)).values())
    out = tmp_path / "ray"
    for name in (TRAIN_MANIFEST_FILE, "model.safetensors"):
        (out / name).unlink()
    shutil.rmtree(out / "checkpoints" / "checkpoint-4")
    resumed = train_with(cfg, tiny_model_dir)
    assert resumed.steps == 4 and resumed.resumed_from.endswith("checkpoint-2")
    assert max_param_diff(parameters(resumed.output), uninterrupted) < 1e-5
