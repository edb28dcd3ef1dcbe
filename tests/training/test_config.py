"""TrainConfig: values a run cannot take (a seed the data order cannot take, an infinite learning rate, held-out
data under Ray Train) refused up front or never published, and what ``precision = "auto"`` means on GPU workers."""

from __future__ import annotations

import numpy as np
import pytest

from hardfocus.errors import HardfocusError
from tests.training.helpers import mixed_length_sequences, small_config, write_selected, write_token_part


@pytest.mark.parametrize("key", ["learning_rate", "weight_decay"])
def test_an_infinite_learning_rate_or_weight_decay_never_publishes_a_nan_model(tmp_path, tiny_model_dir, key):
    """TrainConfig refuses NaN (gt=0 is false for NaN) but takes inf. One step of it turns every weight into
    NaN/inf; the finiteness check looks at the loss and the gradient *before* the step, so a run whose last step
    is the bad one writes the NaN model and its manifest, and exits 0."""
    import torch

    from tests.training.helpers import parameters, small_config
    from training import train

    write_token_part(tmp_path / "tokens", np.random.default_rng(0).integers(3, 250, size=(8, 12)).tolist())
    try:
        cfg = small_config([str(tmp_path / "tokens")], tmp_path / "model", max_steps=1, weighting="none",
                           **{key: float("inf")}, model=tiny_model_dir)
        train(cfg, progress=False)
    except (HardfocusError, ValueError) as exc:  # refused by the config (pydantic's ValidationError), or by the run
        assert key in str(exc)
        return
    broken = [name for name, value in parameters(str(tmp_path / "model")).items() if not torch.isfinite(value).all()]
    assert not broken, f"a finished run published non-finite weights ({broken[:2]})"


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_the_data_order_cannot_take_is_refused_by_the_config(tmp_path, seed):
    """``seed`` is any integer in ``TrainConfig``, but the data order (``np.random.default_rng([seed, epoch])`` in
    the stream) and ``transformers.set_seed`` (``np.random.seed``) take only 0 to 2**32 - 1: ``--seed -1`` is
    accepted and the run dies with ``ValueError`` from numpy (a traceback), after the data was checked and the
    model loaded. Expected: the config refuses it (a one-line error naming ``seed``), or the run maps it.
    Fixed by the first: ``TrainConfig`` takes a seed from 0 to 2**32 - 1 only, and refuses another naming ``seed``."""
    from pydantic import ValidationError

    data = write_selected(tmp_path / "sel", mixed_length_sequences(8, vocab=290, seed=1))
    with pytest.raises(ValidationError,
                       match=r"\nseed\n  Input should be (greater than or equal to 0|less than 4294967296) "):
        small_config([data], tmp_path / "out", seed=seed, max_steps=1)


def test_held_out_data_under_ray_train_is_refused_not_ignored(tmp_path):
    """Found by the review: a Ray Train worker builds its Trainer without evaluation, so ``eval_data`` given with
    ``ray_workers`` was never evaluated and ``final_eval_loss`` stayed empty, silently. It is refused in the config."""
    from pydantic import ValidationError

    data = write_selected(tmp_path / "sel", mixed_length_sequences(8, vocab=290, seed=1))
    with pytest.raises(ValidationError, match="eval_data is evaluated in-process only"):
        small_config([data], tmp_path / "out", ray_workers=2, eval_data=[data])
    assert small_config([data], tmp_path / "out", eval_data=[data]).eval_data == [data]  # in-process: evaluated


def test_training_on_gpu_workers_planned_by_a_driver_without_one_is_bf16(tmp_path):
    """training/job.py (uses_bf16): with ``precision = "auto"``, ``use_gpu`` and Ray Train workers, a driver without a
    GPU (a cluster's CPU head node, `hardfocus submit`'s job driver) decides fp32 for the GPU workers: ``use_gpu or
    cuda visible`` leads to ``torch.cuda.is_available() and ...``, False in that driver. Scoring decides the same case
    as bf16 ("GPU actors may be planned by a driver without a GPU: auto there means cuda and bf16",
    scoring/job.py _device_and_dtype), so the two stages disagree and training on the cluster's GPUs runs in fp32.
    Expected: auto means bf16 for GPU workers planned on a driver without a GPU, as scoring decides."""
    import torch

    from scoring import ScoreConfig
    from scoring.job import _device_and_dtype
    from training import TrainConfig
    from training.job import uses_bf16

    if torch.cuda.is_available():
        pytest.skip("the case is a driver without a GPU")
    scoring = _device_and_dtype(ScoreConfig(inputs=["d"], output=str(tmp_path / "s"), executor="ray", gpus_per_actor=1))
    assert scoring["dtype"] == "bfloat16"  # scoring's word for the same case
    cfg = TrainConfig(data=["sel"], output=str(tmp_path / "m"), ray_workers=2, use_gpu=True, precision="auto")
    assert uses_bf16(cfg), "GPU workers planned by a CPU-only driver train in fp32"
