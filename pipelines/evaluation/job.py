"""``hardfocus eval``: score the held-out shards with each model (the scoring stage, resumable), then
aggregate loss and perplexity per group (:mod:`pipelines.evaluation.tables`) and write ``eval.json``.

The output is a stage directory (:mod:`hardfocus.stagedir`): ``eval_job.json`` holds its identity
(each model's fingerprint, the held-out shards as listed, the settings), ``scores-<name>/`` each model's
held-out scores, ``eval.json`` is written last. A rerun with the same identity reads ``eval.json`` back; any
change rescores what changed (each ``scores-<name>/`` resumes or is replaced by its own identity).

The output may be on an object store; a model published there by training (``s3://.../model``) is
downloaded once into the local cache (:func:`training.store.fetch_model`), refused if unfinished."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from hardfocus.chat import load_chat_template, template_sha256
from hardfocus.errors import HardfocusError
from hardfocus.fingerprints import tokenizer_fingerprint
from hardfocus.kinds import EVAL, MODEL, identify
from hardfocus.models import resolve_model
from hardfocus.readers import find_shards
from hardfocus.stagedir import Opening, StageDir
from hardfocus.storage import redact
from hardfocus.tokenizers import load_tokenizer
from pipelines.evaluation.config import EvalConfig
from pipelines.evaluation.tables import ModelEval, group_perplexity, load_evaluation
from scoring import ScoreConfig, score
from training.store import fetch_model, is_url

log = logging.getLogger(__name__)

EVAL_FILE = EVAL.marker


@dataclass
class EvalResult:
    output: str
    models: list[ModelEval] = field(default_factory=list)
    skipped: bool = False  # eval.json was up to date: read back, nothing scored


def evaluate(cfg: EvalConfig, progress: bool = True) -> EvalResult:
    models = [(name, spec, _local_model(spec)) for name, spec in cfg.named_models()]
    out = StageDir(cfg.output, EVAL)
    template = load_chat_template(cfg.chat_template)
    resolved = [resolve_model(path) for _, _, path in models]  # aliases and GGUF files to their checkpoints
    tokenizers = [load_tokenizer(r.path) for r in resolved]
    identity = {  # the models in order (the first is the baseline), each by its weights, tokenizer and template
        "models": [[name, r.fingerprint, tokenizer_fingerprint(tok),
                    template_sha256(template, tok) if cfg.format != "text" else None]
                   for (name, _, _), r, tok in zip(models, resolved, tokenizers)],
        "data": [[s.rel, s.size, s.modified] for s in find_shards(cfg.data)],
        "settings": cfg.model_dump(exclude={"models", "data", "output", "executor", "chat_template"}
                                   | ({"long_documents", "window_context"} if cfg.long_documents == "truncate" else set())),
    }
    local_models = [spec for _, spec, _ in models if is_url(spec) or os.path.exists(spec)]  # paths, not hub ids
    with out.locked():
        named = {"models": [spec for _, spec, _ in models], "data": [", ".join(cfg.data)]}  # data: a shard each
        if out.open(identity, overwrite=True, inputs=[*cfg.data, *local_models], named=named) is Opening.COMPLETE:
            log.info("'%s' already holds this evaluation: nothing to do", redact(cfg.output))
            return EvalResult(cfg.output, load_evaluation(out.read_json(EVAL_FILE)), skipped=True)
        out.unmark()
        current = {f"scores-{name}" for name, _, _ in models}
        for stale in sorted(n for n in out.names() if n.startswith("scores-") and n not in current):
            out.fs.rm(out.join(stale), recursive=True)  # a model no longer evaluated; the others resume by identity
        results = []
        for name, spec, path in models:
            scores_dir = out.url_of(f"scores-{name}")
            log.info("held-out scoring with %s (%s)", name, redact(spec))
            score(
                ScoreConfig(
                    inputs=cfg.data, output=scores_dir, model=path, group_column=cfg.group_column, **cfg.sample_format(),
                    max_tokens=cfg.max_tokens, long_documents=cfg.long_documents, window_context=cfg.window_context,
                    dtype=cfg.dtype, executor=cfg.executor, keep_input_ids=False,
                    overwrite=True,  # a retrained model in the same directory must be rescored, not refused
                ),
                progress=progress,
            )
            table, not_ok = group_perplexity(scores_dir)
            results.append(ModelEval(name=name, model=spec, scores=scores_dir, table=table, not_ok=not_ok))
        payload = {"data": cfg.data, "max_tokens": cfg.max_tokens, "long_documents": cfg.long_documents,
                   "window_context": cfg.window_context, "dtype": cfg.dtype, "models": [r.to_json() for r in results]}
        out.mark(payload)
    return EvalResult(cfg.output, results)


def _local_model(spec: str) -> str:
    """A model spec as a local path: a published training run fetched from its store; a local training output
    must be finished (its model files are the final ones only then)."""
    if is_url(spec):
        return fetch_model(spec)
    found = identify(spec)
    if found.kind == "model" and not found.complete:
        raise HardfocusError(f"'{redact(spec)}' holds no finished training run (no {MODEL.marker}): train it first")
    return spec
