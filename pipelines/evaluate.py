"""``hardfocus eval``: score the held-out shards with each model (the scoring stage, resumable), then
aggregate loss and perplexity per group (:mod:`training.evaluate`) and write ``eval.json``."""

from __future__ import annotations

import json
import logging
import posixpath
from pathlib import Path

from scoring import ScoreConfig, score
from training.config import EvalConfig
from training.evaluate import ModelEval, group_perplexity

log = logging.getLogger(__name__)

EVAL_FILE = "eval.json"


def evaluate(cfg: EvalConfig, progress: bool = True) -> list[ModelEval]:
    results = []
    for name, spec in cfg.named_models():
        scores_dir = posixpath.join(cfg.output, f"scores-{name}")
        log.info("held-out scoring with %s (%s)", name, spec)
        score(
            ScoreConfig(
                inputs=cfg.data, output=scores_dir, model=spec, group_column=cfg.group_column, **cfg.sample_format(),
                max_tokens=cfg.max_tokens, dtype=cfg.dtype, executor=cfg.executor, keep_input_ids=False,
                overwrite=True,  # a retrained model in the same directory must be rescored, not refused
            ),
            progress=progress,
        )
        parts = sorted(str(p) for p in Path(scores_dir).glob("part-*.parquet"))
        table, not_ok = group_perplexity(parts)
        results.append(ModelEval(name=name, model=spec, scores=scores_dir, table=table, not_ok=not_ok))
    Path(cfg.output).mkdir(parents=True, exist_ok=True)
    payload = {"data": cfg.data, "max_tokens": cfg.max_tokens, "dtype": cfg.dtype, "models": [r.to_json() for r in results]}
    (Path(cfg.output) / EVAL_FILE).write_text(json.dumps(payload, indent=2))
    return results
