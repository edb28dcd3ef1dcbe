"""Ray Train: 2 CPU workers on a local Ray, streaming selected/ from an object store, follow the single-process
loss trajectory."""

from __future__ import annotations

import json

import pytest
import torch

from tests.s3 import upload
from tests.training.helpers import max_param_diff, mixed_length_sequences, parameters, small_config, write_selected
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
