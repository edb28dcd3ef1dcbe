"""The model/ directory a training run writes: a stage directory (:mod:`hardfocus.stagedir`, kind
``model``) and what a run's identity and result are.

Layout: ``train_job.json`` (the identity, first), ``checkpoints/checkpoint-N`` (resumable Trainer checkpoints,
each marked complete once written: :mod:`training.checkpoints`), ``ray_results/`` (Ray Train's copies), the
trained Hugging Face checkpoint itself (``config.json``, ``model.safetensors``, tokenizer files: loadable by
``from_pretrained`` and lm-evaluation-harness), ``train_log.jsonl``, and ``train_manifest.json``, written last.

Checkpoints hold the model and the optimizer state (about 12 bytes per parameter each, three times the final fp32
model); they exist so that an unfinished run can resume. Once the manifest is written nothing is left to resume,
so they are removed unless ``keep_checkpoints`` is set.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from hardfocus.kinds import MODEL
from training.config import TrainConfig

log = logging.getLogger(__name__)

TRAIN_JOB_FILE = MODEL.job
TRAIN_MANIFEST_FILE = MODEL.marker
CHECKPOINTS = "checkpoints"
RAY_RESULTS = "ray_results"  # Ray Train's storage under the output: its copies of the checkpoints
TRAIN_LOG = "train_log.jsonl"
RESUME_STATE = (CHECKPOINTS, RAY_RESULTS)  # what an unfinished run resumes from; never published, removed at the end

# what does not change what a run computes: where and how it runs, how often it logs and saves
_EXECUTION_KEYS = {"data", "eval_data", "output", "resume", "overwrite", "ray_address", "logging_steps", "save_steps",
                   "save_total_limit", "keep_checkpoints"}


@dataclass
class TrainResult:
    output: str
    steps: int
    train_rows: int
    final_loss: float | None
    resumed_from: str | None
    log_file: str
    skipped: bool = False  # the output already held this finished run


def training_identity(cfg: TrainConfig, model_fingerprint: str, data: list[str], eval_data: list[str]) -> dict:
    """What makes two runs the same run: the settings that change what is computed, the model's weights, and the
    identity of the training and held-out data (their markers' digests). A selection redone with other parameters
    is other data: the run is not 'already trained', and an unfinished one is not resumed on it."""
    return {"config": cfg.model_dump(exclude=_EXECUTION_KEYS), "model": model_fingerprint, "data": data,
            "eval_data": eval_data}


class TrainManifest(BaseModel):
    """What a reader needs of ``train_manifest.json`` (it holds more: the identity, the data, versions)."""

    model_config = ConfigDict(extra="ignore")

    steps: int
    train_rows: int
    final_loss: float | None


def finished(output: str, manifest: TrainManifest) -> TrainResult:
    """The result of a run whose manifest says it finished."""
    return TrainResult(output=output, steps=manifest.steps, train_rows=manifest.train_rows,
                       final_loss=manifest.final_loss, resumed_from=None, log_file=f"{output.rstrip('/')}/{TRAIN_LOG}",
                       skipped=True)


def remove_checkpoints(out: Path) -> None:
    """Delete the resumable state of a finished run (the final model is in ``out`` itself)."""
    for name in RESUME_STATE:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
            log.info("removed %s (the run is finished; keep_checkpoints keeps them)", out / name)


def last_logged(history: list[dict], key: str) -> float | None:
    values = [h[key] for h in history if key in h]
    return values[-1] if values else None


def train_summary_line(result: TrainResult) -> str:
    if result.skipped:
        return f"{result.output}: already trained ({result.steps} steps); nothing to do"
    loss = f", last logged loss {result.final_loss:.4f}" if result.final_loss is not None else ""
    resumed = f", resumed from {Path(result.resumed_from).name}" if result.resumed_from else ""
    return f"trained {result.steps} steps on {result.train_rows:,} rows{loss}{resumed} -> {result.output}"
