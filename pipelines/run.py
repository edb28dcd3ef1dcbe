"""``hardfocus run``: score -> select -> train -> eval from one config, skipping what is up to date.

Every stage's output is a stage directory (:mod:`hardfocus.stagedir`) that records its own identity:
its parameters and the identity of its inputs (scoring: the model's and tokenizer's fingerprints; selection:
the scores' manifests; training: the selection's summary and the model; evaluation: the models' fingerprints
and the held-out shards). Each stage is called in turn with ``overwrite`` on, since the config is what the
workdir should hold: a stage whose output has the same identity and is complete does nothing and says so; an
unfinished one with the same identity resumes; one with another identity is replaced. So a changed
temperature reruns selection, and then training and evaluation, whose inputs changed with it, not scoring;
and a selection redone by hand with other parameters is noticed by training, whatever ran it.

The workdir may be on an object store (``s3://...``): training publishes model/ there (:mod:`training.store`)
and evaluation downloads it back.
"""

from __future__ import annotations

import logging
import posixpath
import time
from dataclasses import dataclass, field

import polars as pl
from fsspec.core import url_to_fs

from hardfocus.contracts.selected import SUMMARY_FILE
from hardfocus.durations import duration
from hardfocus.kinds import identify
from hardfocus.storage import read_record
from pipelines.evaluation import ModelEval, evaluate
from pipelines.labels import band_labels
from pipelines.run_config import RunConfig, check_stage_range
from scoring import score
from selection import select
from selection.summary import SelectionSummary
from training import train
from training.output import TrainResult

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    workdir: str
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each stage called, up-to-date ones included
    selection: SelectionSummary | None = None
    training: TrainResult | None = None
    evaluation: list[ModelEval] = field(default_factory=list)
    band_labels: pl.DataFrame | None = None  # rows per selection band and [run] label_column value


def run_pipeline(cfg: RunConfig, start: str = "score", until: str = "eval", progress: bool = True) -> RunResult:
    selected = check_stage_range(start, until)
    result = RunResult(workdir=cfg.run.workdir)
    score_cfg, select_cfg, train_cfg, eval_cfg = cfg.score_config(), cfg.select_config(), cfg.train_config(), cfg.eval_config()

    def run_score() -> bool:
        return score(score_cfg, progress=progress).skipped

    def run_select() -> bool:
        selection = select(select_cfg.model_copy(update={"overwrite": True}), progress=progress)
        result.selection = selection.summary
        return selection.skipped

    def run_train_stage() -> bool:
        result.training = train(train_cfg.model_copy(update={"overwrite": True}), progress=progress)
        return result.training.skipped

    def run_eval() -> bool:
        evaluation = evaluate(eval_cfg, progress=progress)
        result.evaluation = evaluation.models
        return evaluation.skipped

    stages = {"score": run_score, "select": run_select, "train": run_train_stage, "eval": run_eval}
    for name in selected:
        if name == "eval" and eval_cfg is None:
            log.info("no held-out data in [run] heldout: evaluation skipped")
            break
        log.info("== %s", name)
        started = time.perf_counter()
        skipped = stages[name]()
        result.seconds[name] = time.perf_counter() - started
        (result.skipped if skipped else result.ran).append(name)
        log.info("== %s %s in %s", name, "was up to date" if skipped else "finished", duration(result.seconds[name]))
    summary = posixpath.join(select_cfg.output, SUMMARY_FILE)
    if result.selection is None and identify(select_cfg.output).complete:
        fs, path = url_to_fs(summary)
        result.selection = read_record(fs, path, SelectionSummary, "selection summary")
    if result.selection is not None and cfg.run.label_column:
        result.band_labels = band_labels(
            cfg.run.data, cfg.run.columns(), cfg.run.label_column, select_cfg.output)
    return result
