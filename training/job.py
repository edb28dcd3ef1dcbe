"""``hardfocus train`` as a library call: continual training on weighted shards, in this process or under Ray Train.

The output is a stage directory (:mod:`training.output`, :mod:`hardfocus.stagedir`): its identity is the
settings, the model's fingerprint and the identity of the data (each source's marker), so a rerun of the same
run on the same data finds it finished, an unfinished one resumes from its newest complete checkpoint, and any
change is refused unless ``overwrite`` (then replaced). An output on an object store trains in a local staging
directory and is published there (:mod:`training.store`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from hardfocus.errors import HardfocusError
from hardfocus.fingerprints import fingerprint_checkpoint, tokenizer_fingerprint
from hardfocus.kinds import MODEL
from hardfocus.models import cpu_has_bf16, resolve_model
from hardfocus.stagedir import Opening, StageDir, refuse_overlap
from hardfocus.storage import redact
from hardfocus.versions import library_versions
from training.build import batching, build_trainer, training_arguments
from training.checkpoints import checkpoint_step, finish_from_checkpoint, resumable_checkpoint
from training.config import TrainConfig
from training.data import TokenDataset, load_training_data
from training.output import (
    CHECKPOINTS,
    TRAIN_LOG,
    TrainManifest,
    TrainResult,
    finished,
    last_logged,
    remove_checkpoints,
    training_identity,
)
from training.sources import TrainingSources, find_sources
from training.store import publish, staging_dir
from training.stream import PartWindows
from training.trainer import check_finite_parameters

log = logging.getLogger(__name__)


def train(cfg: TrainConfig, progress: bool = True) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``: the model resolved (an alias or a GGUF file converted once, a hub id, a
    checkpoint directory), raw shards tokenised once into the cache, the precision chosen (``auto``: bf16 where the
    GPU or CPU computes it natively), then trained in this process or under Ray Train (``ray_workers``)."""
    from training.raw_shards import as_token_dir  # the readers and the tokeniser: only for raw shards

    refuse_overlap(cfg.output, [*cfg.data, *cfg.eval_data])  # raw shards too, before they become cache entries
    model_path = resolve_model(cfg.model).path
    # each directory identified and checked once, here; read once, by the path that trains
    data = find_sources(cfg.data, raw=lambda path: as_token_dir(path, cfg, model_path, "train"))
    eval_data = (find_sources(cfg.eval_data, raw=lambda path: as_token_dir(path, cfg, model_path, "eval"))
                 if cfg.eval_data else None)
    return _train(cfg, model_path, uses_bf16(cfg), progress, data, eval_data)


def uses_bf16(cfg: TrainConfig) -> bool:
    """``precision``, with auto as bf16 autocast where the GPU (when one is used or visible) or CPU has native bf16."""
    if cfg.precision != "auto":
        return cfg.precision == "bf16"
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    if cfg.use_gpu:  # GPU workers planned by a driver without one (a cluster's head): bf16, as scoring decides there
        return True
    return cpu_has_bf16()


def _train(cfg: TrainConfig, model_path: str, bf16: bool, progress: bool, data: TrainingSources,
           eval_data: TrainingSources | None) -> TrainResult:
    """Train the local checkpoint ``model_path`` on the checked sources (selected/, scores/, token parts)."""
    # auto resolved here, once: the run's identity records the batching it trains with (a resume elsewhere, where
    # auto would mean another, is another run)
    cfg = cfg.model_copy(update={"batching": batching(cfg, bf16)})
    if cfg.uses_static and not data.has_weights:
        raise HardfocusError(
            f"weighting '{cfg.weighting}' needs static weights, but {list(data.kinds.values())} data has none "
            "(scores/ carry no weights): give selected/ directories, or use --weighting none/online"
        )
    check_tokenizer(model_path, data, eval_data)
    check_token_ids(model_path, data, eval_data)
    identity = training_identity(cfg, fingerprint_checkpoint(model_path), data.identity,
                                 eval_data.identity if eval_data else [])
    out = StageDir(cfg.output, MODEL)
    inputs = [*data.paths, *(eval_data.paths if eval_data else []), model_path]  # a model is an input too
    refuse_overlap(cfg.output, inputs)
    with out.locked():
        named = {"data": data.paths, "eval_data": eval_data.paths if eval_data else [], "model": [cfg.model]}
        if out.open(identity, cfg.overwrite, inputs=inputs, named=named) is Opening.COMPLETE:
            log.info("'%s' already holds this finished run: nothing to do", redact(cfg.output))
            if out.is_local and not cfg.keep_checkpoints:  # a run that stopped between its manifest and the clean-up
                remove_checkpoints(Path(out.path))
            return finished(cfg.output, out.read_record(MODEL.marker, TrainManifest))
        local = Path(out.path) if out.is_local else staging_dir(cfg.output, identity)
        started = time.time()
        steps, history, resumed = _fit(cfg.model_copy(update={"output": str(local)}), model_path, bf16, progress,
                                       data, eval_data)
        result = TrainResult(output=cfg.output, steps=steps, train_rows=len(data), final_loss=last_logged(history, "loss"),
                             resumed_from=resumed, log_file=f"{cfg.output.rstrip('/')}/{TRAIN_LOG}")
        _write_manifest(out, local, identity, data, result, time.time() - started, history)
        if not cfg.keep_checkpoints:
            remove_checkpoints(local)  # while the lock is held: a run after this one may resume from checkpoints/
    return result


