"""``hardfocus train``: continual training on weighted shards, in this process or under Ray Train.

Output layout (``cfg.output``): the trained Hugging Face checkpoint itself (``config.json``,
``model.safetensors``, tokenizer files: loadable by ``from_pretrained`` and lm-evaluation-harness),
``checkpoints/checkpoint-N`` (resumable Trainer checkpoints), ``train_log.jsonl`` (one record per
log/eval event), ``train_job.json`` (what the run was started with) and ``train_manifest.json``
(written once the model is: the run finished).

Checkpoints hold the model and the optimizer state (about 12 bytes per parameter each, three times
the final fp32 model); they exist so that an unfinished run can resume. Once the manifest is
written nothing is left to resume, so they are removed unless ``keep_checkpoints`` is set.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint

from scoring.foundation.errors import HardfocusError
from training.build import CHECKPOINTS, TRAIN_LOG, build_trainer, training_arguments
from training.config import TrainConfig
from training.data import TokenDataset, load_training_data
from training.sources import TrainingSources, find_sources

log = logging.getLogger(__name__)

TRAIN_JOB_FILE = "train_job.json"
TOKENIZED_DIR = "tokenized"  # where `hardfocus train` puts the tokens of raw shards it was given
TRAIN_MANIFEST_FILE = "train_manifest.json"
RAY_RESULTS = "ray_results"  # Ray Train's storage under the output: its copies of the checkpoints


@dataclass
class TrainResult:
    output: str
    steps: int
    train_rows: int
    final_loss: float | None
    resumed_from: str | None
    log_file: str
    skipped: bool = False  # the output already held this finished run


def train(cfg: TrainConfig, model_path: str, bf16: bool, progress: bool = True) -> TrainResult:
    """Train ``model_path`` on ``cfg.data``; ``model_path`` is a local/hub HF checkpoint (aliases resolved upstream)."""
    if "://" in cfg.output:  # an object store: train in a local staging directory, then publish it there
        from training.store import train_to_store

        return train_to_store(cfg, model_path, train, bf16=bf16, progress=progress)
    out = Path(cfg.output)
    identity = job_identity(cfg, model_path)
    done = _previous_run(out, identity, cfg.overwrite)
    if done is not None:
        if not cfg.keep_checkpoints:  # a run that stopped between its manifest and the clean-up
            remove_checkpoints(out)
        return done
    data = find_sources(cfg.data)  # checked once, here; read once, by the path that trains
    if cfg.uses_static and not data.has_weights:
        raise HardfocusError(
            f"weighting '{cfg.weighting}' needs static weights, but {list(data.kinds.values())} data has none "
            "(scores/ carry no weights): give selected/ directories, or use --weighting none/online"
        )
    eval_data = find_sources(cfg.eval_data) if cfg.eval_data else None
    out.mkdir(parents=True, exist_ok=True)
    (out / TRAIN_JOB_FILE).write_text(json.dumps(identity, indent=2))
    resume = get_last_checkpoint(str(out / CHECKPOINTS)) if cfg.resume == "auto" and (out / CHECKPOINTS).is_dir() else None
    if resume:
        log.info("resuming from %s", resume)
    start = time.time()
    if cfg.ray_workers:
        from training.ray_train import fit_on_ray

        steps, log_history = fit_on_ray(cfg, data, model_path, bf16, progress, resume)
    else:
        args = training_arguments(cfg, bf16=bf16, progress=progress, with_eval=eval_data is not None)
        trainer = build_trainer(
            cfg, model_path, args, TokenDataset(load_training_data(data).table),
            TokenDataset(load_training_data(eval_data).table) if eval_data else None,
        )
        trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(str(out))  # model + tokenizer (the processing_class), save_pretrained format
        steps, log_history = trainer.state.global_step, trainer.state.log_history
    result = TrainResult(
        output=str(out),
        steps=steps,
        train_rows=len(data),
        final_loss=_last(log_history, "loss"),
        resumed_from=resume,
        log_file=str(out / TRAIN_LOG),
    )
    _write_manifest(out, identity, data, result, time.time() - start, log_history)
    if not cfg.keep_checkpoints:
        remove_checkpoints(out)
    return result


def job_identity(cfg: TrainConfig, model_path: str) -> dict:
    """What makes two runs the same run: everything but where and how it executes."""
    keys = cfg.model_dump(exclude={
        "output", "resume", "overwrite", "ray_address", "logging_steps", "save_steps", "save_total_limit", "keep_checkpoints",
    })
    return {"config": keys, "model_path": model_path}


def remove_checkpoints(out: Path) -> None:
    """Delete the resumable checkpoints of a finished run (the final model is in ``out`` itself)."""
    for name in (CHECKPOINTS, RAY_RESULTS):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
            log.info("removed %s (the run is finished; keep_checkpoints keeps them)", out / name)


def _previous_run(out: Path, identity: dict, overwrite: bool) -> TrainResult | None:
    job = out / TRAIN_JOB_FILE
    if not job.exists():
        if out.exists() and any(p.name != TOKENIZED_DIR for p in out.iterdir()):
            raise HardfocusError(f"'{out}' exists and is not a hardfocus training output; choose another --output")
        return None
    if overwrite:
        for entry in out.iterdir():
            if entry.name != TOKENIZED_DIR:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        return None
    previous = json.loads(job.read_text())
    if previous != identity:
        changed = sorted(
            k for k in set(previous["config"]) | set(identity["config"])
            if previous["config"].get(k) != identity["config"].get(k)
        ) + (["model"] if previous["model_path"] != identity["model_path"] else [])
        raise HardfocusError(
            f"'{out}' holds a training run with different settings ({', '.join(changed)}); "
            "pass --overwrite to replace it, or choose another --output"
        )
    manifest = out / TRAIN_MANIFEST_FILE
    if manifest.exists():
        m = json.loads(manifest.read_text())
        log.info("'%s' already holds this finished run: nothing to do", out)
        return TrainResult(
            output=str(out), steps=m["steps"], train_rows=m["train_rows"], final_loss=m["final_loss"],
            resumed_from=None, log_file=str(out / TRAIN_LOG), skipped=True,
        )
    return None  # same run, unfinished: resume


def _last(history: list[dict], key: str) -> float | None:
    values = [h[key] for h in history if key in h]
    return values[-1] if values else None


def _write_manifest(out: Path, identity: dict, data: TrainingSources, result: TrainResult, wall: float, history) -> None:
    import ray
    import torch
    import transformers

    manifest = {
        **identity,
        "data": data.kinds,
        "train_rows": result.train_rows,
        "skipped_not_ok_rows": data.not_ok,
        "steps": result.steps,
        "final_loss": result.final_loss,
        "final_eval_loss": _last(history, "eval_loss"),
        "resumed_from": result.resumed_from,
        "wall_seconds": round(wall, 2),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "ray": ray.__version__},
    }
    tmp = out / f".{TRAIN_MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(out / TRAIN_MANIFEST_FILE)


def train_summary_line(result: TrainResult) -> str:
    if result.skipped:
        return f"{result.output}: already trained ({result.steps} steps); nothing to do"
    loss = f", last logged loss {result.final_loss:.4f}" if result.final_loss is not None else ""
    resumed = f", resumed from {Path(result.resumed_from).name}" if result.resumed_from else ""
    return f"trained {result.steps} steps on {result.train_rows:,} rows{loss}{resumed} -> {result.output}"
