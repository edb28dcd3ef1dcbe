"""``hardfocus run``: score -> select -> train -> eval from one config, skipping what is up to date.

Every stage has a key: a hash of its own parameters and the key of the stage before it (scoring's
key also covers the model's and the input shards' fingerprints from its manifest). After a stage
finishes, its key goes into ``<workdir>/run_state.json``. A rerun skips a stage whose key is
unchanged and whose completion marker exists (``selected/summary.json``,
``model/train_manifest.json``, ``eval/eval.json``) and redoes the others: a changed temperature
reruns selection, training and evaluation, not scoring. Scoring is always called: it is resumable
and a no-op when complete, and it checks the inputs itself.

The workdir may be on an object store (``s3://...``): the state file and the markers are read and
written through fsspec, training publishes model/ there (:mod:`training.store`) and evaluation
downloads it back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import polars as pl
from fsspec.core import url_to_fs
from pydantic import BaseModel

from pipelines.evaluate import EVAL_FILE, evaluate
from pipelines.labels import band_labels
from pipelines.run_config import RunConfig, check_stage_range
from pipelines.train import run_train
from scoring import ScoreManifest, score
from scoring.foundation.errors import HardfocusError
from scoring.foundation.scores import SCORES_MANIFEST_FILE
from scoring.foundation.storage import fs_url
from selection import select
from selection.schema import SUMMARY_FILE
from selection.summary import SelectionSummary
from training.evaluate import ModelEval
from training.job import TRAIN_MANIFEST_FILE, TrainResult

log = logging.getLogger(__name__)


def format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"

STATE_FILE = "run_state.json"


@dataclass
class RunResult:
    workdir: str
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each stage run, skipped ones included
    selection: SelectionSummary | None = None
    training: TrainResult | None = None
    evaluation: list[ModelEval] = field(default_factory=list)
    band_labels: pl.DataFrame | None = None  # rows per selection band and [run] label_column value


@dataclass
class _Stage:
    """One row of the pipeline: its config, what its key covers, its completion marker and how it runs.

    ``run(replace)`` runs the stage; ``replace`` says the previous run of this stage had other settings.
    A stage without a marker (scoring) always runs: it is resumable, a no-op when complete, and says so.
    """

    name: str
    config: BaseModel | None  # None: nothing to do (evaluation without held-out data)
    key_params: dict
    marker: str | None  # a path or URL
    run: Callable[[bool], object]
    upstream: Callable[[], object] | None = None  # more key material, read once the stage is done (scoring's manifest)
    requires: tuple[str, str] | None = None  # a finished upstream output it needs, and the error if it is missing


def run_pipeline(cfg: RunConfig, start: str = "score", until: str = "eval", progress: bool = True) -> RunResult:
    selected = check_stage_range(start, until)
    state_path = posixpath.join(cfg.run.workdir, STATE_FILE)
    state = json.loads(_read(state_path)) if _exists(state_path) else {}
    result = RunResult(workdir=cfg.run.workdir)
    score_cfg, select_cfg, train_cfg, eval_cfg = cfg.score_config(), cfg.select_config(), cfg.train_config(), cfg.eval_config()
    summary, train_done = posixpath.join(select_cfg.output, SUMMARY_FILE), posixpath.join(train_cfg.output, TRAIN_MANIFEST_FILE)

    def run_eval(replace: bool) -> None:
        result.evaluation = evaluate(eval_cfg, progress=progress)

    def run_train_stage(replace: bool) -> None:
        # other settings: replace the old run; the same settings, unfinished: resume it
        result.training = run_train(train_cfg.model_copy(update={"overwrite": replace}), progress=progress)

    table = [
        _Stage("score", score_cfg, score_cfg.model_dump(exclude={"overwrite"}), None,
               lambda replace: score(score_cfg, progress=progress), upstream=lambda: _scores_identity(score_cfg.output)),
        _Stage("select", select_cfg, select_cfg.model_dump(exclude={"overwrite"}), summary,
               lambda replace: select(select_cfg.model_copy(update={"overwrite": True}), progress=progress)),
        _Stage("train", train_cfg, train_cfg.model_dump(exclude={"overwrite", "resume", "keep_checkpoints"}), train_done, run_train_stage,
               requires=(summary, f"'{select_cfg.output}' has no finished selection: run the select stage first")),
        _Stage("eval", eval_cfg, eval_cfg.model_dump() if eval_cfg else {}, eval_cfg and posixpath.join(eval_cfg.output, EVAL_FILE),
               run_eval, requires=(train_done, f"'{train_cfg.output}' holds no finished training run: run the train stage first")),
    ]
    upstream = None
    for stage in table:
        if stage.name in selected and stage.config is None:
            log.info("no held-out data in [run] heldout: evaluation skipped")
            break
        if stage.name in selected and stage.requires and not _exists(stage.requires[0]):
            raise HardfocusError(stage.requires[1])
        key_of = partial(_key, stage.key_params)
        if stage.name not in selected:
            upstream = key_of(stage.upstream() if stage.upstream else upstream)
            continue
        if stage.marker is not None and state.get(stage.name) == key_of(upstream) and _exists(stage.marker):
            log.info("== %s is up to date: skipped", stage.name)
            result.skipped.append(stage.name)
            upstream = key_of(upstream)
            continue
        log.info("== %s -> %s", stage.name, stage.config.output)
        started = time.perf_counter()
        outcome = stage.run(state.get(stage.name) not in (None, key_of(upstream)))
        result.seconds[stage.name] = time.perf_counter() - started
        log.info("== %s finished in %s", stage.name, format_seconds(result.seconds[stage.name]))
        key = key_of(stage.upstream() if stage.upstream else upstream)
        if stage.marker is None and outcome.units_scored == 0 and state.get(stage.name) == key:
            result.skipped.append(stage.name)  # scoring found everything done, as the state says
        else:
            state[stage.name] = key
            _write(state_path, json.dumps(state, indent=2))
            result.ran.append(stage.name)
        upstream = key
    if _exists(summary):
        result.selection = SelectionSummary.model_validate_json(_read(summary))
        if cfg.run.label_column:
            result.band_labels = band_labels(
                cfg.run.data, cfg.run.columns(), cfg.run.label_column,
                _parts(score_cfg.output), _parts(select_cfg.output),
                select_cfg.per_group,
            )
    if "eval" in result.skipped:
        result.evaluation = _load_evaluation(table[-1].marker)
    return result


def _key(params: dict, upstream) -> str:
    payload = json.dumps({"params": params, "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _scores_identity(output: str) -> dict:
    manifest_path = posixpath.join(output, SCORES_MANIFEST_FILE)
    if not _exists(manifest_path):
        raise HardfocusError(f"'{output}' holds no finished scores: run the score stage first")
    m = ScoreManifest.model_validate_json(_read(manifest_path))
    return {"model": m.model_fingerprint, "tokenizer": m.tokenizer_fingerprint, "shards": [s.model_dump() for s in m.shards]}


def _load_evaluation(eval_file: str) -> list[ModelEval]:
    out = []
    for m in json.loads(_read(eval_file))["models"]:
        rows = [{"group": g, **v} for g, v in m["groups"].items()]
        table = pl.DataFrame(rows).select("group", "docs", "tokens", "loss", "perplexity", "mean_loss")
        out.append(ModelEval(name=m["name"], model=m["model"], scores=m["scores"], table=table, not_ok=m["rows_not_ok"]))
    return out


# the workdir's files, locally or on an object store (s3fs caches listings: other processes write there)
def _exists(path: str) -> bool:
    fs, p = url_to_fs(path)
    fs.invalidate_cache(posixpath.dirname(p))
    return fs.exists(p)


def _read(path: str) -> str:
    fs, p = url_to_fs(path)
    return fs.cat_file(p).decode()


def _write(path: str, text: str) -> None:
    fs, p = url_to_fs(path)
    fs.makedirs(posixpath.dirname(p), exist_ok=True)
    fs.pipe_file(p, text.encode())


def _parts(directory: str) -> list[str]:
    fs, root = url_to_fs(directory)
    fs.invalidate_cache(root)
    return sorted(fs_url(fs, p) for p in fs.glob(posixpath.join(root, "part-*.parquet")))
