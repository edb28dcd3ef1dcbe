"""A training output on an object store (``s3://...``): train in a local staging directory, then publish.

``save_pretrained``, the Trainer's checkpoints and Ray Train's storage write local files, so a run
whose output is a URL trains into ``<cache>/train-staging/<hash of the URL>`` (a kill resumes there,
on the same machine) and then uploads the model and its records, each object in one PUT, with
``train_manifest.json`` last: on the store that object is the completion marker. A run replacing
an older one deletes the old marker first, so a killed upload is never read as a finished model.
:func:`fetch_model` brings a published model back into a local cache directory (for eval).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import posixpath
import shutil
from collections.abc import Callable
from pathlib import Path

from fsspec.core import url_to_fs

from scoring.foundation.cache import cache_dir
from scoring.foundation.errors import HardfocusError
from training.build import CHECKPOINTS, TRAIN_LOG
from training.config import TrainConfig
from training.job import TOKENIZED_DIR, TRAIN_JOB_FILE, TRAIN_MANIFEST_FILE, TrainResult, job_identity

log = logging.getLogger(__name__)

_LOCAL_ONLY = {CHECKPOINTS, "ray_results", TOKENIZED_DIR}  # resumable state and inputs: they stay in staging


def is_url(path: str) -> bool:
    return "://" in path


def _hash(url: str) -> str:
    return hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def local_output(output: str) -> str:
    """Where training writes: ``output`` itself when local, its staging directory when it is a URL."""
    return str(cache_dir() / "train-staging" / _hash(output)) if is_url(output) else output


def train_to_store(cfg: TrainConfig, model_path: str, train_locally: Callable[..., TrainResult], **kwargs) -> TrainResult:
    """Run ``train_locally`` into the staging directory of ``cfg.output`` and publish the finished run there."""
    fs, root = url_to_fs(cfg.output)
    fs.invalidate_cache(root)
    identity = job_identity(cfg, model_path)
    job, manifest = (posixpath.join(root, name) for name in (TRAIN_JOB_FILE, TRAIN_MANIFEST_FILE))
    if fs.exists(job):
        previous = json.loads(fs.cat_file(job))
        if previous != identity and not cfg.overwrite:
            raise HardfocusError(
                f"'{cfg.output}' holds a training run with different settings; pass --overwrite to replace it, "
                "or choose another --output"
            )
        if previous == identity and fs.exists(manifest) and not cfg.overwrite:
            m = json.loads(fs.cat_file(manifest))
            log.info("'%s' already holds this finished run: nothing to do", cfg.output)
            return TrainResult(output=cfg.output, steps=m["steps"], train_rows=m["train_rows"], final_loss=m["final_loss"],
                               resumed_from=None, log_file=posixpath.join(cfg.output, TRAIN_LOG), skipped=True)
    elif fs.exists(root) and fs.ls(root):
        raise HardfocusError(f"'{cfg.output}' exists and is not a hardfocus training output; choose another --output")
    staging = Path(local_output(cfg.output))
    staged_job = staging / TRAIN_JOB_FILE
    if staged_job.exists() and json.loads(staged_job.read_text()) != identity:
        log.info("staging directory %s holds another run: starting afresh", staging)
        shutil.rmtree(staging)
    result = train_locally(cfg.model_copy(update={"output": str(staging)}), model_path, **kwargs)
    publish(staging, cfg.output)
    return dataclasses.replace(result, output=cfg.output, log_file=posixpath.join(cfg.output, TRAIN_LOG))


def publish(staging: Path, url: str) -> None:
    """Upload a finished run: first delete the store's old marker, then every file, the marker last."""
    fs, root = url_to_fs(url)
    if fs.exists(posixpath.join(root, TRAIN_MANIFEST_FILE)):
        fs.rm_file(posixpath.join(root, TRAIN_MANIFEST_FILE))  # from here until the end, the old run reads as unfinished
    files = sorted(p for p in staging.rglob("*") if p.is_file() and p.relative_to(staging).parts[0] not in _LOCAL_ONLY)
    files.sort(key=lambda p: p.name == TRAIN_MANIFEST_FILE)
    if not files or files[-1].name != TRAIN_MANIFEST_FILE:
        raise HardfocusError(f"'{staging}' holds no finished training run to publish to '{url}'")
    for path in files:
        fs.put_file(str(path), posixpath.join(root, path.relative_to(staging).as_posix()))
    log.info("published %d files of %s to %s", len(files), staging, url)


def fetch_model(url: str) -> str:
    """A local copy of the model published at ``url`` (downloaded once per finished run); refuses an unfinished one."""
    fs, root = url_to_fs(url)
    fs.invalidate_cache(root)
    marker = posixpath.join(root, TRAIN_MANIFEST_FILE)
    if not fs.exists(marker):
        raise HardfocusError(f"'{url}' holds no finished training run (no {TRAIN_MANIFEST_FILE}): train it first")
    stamp = fs.cat_file(marker)
    local = cache_dir() / "models" / _hash(url)
    if (local / TRAIN_MANIFEST_FILE).exists() and (local / TRAIN_MANIFEST_FILE).read_bytes() == stamp:
        return str(local)
    partial = local.with_name(f".{local.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    for key in fs.find(root):
        target = partial / posixpath.relpath(key, root)
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(key, str(target))
    shutil.rmtree(local, ignore_errors=True)
    partial.rename(local)
    log.info("downloaded %s to %s", url, local)
    return str(local)
