"""The same training under Ray Train: ``TorchTrainer`` workers, each running a ``WeightedTrainer``.

The shards are read by Ray Data (``read_parquet``) and split across the workers, which take
token-id batches with ``iter_torch_batches`` and the same collator as a single-process run. The
Trainer runs under DDP (gloo on CPU, NCCL on GPU) as Ray Train sets it up; ``prepare_trainer``
makes it use the Ray Data iterator, ``RayTrainReportCallback`` reports each checkpoint to Ray.

The output directory must be on storage every worker sees (a local path on one machine, a shared
filesystem on a cluster): rank 0 writes the final checkpoint and the log there, as in-process
training does.
"""

from __future__ import annotations

import logging
import os
import posixpath
from pathlib import Path

from fsspec.core import url_to_fs
from ray.data.collate_fn import NumpyBatchCollateFn

from scoring.errors import HardfocusError
from scoring.output import SCORES_MANIFEST_FILE
from scoring.schema import LOSS_SPANS_TYPE, Status
from selection.schema import SUMMARY_FILE
from training.config import TrainConfig
from training.data import _has_no_marker_but_looks_selected

log = logging.getLogger(__name__)


def training_dataset(paths: list[str]):
    """One Ray dataset of ``input_ids`` and ``weight`` over selected/, scores/ (status ok) or token directories.

    When any part has ``loss_spans``, every row carries the column (null, i.e. plain text, for rows
    of parts without it); otherwise the dataset is as it was before conversations.
    """
    import pyarrow.parquet as pq
    import ray

    sources = []
    for path in paths:
        fs, root = url_to_fs(path)
        fs.invalidate_cache(root)
        parts = sorted(fs.glob(posixpath.join(root, "part-*.parquet")))
        if not parts:
            raise HardfocusError(f"'{path}' holds no part-*.parquet files")
        if (not fs.exists(posixpath.join(root, SUMMARY_FILE)) and not fs.exists(posixpath.join(root, SCORES_MANIFEST_FILE))
                and _has_no_marker_but_looks_selected(fs, parts[0])):
            raise HardfocusError(
                f"'{path}' has selected/ shards (or an unreadable part) but no {SUMMARY_FILE}: the selection did not "
                "finish; rerun `hardfocus select`"
            )
        with_spans = []
        for p in parts:
            with fs.open(p, "rb") as f:
                with_spans.append("loss_spans" in pq.read_schema(f).names)
        is_scores = fs.exists(posixpath.join(root, SCORES_MANIFEST_FILE))
        for spans in (True, False):  # a directory whose parts differ is read as two datasets
            urls = [fs.unstrip_protocol(p) for p, w in zip(parts, with_spans) if w == spans]
            if urls:
                sources.append((urls, is_scores, spans))
    any_spans = any(spans for _, _, spans in sources)
    datasets = []
    for urls, is_scores, spans in sources:
        columns = ["input_ids", "status"] if is_scores else ["input_ids", "weight"]
        ds = ray.data.read_parquet(urls, columns=columns + (["loss_spans"] if spans else []))
        if is_scores:
            ds = ds.filter(lambda row: row["status"] == Status.OK.value).drop_columns(["status"])
        if any_spans and not spans:
            ds = ds.map_batches(_add_null_spans, batch_format="pyarrow")
        datasets.append(ds)
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


def _add_null_spans(batch):
    import pyarrow as pa

    return batch.append_column(pa.field("loss_spans", LOSS_SPANS_TYPE), pa.nulls(batch.num_rows, LOSS_SPANS_TYPE))


def fit_on_ray(cfg: TrainConfig, model_path: str, bf16: bool, progress: bool, resume: str | None):
    """Run ``cfg.ray_workers`` workers; returns (steps, rank 0's log history)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(address=cfg.ray_address or os.environ.get("RAY_ADDRESS"), logging_level=logging.WARNING)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": cfg.model_dump(), "model_path": model_path, "bf16": bf16, "progress": progress, "resume": resume},
        scaling_config=ScalingConfig(
            num_workers=cfg.ray_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        run_config=RunConfig(name="hardfocus-train", storage_path=str(Path(cfg.output).absolute() / "ray_results")),
        datasets={"train": _with_read_capacity(training_dataset(cfg.data), cfg)},
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    state = _read_state(Path(cfg.output))
    return state["global_step"], state["log_history"]


def _with_read_capacity(ds, cfg: TrainConfig):
    """Read the shards up front when the workers would hold every CPU (Ray Data would wait forever)."""
    import ray

    spare = ray.cluster_resources().get("CPU", 0) - cfg.ray_workers * cfg.cpus_per_worker
    if spare < 1:
        log.info("the training workers take all %g CPUs: reading the training data before they start", spare + cfg.ray_workers)
        return ds.materialize()
    return ds


def _worker_loop(config: dict) -> None:
    import json

    import ray.train
    import torch
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer

    from training.build import build_trainer, training_arguments
    cfg = TrainConfig.model_validate(config["cfg"])
    if not cfg.use_gpu:
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    shard = ray.train.get_dataset_shard("train")
    # use_cpu: accelerate treats a CPU process group as MULTI_CPU (DDP over gloo) only when told it is on CPU
    args = training_arguments(cfg, bf16=config["bf16"], progress=config["progress"], with_eval=False, use_cpu=not cfg.use_gpu)
    trainer = build_trainer(cfg, config["model_path"], args, train_dataset=None, extra_callbacks=[RayTrainReportCallback()])
    trainer.train_dataset = shard.iter_torch_batches(batch_size=cfg.batch_size, collate_fn=_RayCollate(trainer.data_collator))
    trainer = prepare_trainer(trainer)
    trainer.train(resume_from_checkpoint=config["resume"])
    if ray.train.get_context().get_world_rank() == 0:
        trainer.save_model(cfg.output)
        state = {"global_step": trainer.state.global_step, "log_history": trainer.state.log_history}
        (Path(cfg.output) / ".ray_state.json").write_text(json.dumps(state))


class _RayCollate(NumpyBatchCollateFn):
    """Ray Data's columnar batches through the single-process collator."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, batch):
        return self.collator.from_columns(batch)


def _read_state(out: Path) -> dict:
    import json

    path = out / ".ray_state.json"
    if not path.exists():
        raise HardfocusError(f"Ray Train finished but rank 0 left no state in '{out}': is the output on shared storage?")
    state = json.loads(path.read_text())
    path.unlink()
    return state
