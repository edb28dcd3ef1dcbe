"""``hardfocus eval``: score the held-out shards with each model (the scoring stage, resumable), then
aggregate loss and perplexity per group (:mod:`training.evaluate`) and write ``eval.json``.

The output may be on an object store; a model published there by training (``s3://.../model``) is
downloaded once into the local cache (:func:`training.store.fetch_model`), refused if unfinished."""

from __future__ import annotations

import json
import logging
import posixpath

from fsspec.core import url_to_fs

from scoring import ScoreConfig, score
from scoring.foundation.storage import fs_url
from training.config import EvalConfig
from training.evaluate import ModelEval, group_perplexity
from training.store import fetch_model, is_url

log = logging.getLogger(__name__)

EVAL_FILE = "eval.json"


def evaluate(cfg: EvalConfig, progress: bool = True) -> list[ModelEval]:
    results = []
    for name, spec in cfg.named_models():
        scores_dir = posixpath.join(cfg.output, f"scores-{name}")
        log.info("held-out scoring with %s (%s)", name, spec)
        score(
            ScoreConfig(
                inputs=cfg.data, output=scores_dir, model=fetch_model(spec) if is_url(spec) else spec,
                group_column=cfg.group_column, **cfg.sample_format(),
                max_tokens=cfg.max_tokens, dtype=cfg.dtype, executor=cfg.executor, keep_input_ids=False,
                overwrite=True,  # a retrained model in the same directory must be rescored, not refused
            ),
            progress=progress,
        )
        fs, root = url_to_fs(scores_dir)
        fs.invalidate_cache(root)
        parts = sorted(fs_url(fs, p) for p in fs.glob(posixpath.join(root, "part-*.parquet")))
        table, not_ok = group_perplexity(parts)
        results.append(ModelEval(name=name, model=spec, scores=scores_dir, table=table, not_ok=not_ok))
    payload = {"data": cfg.data, "max_tokens": cfg.max_tokens, "dtype": cfg.dtype, "models": [r.to_json() for r in results]}
    fs, root = url_to_fs(cfg.output)
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(posixpath.join(root, EVAL_FILE), json.dumps(payload, indent=2).encode())
    return results