def check_tokenizer(model_path: str, *sources: TrainingSources | None) -> None:
    """Token ids mean something only to the tokenizer that made them: refuse data another tokenizer scored."""
    recorded = {s.path: s.tokenizer for group in sources if group for s in group.sources if s.tokenizer}
    if not recorded:
        return
    from transformers import AutoTokenizer

    ours = tokenizer_fingerprint(AutoTokenizer.from_pretrained(model_path))
    for path, theirs in recorded.items():
        if theirs != ours:
            raise HardfocusError(
                f"'{redact(path)}' holds token ids of another tokenizer ({theirs}) than the model's '{redact(model_path)}' "
                f"({ours}): train with the model that scored it, or score the data with this model"
            )


def check_token_ids(model_path: str, *sources: TrainingSources | None) -> None:
    """Every token id must index the model's embedding (its footers' statistics give each source's range)."""
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(model_path).vocab_size
    for group in sources:
        for source in group.sources if group else ():
            if source.token_range is None:
                continue
            low, high = source.token_range
            if low < 0 or high >= vocab:
                raise HardfocusError(
                    f"'{redact(source.path)}' holds token ids from {low} to {high}, outside the vocabulary of "
                    f"'{redact(model_path)}' (0 to {vocab - 1}): they were made for another model; train with that "
                    "model, or tokenise the data with this one"
                )


def _fit(cfg: TrainConfig, model_path: str, bf16: bool, progress: bool, data: TrainingSources,
         eval_data: TrainingSources | None) -> tuple[int, list[dict], str | None]:
    """Train into ``cfg.output`` (local), from its newest complete checkpoint; (steps, log history, resumed from)."""
    out = Path(cfg.output)
    resume = resumable_checkpoint(out / CHECKPOINTS, discard_incomplete=True) if cfg.resume == "auto" else None
    if resume:
        log.info("resuming from %s", resume)
    if resume and checkpoint_step(resume) >= cfg.max_steps:  # killed after its last checkpoint: nothing to train
        steps, history = finish_from_checkpoint(resume, out)
    elif cfg.ray_workers:
        from training.ray_train import fit_on_ray

        steps, history = fit_on_ray(cfg, data, model_path, bf16, progress, resume)
    else:
        args = training_arguments(cfg, bf16=bf16, progress=progress, with_eval=eval_data is not None)
        trainer = build_trainer(
            cfg, model_path, args, PartWindows(data, cfg.seed),
            TokenDataset(load_training_data(eval_data).table) if eval_data else None,
            resume=resume,
        )
        started = time.perf_counter()
        trainer.train(resume_from_checkpoint=resume)
        _log_throughput(trainer.train_dataset.collate, time.perf_counter() - started)
        check_finite_parameters(trainer.model, trainer.state.global_step)
        trainer.save_model(str(out))  # model + tokenizer (the processing_class), save_pretrained format
        steps, history = trainer.state.global_step, trainer.state.log_history
    return steps, history, resume


def _log_throughput(collator, seconds: float) -> None:
    """What the steps of this process trained on: real tokens, and their share of the positions computed."""
    if collator.positions:
        log.info("trained on %s tokens (%.1f%% of the positions computed; the rest padding) at %.0f tokens/s",
                 f"{collator.tokens:,}", 100 * collator.tokens / collator.positions, collator.tokens / max(seconds, 1e-9))


def _write_manifest(out: StageDir, local: Path, identity: dict, data: TrainingSources, result: TrainResult,
                    wall: float, history: list[dict]) -> None:
    """The marker of a finished run: written last, locally after the model's files are on disk; on a store after
    the run is uploaded."""
    manifest = {
        **identity,
        "data": data.kinds,
        "train_rows": result.train_rows,
        "skipped_not_ok_rows": data.not_ok,
        "steps": result.steps,
        "final_loss": result.final_loss,
        "final_eval_loss": last_logged(history, "eval_loss"),
        "resumed_from": result.resumed_from,
        "wall_seconds": round(wall, 2),
        "versions": library_versions(),
    }
    if out.is_local:
        out.mark(manifest, sync_tree=True)
    else:
        publish(local, out, manifest)
