"""The same training under Ray Train: ``TorchTrainer`` workers, each running a ``WeightedTrainer``.

The sources are those :func:`training.sources.find_sources` checked in the driver; Ray Data reads
their parts (``read_parquet``, each once) and splits them across the workers, which take
token-id batches with ``iter_torch_batches`` and the same collator as a single-process run. The
Trainer runs under DDP (gloo on CPU, NCCL on GPU) as Ray Train sets it up; ``prepare_trainer``
makes it use the Ray Data iterator, and rank 0 reports each checkpoint to Ray once it is complete.

The output directory must be on storage every worker sees (a local path on one machine, a shared
filesystem on a cluster): rank 0 writes the final checkpoint and the log there, as in-process
training does. An ``s3://`` output is a local staging directory here (:mod:`training.store`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from tempfile import TemporaryDirectory

import pyarrow as pa
from transformers import TrainerCallback

from hardfocus.console import native_stderr_to_file, quiet_ray_data_console
from hardfocus.errors import HardfocusError
from hardfocus.parts import Expected
from training.checkpoints import COMPLETE_MARKER
from training.config import TrainConfig
from training.data import read_part_columns
from training.output import RAY_RESULTS
from training.sources import TrainingSources, find_sources, trained_columns, training_rows

log = logging.getLogger(__name__)


def training_dataset(sources: TrainingSources | list[str]):
    """One Ray dataset of ``input_ids``, ``weight`` and ``loss_spans`` over the sources (found and checked
    first when given as paths): the rows the in-process path trains on, through the same checks.

    The driver reads nothing more: each part is read once, by one Ray Data task, through the verified reader
    (:mod:`hardfocus.parts`: its stamp and the digests of its columns) and :func:`training.sources.training_rows`, so
    a part that changed or a bad row fails the run as it would in-process.
    """
    import ray

    if not isinstance(sources, TrainingSources):
        sources = find_sources(sources)
    items = [{"part": json.dumps({"url": url, "columns": list(trained_columns(columns)), "kind": source.kind,
                                  "where": source.path, "expected": None if expected is None else asdict(expected)})}
             for source in sources.sources
             for url, columns, expected in zip(source.parts, source.columns, source.expected, strict=True)]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(_part_rows, batch_size=1, batch_format="pyarrow")
    ds.context.raise_original_map_exception = True  # a bad row fails with its HardfocusError, not "UDF failed"
    ds.context.execution_options.preserve_order = True  # the same order every epoch and run: a resume skips exactly
    return ds


def _part_rows(batch: pa.Table) -> pa.Table:
    """The trainable rows of the part a one-row batch names, read whole, checked."""
    (spec,) = [json.loads(text) for text in batch.column("part").to_pylist()]
    expected = None if spec["expected"] is None else Expected(**spec["expected"])
    table = read_part_columns(spec["url"], tuple(spec["columns"]), expected)
    return training_rows(table, spec["kind"], spec["where"])


def fit_on_ray(cfg: TrainConfig, sources: TrainingSources, model_path: str, bf16: bool, progress: bool, resume: str | None):
    """Run ``cfg.ray_workers`` workers; returns (steps, rank 0's log history)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():  # else a Ray job's driver, or the caller, has started it
        import training
        from hardfocus.ray_local import init_ray

        # a cluster gets the packages its workers import (and the foundation); a local Ray listens on 127.0.0.1
        init_ray(cfg.ray_address, packages=[os.path.dirname(training.__file__)])
    quiet_ray_data_console()
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": cfg.model_dump(), "model_path": model_path, "bf16": bf16, "progress": progress, "resume": resume},
        scaling_config=ScalingConfig(
            num_workers=cfg.ray_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        run_config=RunConfig(name="hardfocus-train", storage_path=str(Path(cfg.output).absolute() / RAY_RESULTS)),
        datasets={"train": _read_once(training_dataset(sources), cfg, sources.rows)},
    )
    try:
        with native_stderr_to_file():  # Ray's C++ warnings go to a file (kept if the run fails), not across our lines
            result = trainer.fit()
    except Exception as exc:
        error = user_error(exc)
        if error is None:
            raise
        raise error from exc
    if result.error:
        raise user_error(result.error) or result.error
    state = _read_state(Path(cfg.output))
    return state["global_step"], state["log_history"]


def user_error(exc: BaseException) -> HardfocusError | None:
    """The :class:`HardfocusError` a Ray task or worker raised (a bad row), from under Ray's wrappers."""
    pending, seen = [exc], set()
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)  # RayTaskError: the exception raised in the task
        if isinstance(exc, HardfocusError) and not isinstance(cause, BaseException):
            return HardfocusError(str(exc).split("\n", 1)[0])  # without the retry advice Ray Data appends to it
        pending += [cause if isinstance(cause, BaseException) else None, exc.__cause__, exc.__context__]
        pending += list(getattr(exc, "worker_failures", {}).values())  # Ray Train: the failures per worker
    return None


