"""Token-id training shards for training tests, written in the selected/ layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM

from hardfocus.fingerprints import digest
from hardfocus.parts import stamped
from training import TrainConfig


def write_selected(path: Path, sequences: list[list[int]], weights=None, groups=None, with_summary: bool = True) -> str:
    """A minimal selected/ directory: its job file (an identity), one training part stamped as a selection's, and
    summary.json (the completion marker) unless told not to."""
    path.mkdir(parents=True, exist_ok=True)
    identity = {"made_by": "write_selected", "name": path.name}
    (path / "selection_job.json").write_text(json.dumps({"stage": "selected", "identity": identity}))
    n = len(sequences)
    table = pa.table(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "group": groups or ["g"] * n,
            "loss": pa.array(np.zeros(n), pa.float32()),
            "loss_rank": pa.array(np.zeros(n), pa.float32()),
            "weight": pa.array(np.ones(n) if weights is None else weights, pa.float32()),
            "input_ids": pa.array(sequences, pa.list_(pa.int32())),
        }
    )
    pq.write_table(stamped(table, "selected", digest(identity), {"index": 0}), path / "part-00000.parquet")
    if with_summary:
        # what a selection's marker records that training reads: the bands and parts (checked against the directory)
        summary = {"parameters": {}, "bands": {"kept": n}, "output_parts": 1, "rows": n, "scores": []}
        (path / "summary.json").write_text(json.dumps(summary))
    return str(path)


def equal_length_sequences(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(3, vocab, size=(n, length)).tolist()


def mixed_length_sequences(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=int(rng.integers(4, 40))).tolist() for _ in range(n)]


def small_config(data: list[str], output: Path, **overrides) -> TrainConfig:
    values = dict(
        data=data, output=str(output), model="unused", max_steps=4, batch_size=4, learning_rate=1e-3,
        warmup_ratio=0.0, lr_scheduler="constant", logging_steps=1, save_steps=100, precision="fp32", seed=0,
    )
    return TrainConfig(**(values | overrides))


def parameters(model_dir: str) -> dict[str, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_param_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def run_killed_at_step(step: int, cfg: TrainConfig, model_dir: str, monkeypatch) -> None:
    """Train ``cfg`` and let it die in its ``step``-th training step (after ``step - 1`` were taken), as a killed job."""
    import pytest

    from training import WeightedTrainer, train

    original, calls = WeightedTrainer.training_step, []

    def dies(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            raise RuntimeError("killed")
        return original(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(WeightedTrainer, "training_step", dies)
        with pytest.raises(RuntimeError, match="killed"):
            train(cfg.model_copy(update={"model": model_dir}), progress=False)


def write_token_part(path: Path, sequences: list[list[int]]) -> None:
    """A token directory of one part holding only ``input_ids`` (no marker, no weights)."""
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"input_ids": pa.array(sequences, pa.list_(pa.int32()))}), path / "part-00000.parquet")


def write_parts_dir(root: Path, parts: list[pa.Table]) -> str:
    """A token directory written by hand (no marker): ``part-*.parquet`` with ``input_ids`` and what else they hold."""
    root.mkdir(parents=True, exist_ok=True)
    for i, table in enumerate(parts):
        pq.write_table(table, root / f"part-{i:05d}.parquet")
    return str(root)


def train_with(cfg: TrainConfig, model_dir: str):
    """``train(cfg)`` in this process with ``model_dir`` as its model."""
    from training import train

    return train(cfg.model_copy(update={"model": model_dir}), progress=False)
