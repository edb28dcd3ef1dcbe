"""``hardfocus run``: score -> select -> train -> eval from one config, skipping what is up to date.

Every stage has a key: a hash of its own parameters and the key of the stage before it (scoring's
key also covers the model's and the input shards' fingerprints from its manifest). After a stage
finishes, its key goes into ``<workdir>/run_state.json``. A rerun skips a stage whose key is
unchanged and whose completion marker exists (``selected/summary.json``,
``model/train_manifest.json``, ``eval/eval.json``) and redoes the others: a changed temperature
reruns selection, training and evaluation, not scoring. Scoring is always called: it is resumable
and a no-op when complete, and it checks the inputs itself.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from pipelines.evaluate import EVAL_FILE, evaluate
from pipelines.labels import band_labels
from pipelines.run_config import STAGES, RunConfig
from pipelines.train import run_train
from scoring import ScoreManifest, score
from scoring.errors import HardfocusError
from scoring.output import SCORES_MANIFEST_FILE
from selection import select
from selection.schema import SUMMARY_FILE
from selection.summary import SelectionSummary
from training.evaluate import ModelEval
from training.job import TRAIN_MANIFEST_FILE, TrainResult

log = logging.getLogger(__name__)

STATE_FILE = "run_state.json"


@dataclass
class RunResult:
    workdir: str
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    selection: SelectionSummary | None = None
    training: TrainResult | None = None
    evaluation: list[ModelEval] = field(default_factory=list)
    band_labels: pl.DataFrame | None = None  # rows per selection band and [run] label_column value


def run_pipeline(cfg: RunConfig, start: str = "score", until: str = "eval", progress: bool = True) -> RunResult:
    stages = STAGES[STAGES.index(start) : STAGES.index(until) + 1]
    state_path = Path(cfg.run.workdir) / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    result = RunResult(workdir=cfg.run.workdir)

    def done(stage: str, key: str) -> None:
        state[stage] = key
        state_path.parent.mkdir(parents=True, exist_ok=True)
        state_path.write_text(json.dumps(state, indent=2))
        result.ran.append(stage)

    score_cfg = cfg.score_config()
    if "score" in stages:
        log.info("== score -> %s", score_cfg.output)
        scored = score(score_cfg, progress=progress)
    score_key = _key(score_cfg.model_dump(exclude={"overwrite"}), _scores_identity(score_cfg.output))
    if "score" in stages:
        if scored.units_scored == 0 and state.get("score") == score_key:
            result.skipped.append("score")
        else:
            done("score", score_key)

    select_cfg = cfg.select_config()
    select_key = _key(select_cfg.model_dump(exclude={"overwrite"}), score_key)
    if "select" in stages:
        if _up_to_date(state, "select", select_key, Path(select_cfg.output) / SUMMARY_FILE):
            result.skipped.append("select")
        else:
            log.info("== select -> %s", select_cfg.output)
            select(select_cfg.model_copy(update={"overwrite": True}), progress=progress)
            done("select", select_key)
    if Path(select_cfg.output, SUMMARY_FILE).exists():
        result.selection = SelectionSummary.model_validate_json(Path(select_cfg.output, SUMMARY_FILE).read_text())
        if cfg.run.label_column:
            result.band_labels = band_labels(
                cfg.run.data, cfg.run.columns(), cfg.run.label_column,
                sorted(glob.glob(f"{score_cfg.output}/part-*.parquet")), sorted(glob.glob(f"{select_cfg.output}/part-*.parquet")),
                select_cfg.per_group,
            )
    elif STAGES.index(until) >= STAGES.index("train"):
        raise HardfocusError(f"'{select_cfg.output}' has no finished selection: run the select stage first")

    train_cfg = cfg.train_config()
    train_key = _key(train_cfg.model_dump(exclude={"overwrite", "resume"}), select_key)
    if "train" in stages:
        if _up_to_date(state, "train", train_key, Path(train_cfg.output) / TRAIN_MANIFEST_FILE):
            result.skipped.append("train")
        else:
            # a different key means different settings: replace the old run; the same key, unfinished: resume it
            overwrite = state.get("train") not in (None, train_key)
            log.info("== train -> %s", train_cfg.output)
            result.training = run_train(train_cfg.model_copy(update={"overwrite": overwrite}), progress=progress)
            done("train", train_key)

    eval_cfg = cfg.eval_config()
    if "eval" in stages and eval_cfg is not None:
        eval_key = _key(eval_cfg.model_dump(), train_key)
        eval_file = Path(eval_cfg.output) / EVAL_FILE
        if not Path(train_cfg.output, TRAIN_MANIFEST_FILE).exists():
            raise HardfocusError(f"'{train_cfg.output}' holds no finished training run: run the train stage first")
        if _up_to_date(state, "eval", eval_key, eval_file):
            result.skipped.append("eval")
            result.evaluation = _load_evaluation(eval_file)
        else:
            log.info("== eval -> %s", eval_cfg.output)
            result.evaluation = evaluate(eval_cfg, progress=progress)
            done("eval", eval_key)
    elif "eval" in stages:
        log.info("no held-out data in [run] heldout: evaluation skipped")
    return result


def _key(params: dict, upstream) -> str:
    payload = json.dumps({"params": params, "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _scores_identity(output: str) -> dict:
    manifest_path = posixpath.join(output, SCORES_MANIFEST_FILE)
    if not Path(manifest_path).exists():
        raise HardfocusError(f"'{output}' holds no finished scores: run the score stage first")
    m = ScoreManifest.model_validate_json(Path(manifest_path).read_text())
    return {"model": m.model_fingerprint, "tokenizer": m.tokenizer_fingerprint, "shards": [s.model_dump() for s in m.shards]}


def _up_to_date(state: dict, stage: str, key: str, marker: Path) -> bool:
    if state.get(stage) == key and marker.exists():
        log.info("== %s is up to date: skipped", stage)
        return True
    return False


def _load_evaluation(eval_file: Path) -> list[ModelEval]:
    out = []
    for m in json.loads(eval_file.read_text())["models"]:
        rows = [{"group": g, **v} for g, v in m["groups"].items()]
        table = pl.DataFrame(rows).select("group", "docs", "tokens", "loss", "perplexity", "mean_loss")
        out.append(ModelEval(name=m["name"], model=m["model"], scores=m["scores"], table=table, not_ok=m["rows_not_ok"]))
    return out