def _read_once(ds, cfg: TrainConfig, rows: int):
    """The dataset the workers iterate: read and checked once.

    A run within one epoch streams it (each row read once, memory bounded by Ray Data's buffers); a run of more
    epochs would read and check every part again each epoch, so the rows are read once into Ray's object store
    (which spills to disk) and iterated from there. They are also read up front when the workers would hold
    every CPU (Ray Data would wait forever for one to read with).
    """
    import ray

    samples = cfg.max_steps * cfg.accumulation_steps * cfg.batch_size * cfg.ray_workers
    if samples > rows:
        log.info("%d steps take %d samples of %d rows: reading the rows once, for every epoch", cfg.max_steps,
                 samples, rows)
        return ds.materialize()
    spare = ray.cluster_resources().get("CPU", 0) - cfg.ray_workers * cfg.cpus_per_worker
    if spare < 1:
        log.info("the training workers take all %g CPUs: reading the training data before they start", spare + cfg.ray_workers)
        return ds.materialize()
    return ds


def _worker_loop(config: dict) -> None:
    import json

    import ray.train
    import torch
    from ray.train.huggingface.transformers import prepare_trainer

    from training.build import build_trainer, training_arguments
    from training.trainer import check_finite_parameters
    cfg = TrainConfig.model_validate(config["cfg"])
    if not cfg.use_gpu:
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    shard = ray.train.get_dataset_shard("train")
    # use_cpu: accelerate treats a CPU process group as MULTI_CPU (DDP over gloo) only when told it is on CPU
    args = training_arguments(cfg, bf16=config["bf16"], progress=config["progress"], with_eval=False, use_cpu=not cfg.use_gpu)
    trainer = build_trainer(cfg, config["model_path"], args, ShardWindows(shard), extra_callbacks=[_ReportCheckpoints()],
                            resume=config["resume"])
    trainer = prepare_trainer(trainer)
    trainer.train(resume_from_checkpoint=config["resume"])
    check_finite_parameters(trainer.model, trainer.state.global_step)  # every rank holds the same weights (DDP)
    if ray.train.get_context().get_world_rank() == 0:
        trainer.save_model(cfg.output)
        state = {"global_step": trainer.state.global_step, "log_history": trainer.state.log_history}
        (Path(cfg.output) / ".ray_state.json").write_text(json.dumps(state))


class _ReportCheckpoints(TrainerCallback):
    """Report each checkpoint to Ray Train once it is complete, from rank 0 only.

    Ray's ``RayTrainReportCallback`` copies the newest checkpoint directory on every rank, and a rank
    other than 0 can copy it while rank 0 is still writing (a vanished temp file fails the copy). Here
    rank 0, whose ``on_save`` runs after it wrote the checkpoint and after :class:`training.checkpoints.MarkComplete`
    marked it, copies that step's checkpoint; the other ranks report the metrics without a checkpoint
    (``ray.train.report`` is called by every rank).
    """

    def on_save(self, args, state, control, **kwargs):
        import ray.train

        metrics = {}
        for record in state.log_history:
            metrics.update(record)
        source = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if ray.train.get_context().get_world_rank() != 0 or not (source / COMPLETE_MARKER).exists():
            ray.train.report(metrics=metrics, checkpoint=None)
            return
        with TemporaryDirectory() as tmp:
            shutil.copytree(source, Path(tmp, "checkpoint"))
            ray.train.report(metrics=metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


class ShardWindows:
    """A worker's Ray Data shard as a :class:`training.stream.WindowSource`: its rows in Ray Data's order, a window
    at a time (``iter_batches``, pyarrow); the rows per epoch are not known up front, so a resume skips by counting."""

    rows = None

    def __init__(self, shard):
        self.shard = shard

    def windows(self, epoch: int, window_rows: int, start_row: int):
        import pyarrow as pa

        for batch in self.shard.iter_batches(batch_size=window_rows, batch_format="pyarrow"):
            yield batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])


def _read_state(out: Path) -> dict:
    import json

    path = out / ".ray_state.json"
    if not path.exists():
        raise HardfocusError(f"Ray Train finished but rank 0 left no state in '{out}': is the output on shared storage?")
    state = json.loads(path.read_text())
    path.unlink()
    return state
